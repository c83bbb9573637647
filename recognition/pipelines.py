"""The face pipeline the settings ask for, and what an upload must meet: the settings -> engine adapter.

It imports only django.conf and the engine, so the apps below recognition (people stores uploads,
training embeds its data sets) use the same pipeline and upload rules without importing the rest of
recognition.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .engine.fused import FUSED_EMBEDDER
from .engine.images import ImageError, ImageLimits, decode_image
from .engine.pipeline import AnalysedFace, FacePipeline, PipelineConfig, shared_pipeline
from .engine.quality import QualityRules
from .engine.selection import CentralRule


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
                self._data, self._key = json.loads(path.read_text()), key
        return self._data


fusion_calibration = _FusionCalibration()


def pipeline_config() -> PipelineConfig:
    """The pipeline the settings ask for (read on every call: a changed setting takes effect)."""
    fused = settings.FACE_EMBEDDER == FUSED_EMBEDDER
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
        embedder=settings.FACE_EMBEDDER,
        fusion_weight=round(float(fusion_calibration.get()["cosine_weight"]), 4) if fused else None,
    )


def pipeline() -> FacePipeline:
    """The process's pipeline for the current settings (models are loaded once and shared)."""
    return shared_pipeline(pipeline_config())


def pipeline_for(config: PipelineConfig) -> FacePipeline:
    """The process's pipeline for another config (an LFW evaluation of FaceNet alone, a re-embedding)."""
    return shared_pipeline(config)


def served_embedder() -> str:
    """The name of the embedder the settings serve (``FaceImage.embedder`` of matchable faces)."""
    return pipeline_config().embedder_name


# ---- thresholds, per embedder ----------------------------------------------------------------------
# FaceNet's are settings (FACE_MATCH_THRESHOLD, FACE_VERIFY_THRESHOLD, FACE_MISLABEL_MARGIN). The fused
# inner product is another scale (v cos_facenet + (1 - v) cos_dlib, dlib's cosines spread less), so
# its thresholds come from the fusion calibration (fit on LFW's training folds; see fit_fusion and
# BENCHMARKS.md); FACE_FUSED_* settings override them.


def _fused_value(setting: str, key: str) -> float:
    override = getattr(settings, setting, None)
    return float(override) if override is not None else float(fusion_calibration.get()["thresholds"][key])


def match_threshold_floor() -> float:
    """The per-pair cosine threshold of nearest-neighbour matching for the served embedder (the
    per-search calibration never goes below it)."""
    if settings.FACE_EMBEDDER == FUSED_EMBEDDER:
        return _fused_value("FACE_FUSED_MATCH_THRESHOLD", "match")
    return float(settings.FACE_MATCH_THRESHOLD)


def verify_threshold() -> float:
    if settings.FACE_EMBEDDER == FUSED_EMBEDDER:
        return _fused_value("FACE_FUSED_VERIFY_THRESHOLD", "verify")
    return float(settings.FACE_VERIFY_THRESHOLD)


def mislabel_margin() -> float:
    if settings.FACE_EMBEDDER == FUSED_EMBEDDER:
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
