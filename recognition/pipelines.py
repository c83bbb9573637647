"""The face pipeline the settings ask for, and what an upload must meet: the settings -> engine adapter.

It imports only django.conf and the engine, so the apps below recognition (people stores uploads,
training embeds its data sets) use the same pipeline and upload rules without importing the rest of
recognition.
"""

from __future__ import annotations

import numpy as np
from django.conf import settings

from .engine.images import ImageError, ImageLimits, decode_image
from .engine.pipeline import AnalysedFace, FacePipeline, PipelineConfig, shared_pipeline
from .engine.quality import QualityRules


def pipeline_config() -> PipelineConfig:
    """The pipeline the settings ask for (read on every call: a changed setting takes effect)."""
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
    )


def pipeline() -> FacePipeline:
    """The process's pipeline for the current settings (models are loaded once and shared)."""
    return shared_pipeline(pipeline_config())


def quality_rules() -> QualityRules:
    """What an enrollment photo must meet (size, sharpness), from the settings."""
    return QualityRules(min_face_px=settings.FACE_ENROLL_MIN_FACE_PX, min_sharpness=settings.FACE_ENROLL_MIN_SHARPNESS)


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
