"""The ``.npz`` caches of per-image LFW arrays (detections, FaceNet embeddings, dlib descriptors).

One row per image, named by its path relative to the LFW folder (``names``), so that a later run on
any subset of the images reads them back; the file's name holds a hash of what made the arrays (the
model and its configuration), so another configuration never reads them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def cache_file(cache_dir: Path | None, stem: str, made_by: tuple, digits: int = 12) -> Path | None:
    """``cache_dir/<stem>-<hash of made_by>.npz`` (None without a cache folder)."""
    if cache_dir is None:
        return None
    key = hashlib.sha256(repr(made_by).encode()).hexdigest()[:digits]
    return Path(cache_dir) / f"{stem}-{key}.npz"


def read_rows(cache: Path | None, files: list[str], made_from: dict[str, np.ndarray] | None = None) -> dict | None:
    """The arrays stored in ``cache``, their rows those of ``files`` in that order (arrays of no rows,
    e.g. a count, as stored), when it holds every one of ``files`` and its ``made_from`` arrays match
    the given ones (``np.allclose``: e.g. the detections the descriptors were made from); None when
    there is no such cache."""
    if cache is None or not cache.exists():
        return None
    with np.load(cache, allow_pickle=False) as stored:
        row = {name: i for i, name in enumerate(stored["names"])}
        if not set(files) <= set(row):
            return None
        rows = [row[f] for f in files]
        arrays = {}
        for key in stored.files:
            if key != "names":
                value = stored[key]
                arrays[key] = value[rows] if value.ndim else value
    if any(not np.allclose(arrays[key], value) for key, value in (made_from or {}).items()):
        return None
    return arrays


def write_rows(cache: Path | None, files: list[str], **arrays) -> None:
    """Store ``arrays`` (one row per image of ``files``, or of no rows) in ``cache``, if there is one."""
    if cache is None:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, names=np.array(files), **arrays)
