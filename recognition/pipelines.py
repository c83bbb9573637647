"""The face pipeline the settings ask for, and what an upload must meet: the settings -> engine adapter.

It imports only django.conf and the engine, so the apps below recognition (people stores uploads,
training embeds its data sets) use the same pipeline and upload rules without importing the rest of
recognition.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .engine.fused import FUSED_EMBEDDER, MIRRORED_EMBEDDER
from .engine.images import ImageError, ImageLimits, decode_image
from .engine.pipeline import AnalysedFace, FacePipeline, PipelineConfig, shared_pipeline
from .engine.quality import QualityRules
from .engine.selection import CentralRule

logger = logging.getLogger(__name__)


class _FusionCalibration:
    """FACE_FUSION_CALIBRATION (written by ``manage.py fit_fusion``), read once per file version."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._data: dict | None = None

    def get(self) -> dict:
        path = Path(settings.FACE_FUSION_CALIBRATION)
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError as err:
            raise ImproperlyConfigured(
                f"FACE_EMBEDDER={FUSED_EMBEDDER} needs the fusion calibration {path} (manage.py fit_fusion): {err}"
            ) from err
        if key != self._key:
            with self._lock:
                try:
                    data = json.loads(path.read_text())
                    float(data["cosine_weight"])
                except (OSError, ValueError, KeyError, TypeError) as err:
                    raise ImproperlyConfigured(
                        f"The fusion calibration {path} is unreadable (manage.py fit_fusion writes it): {type(err).__name__}: {err}"
                    ) from err
                self._data, self._key = data, key
        return self._data


fusion_calibration = _FusionCalibration()


class _ServedKind:
    """The embedder served now (the FACE_EMBEDDER value of the active ``EmbedderSwitch`` row), read
    once per process and again when the gallery's change log says another one is served (a switch
    or a rollback writes an EMBEDDER change in its transaction; recognition.gallery applies it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kind: str | None = None

    def get(self) -> str:
        kind = self._kind
        if kind is None:
            kind = self.refresh()
        return kind

    def refresh(self) -> str:
        """Read the active row now (the setting when there is none: a new site, or no database yet)."""
        from django.core.exceptions import SynchronousOnlyOperation
        from django.db import DatabaseError

        from .models import EmbedderSwitch

        try:
            active = EmbedderSwitch.objects.active()
        except (
            DatabaseError,
            RuntimeError,
            SynchronousOnlyOperation,
        ) as err:  # not migrated yet, or an async context: not cached
            logger.debug("the active embedder could not be read (%s); serving FACE_EMBEDDER", err)
            return settings.FACE_EMBEDDER
        kind = active.embedder if active is not None else settings.FACE_EMBEDDER
        with self._lock:
            self._kind = kind
        return kind

    def forget(self) -> None:
        with self._lock:
            self._kind = None


_served_kind = _ServedKind()


def served_kind() -> str:
    """The embedder served now: ``facenet``, ``facenet+dlib``, ... (see ``_ServedKind``)."""
    return _served_kind.get()


def refresh_served_kind() -> str:
    return _served_kind.refresh()


def forget_served_kind() -> None:
    _served_kind.forget()


def pipeline_config(kind: str | None = None) -> PipelineConfig:
    """The pipeline for embedder ``kind`` (default: the one served now) with the settings' other
    choices (read on every call: a changed setting takes effect)."""
    kind = kind or served_kind()
    fused = kind == FUSED_EMBEDDER
    return PipelineConfig(
        weights_path=settings.FACE_WEIGHTS_PATH,
        detector=settings.FACE_DETECTOR,
        detect_max_side=settings.FACE_DETECT_MAX_SIDE,
        align_method=settings.FACE_ALIGN_METHOD,
        align_margin=settings.FACE_ALIGN_MARGIN,
        flip=settings.FACE_FLIP_TTA,
        min_detection_score=settings.FACE_MIN_DETECTION_SCORE,
        embed_runtime=settings.FACE_EMBED_RUNTIME,
        embed_cache_dir=settings.TRAINING_CACHE_DIR,
        embedder=kind,
        fusion_weight=round(float(fusion_calibration.get()["cosine_weight"]), 4) if fused else None,
        dlib_runtime=settings.FACE_DLIB_RUNTIME,
    )


def pipeline(kind: str | None = None) -> FacePipeline:
    """The process's pipeline for embedder ``kind`` (default: the one served now); models are
    loaded once and shared."""
    return shared_pipeline(pipeline_config(kind))


def pipeline_for(config: PipelineConfig) -> FacePipeline:
    """The process's pipeline for another config (an LFW evaluation of FaceNet alone, a re-embedding)."""
    return shared_pipeline(config)


