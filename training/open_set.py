"""The open-set calibration in force: impostor score tails (LFW strangers, committed; the site's own
people, recorded by each training run) -> the cosine threshold for a gallery of N faces.

The arithmetic is in ``recognition.engine.open_set``; this module knows where the tails are kept.
``recognition.services`` serves with it, the admin shows it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from django.conf import settings

from recognition.engine.open_set import ImpostorTail, OpenSet, calibrate

log = logging.getLogger(__name__)
MIRRORED_SUFFIX = "-mirrored"  # recognition.engine.pipeline's name of FaceNet of mirrored crops


class _LfwTail:
    """The committed tail of LFW strangers (OPEN_SET_LFW_TAIL, or _FUSED for the fused embedder), read once per process per file
    version; None when the file is missing or was made by another embedder than ``embedder``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._data = None

    def get(self, embedder: str, kind: str | None = None) -> ImpostorTail | None:
        path = lfw_tail_path(kind)
        try:
            key = (str(path), path.stat().st_mtime_ns) if path else None
        except OSError:
            key = None
        if key != self._key:
            with self._lock:
                data = None
                if key is not None:
                    try:
                        data = json.loads(path.read_text())
                        data["parsed"] = ImpostorTail.from_dict(data["tail"])
                    except (OSError, ValueError, KeyError, TypeError) as err:
                        log.error("The LFW impostor tail %s is unreadable, not used: %s", path, err)
                        data = None
                self._data, self._key = data, key
        if self._data is None:
            return None
        if self._data.get("embedder") != embedder:
            return None  # another embedder's scores say nothing about this one's
        return self._data["parsed"]


lfw_tail = _LfwTail()


def lfw_tail_path(kind: str | None = None) -> Path | None:
    """The LFW impostor tail of embedder ``kind`` (default: the served one; None: not configured)."""
    from recognition.pipelines import served_kind

    kind = kind or served_kind()
    name = settings.OPEN_SET_LFW_TAIL_FUSED if kind == "facenet+dlib" else settings.OPEN_SET_LFW_TAIL
    return Path(name) if name else None


def floor_threshold(version, kind: str | None = None) -> float:
    """The per-pair cosine threshold chosen before the gallery's size is known: ``version``'s
    calibrated one, else FACE_MATCH_THRESHOLD (``version`` may be None). The per-search threshold
    never goes below it."""
    from recognition.pipelines import match_threshold_floor, pipeline_config

    embedder = pipeline_config(kind).embedder_name
    if version is not None and version.threshold is not None and version.embedder in ("", embedder):
        return float(version.threshold)
    return match_threshold_floor(kind)


def served_embedder() -> str:
    from recognition.pipelines import pipeline_config

    return pipeline_config().embedder_name


def impostor_tails(version, embedder: str | None = None, kind: str | None = None) -> list[ImpostorTail]:
    """The per-pair impostor tails for ``embedder`` (default: the served one; ``kind`` its
    FACE_EMBEDDER value): LFW strangers and, when ``version`` recorded them with this embedder, the
    site's own people."""
    embedder = embedder or served_embedder()
    tails = []
    lfw_embedder = embedder
    if embedder.endswith(MIRRORED_SUFFIX):
        # FaceNet of mirrored crops is calibrated on FaceNet's LFW tail: mirroring both faces of every
        # pair leaves LFW's impostor scores distributed as they were (LFW has no preferred side)
        lfw_embedder = embedder.removesuffix(MIRRORED_SUFFIX)
    lfw = lfw_tail.get(lfw_embedder, kind)
    if lfw is not None:
        tails.append(lfw)
    site = (version.open_set or {}).get("site_tail") if version is not None else None
    if site and version.embedder in ("", embedder):
        tails.append(ImpostorTail.from_dict(site))
    return tails


def calibration(version, gallery_size: int, embedder: str | None = None, kind: str | None = None) -> OpenSet:
    """The cosine threshold for a gallery of ``gallery_size`` faces: a stranger's best score reaches
    it in at most OPEN_SET_FAR_PER_SEARCH of searches, never below ``floor_threshold(version)``.
    ``embedder``/``kind``: another embedder than the served one (an embedder switch's evaluation)."""
    return calibrate(
        impostor_tails(version, embedder, kind), gallery_size, settings.OPEN_SET_FAR_PER_SEARCH, floor_threshold(version, kind)
    )
