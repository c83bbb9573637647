"""Embedding the LFW images with a FacePipeline (the protocol itself is in lfw.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .alignment import align_face
from .detection import DetectedFace
from .images import decode_image
from .lfw import Pair
from .pipeline import FacePipeline

# Where the face sits in a 250x250 deep-funneled LFW image, for the few the detector misses
# (the standard fallback of LFW evaluations: the images are centred on the face).
_LFW_CENTRE_FACE = DetectedFace(
    box=(78.0, 70.0, 94.0, 118.0),
    landmarks=np.array([[105, 115], [145, 115], [125, 138], [108, 160], [142, 160]], np.float32),
    score=0.0,
)


def pick_central_face(faces: list[DetectedFace], width: int, height: int) -> DetectedFace | None:
    """The face nearest the image centre (LFW's labelled person is the centred one)."""
    if not faces:
        return None
    cx, cy = width / 2.0, height / 2.0
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2 - cx) ** 2 + (f.box[1] + f.box[3] / 2 - cy) ** 2)


def lfw_face(pipeline: FacePipeline, lfw_dir: Path, name: str) -> tuple[np.ndarray, DetectedFace, bool]:
    """An LFW image (RGB), its labelled face (the detection nearest the centre) and whether the
    detector missed it (then the standard centre box stands in)."""
    rgb = decode_image((Path(lfw_dir) / name).read_bytes())
    face = pick_central_face(pipeline.detect(rgb), rgb.shape[1], rgb.shape[0])
    return rgb, face or _LFW_CENTRE_FACE, face is None


def embed_lfw_images(
    pipeline: FacePipeline,
    lfw_dir: Path,
    pairs: list[Pair],
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    batch: int = 64,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Embed every image the pairs name, as it is and mirrored.

    Returns ({relative path: (128,) embedding}, {relative path: (128,) embedding of the mirror
    image}, number of detector misses); ``combine_flipped`` of the two is the flip-TTA embedding.
    Embeddings are cached per pipeline configuration, so a re-run costs seconds.
    """
    files = sorted({p.left for p in pairs} | {p.right for p in pairs})
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256(repr((pipeline.embedder_name, pipeline.detector.name, pipeline.config)).encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"lfw-embeddings-{key}.npz"
        if cache.exists():
            stored = np.load(cache, allow_pickle=False)
            names, misses = list(stored["names"]), int(stored["misses"])
            if set(files) <= set(names) and "mirrored" in stored:
                plain, mirrored = dict(zip(names, stored["vectors"])), dict(zip(names, stored["mirrored"]))
                if progress:
                    progress(len(files))
                return {f: plain[f] for f in files}, {f: mirrored[f] for f in files}, misses

    embeddings: dict[str, np.ndarray] = {}
    mirrored: dict[str, np.ndarray] = {}
    misses = 0
    pending_names, pending_crops = [], []

    def flush():
        if pending_crops:
            crops = np.stack(pending_crops)
            embeddings.update(zip(pending_names, pipeline.embedder.embed(crops, flip=False)))
            mirrored.update(zip(pending_names, pipeline.embedder.embed(crops[:, :, ::-1], flip=False)))
            pending_names.clear()
            pending_crops.clear()

    cfg = pipeline.config
    for name in files:
        rgb, face, missed = lfw_face(pipeline, lfw_dir, name)
        misses += missed
        pending_names.append(name)
        pending_crops.append(align_face(rgb, face, method=cfg.align_method, margin=cfg.align_margin))
        if len(pending_crops) >= batch:
            flush()
        if progress:
            progress(1)
    flush()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        names = list(embeddings)
        np.savez(
            cache,
            names=np.array(names),
            vectors=np.stack([embeddings[n] for n in names]),
            mirrored=np.stack([mirrored[n] for n in names]),
            misses=misses,
        )
    return embeddings, mirrored, misses