def check_embedder(kind: str) -> str:
    """The name of embedder ``kind`` once it is known to be servable here: for the fused embedder,
    a readable fusion calibration with its cosine weight and its thresholds (or the FACE_FUSED_*
    overrides). ImproperlyConfigured, saying what is missing, otherwise: a switch to it would only
    fail after re-embedding every face, or serve an embedder that cannot score."""
    try:
        name = pipeline_config(kind).embedder_name
    except ValueError as err:  # a cosine weight the pipeline refuses
        raise ImproperlyConfigured(
            f"{kind} cannot be served with FACE_FUSION_CALIBRATION {settings.FACE_FUSION_CALIBRATION}: {err}"
        ) from err
    try:
        match_threshold_floor(kind), verify_threshold(kind), mislabel_margin(kind)
    except (KeyError, TypeError, ValueError) as err:
        raise ImproperlyConfigured(
            f"The fusion calibration {settings.FACE_FUSION_CALIBRATION} has no thresholds for {kind} "
            f"(manage.py fit_fusion --thresholds): {type(err).__name__}: {err}"
        ) from err
    return name


def served_embedder() -> str:
    """The name of the embedder served now (``FaceImage.embedder`` of matchable faces)."""
    return pipeline_config().embedder_name


# ---- thresholds, per embedder ----------------------------------------------------------------------
# FaceNet's are settings (FACE_MATCH_THRESHOLD, FACE_VERIFY_THRESHOLD, FACE_MISLABEL_MARGIN). The fused
# inner product is another scale (v cos_facenet + (1 - v) cos_dlib, dlib's cosines spread less), so
# its thresholds come from the fusion calibration (fit on LFW's training folds; see fit_fusion and
# BENCHMARKS.md); FACE_FUSED_* settings override them. Each takes the embedder (default: served).


def _fused_value(setting: str, key: str) -> float:
    override = getattr(settings, setting, None)
    return float(override) if override is not None else float(fusion_calibration.get()["thresholds"][key])


def match_threshold_floor(kind: str | None = None) -> float:
    """The per-pair cosine threshold of nearest-neighbour matching for embedder ``kind`` (default:
    the served one); the per-search calibration never goes below it."""
    kind = kind or served_kind()
    if kind == FUSED_EMBEDDER:
        return _fused_value("FACE_FUSED_MATCH_THRESHOLD", "match")
    if kind == MIRRORED_EMBEDDER and settings.FACE_MIRRORED_MATCH_THRESHOLD is not None:
        return float(settings.FACE_MIRRORED_MATCH_THRESHOLD)
    return float(settings.FACE_MATCH_THRESHOLD)


def verify_threshold(kind: str | None = None) -> float:
    if (kind or served_kind()) == FUSED_EMBEDDER:
        return _fused_value("FACE_FUSED_VERIFY_THRESHOLD", "verify")
    return float(settings.FACE_VERIFY_THRESHOLD)


def mislabel_margin(kind: str | None = None) -> float:
    if (kind or served_kind()) == FUSED_EMBEDDER:
        return _fused_value("FACE_FUSED_MISLABEL_MARGIN", "mislabel_margin")
    return float(settings.FACE_MISLABEL_MARGIN)


def quality_rules() -> QualityRules:
    """What an enrollment photo must meet (size, sharpness), from the settings."""
    return QualityRules(min_face_px=settings.FACE_ENROLL_MIN_FACE_PX, min_sharpness=settings.FACE_ENROLL_MIN_SHARPNESS)


def central_rule() -> CentralRule | None:
    """How a portrait's central subject is taken from a photo of several faces; None when the
    setting FACE_ENROLL_CENTRAL_SUBJECT is off (such photos are rejected as several_faces)."""
    return CentralRule() if settings.FACE_ENROLL_CENTRAL_SUBJECT else None


def image_limits() -> ImageLimits:
    return ImageLimits(max_bytes=settings.FACE_UPLOAD_MAX_BYTES, max_pixels=settings.FACE_UPLOAD_MAX_PIXELS)


def read_upload(upload) -> np.ndarray:
    """A Django UploadedFile (or bytes) -> (H, W, 3) uint8 RGB; ImageError if unusable."""
    limits = image_limits()
    if isinstance(upload, (bytes, bytearray)):
        data = bytes(upload)
    else:
        if upload.size is not None and upload.size > limits.max_bytes:
            raise ImageError("file_too_large", f"The file is {upload.size:,} bytes; the limit is {limits.max_bytes:,} bytes.")
        upload.seek(0)
        data = upload.read(limits.max_bytes + 1)
    return decode_image(data, limits)


def main_face(rgb: np.ndarray, flip: bool | None = None) -> tuple[AnalysedFace | None, int]:
    """The largest face of an image and how many faces were found (``flip``: see FacePipeline.analyse)."""
    pipe = pipeline()
    faces = pipe.detect(rgb)
    if not faces:
        return None, 0
    return pipe.analyse(rgb, faces=faces[:1], flip=flip)[0], len(faces)
