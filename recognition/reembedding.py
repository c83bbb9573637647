"""Re-embedding enrolled faces for the embedder served now (FACE_EMBEDDER), from their stored photos.

A face embedded by another embedder (FaceNet before the fused one was served, or the reverse) is not
matched: its embedding is not comparable, nor, fused, of the same length. ``reembed_faces`` embeds
it again from the stored photo at the box and landmarks recorded when it was enrolled (the same
face; no detection needed), in batches, each batch committed with its gallery change rows: a crash
loses at most one batch, and a re-run picks up the faces still lacking the served embedder.

The stored crop is FaceNet's 160x160 box: too tight for dlib's chip (padding 0.25 around the
landmarks), so a face whose photo is gone (photo retention) cannot be re-embedded for the fused
embedder; it is reported, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from django.db import transaction

from .engine.detection import LANDMARK_NAMES, DetectedFace
from .engine.images import ImageError, decode_image
from .pipelines import pipeline

logger = logging.getLogger(__name__)


@dataclass
class ReembedReport:
    embedder: str
    lacking_before: int = 0
    reembedded: int = 0
    photo_gone: list[int] = field(default_factory=list)  # face ids: no stored photo (retention) or unreadable
    no_geometry: list[int] = field(default_factory=list)  # face ids without a recorded box and landmarks
    lacking_after: int = 0
    seconds: float = 0.0


def stored_face(box, landmarks) -> DetectedFace | None:
    """The detection recorded at enrollment (``FaceImage.box`` / ``landmarks``), or None."""
    if not box or not landmarks or any(name not in landmarks for name in LANDMARK_NAMES):
        return None
    return DetectedFace(
        box=tuple(float(v) for v in box), landmarks=np.array([landmarks[n] for n in LANDMARK_NAMES], np.float32), score=1.0
    )


def _read_photo(face) -> np.ndarray | None:
    if not face.image:
        return None
    try:
        with face.image.open("rb") as fh:
            return decode_image(fh.read())
    except (OSError, ValueError, ImageError) as err:
        logger.warning("face %s: its photo %s cannot be read: %s", face.pk, face.image.name, err)
        return None


def reembed_faces(batch: int = 16, limit: int | None = None, progress: Callable[[int], None] | None = None) -> ReembedReport:
    """Re-embed every enrolled face that lacks the served embedder (at most ``limit``); see the module."""
    import time

    from people.models import FaceImage, GalleryChange

    started = time.perf_counter()
    pipe = pipeline()
    report = ReembedReport(embedder=pipe.embedder_name)
    todo = FaceImage.objects.lacking_served_embedder().order_by("id")
    report.lacking_before = todo.count()
    skipped: set[int] = set()
    while limit is None or report.reembedded < limit:
        size = batch if limit is None else min(batch, limit - report.reembedded)
        chunk = list(todo.exclude(pk__in=skipped)[:size])
        if not chunk:
            break
        images, faces, rows = [], [], []
        for face in chunk:
            detected = stored_face(face.box, face.landmarks)
            if detected is None:
                report.no_geometry.append(face.pk)
                skipped.add(face.pk)
                continue
            rgb = _read_photo(face)
            if rgb is None:
                report.photo_gone.append(face.pk)
                skipped.add(face.pk)
                continue
            images.append(rgb)
            faces.append(detected)
            rows.append(face)
        if not rows:
            continue
        _, embeddings = pipe.embed_faces(images, faces, flip=False)  # gallery embeddings are made without flip
        with transaction.atomic():
            for face, embedding in zip(rows, embeddings):
                face.set_vector(embedding)
                face.embedder = pipe.embedder_name
            FaceImage.objects.bulk_update(rows, ["embedding", "embedder"])
            GalleryChange.objects.record(GalleryChange.Kind.FACE, [f.person_id for f in rows])
        report.reembedded += len(rows)
        if progress:
            progress(len(rows))
    report.lacking_after = FaceImage.objects.lacking_served_embedder().count()
    report.seconds = round(time.perf_counter() - started, 2)
    return report
