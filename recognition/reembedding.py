"""Embedding enrolled faces again, with any embedder, from what is stored of them.

A face is embedded again at the box and landmarks recorded when it was enrolled (the same face; no
detection needed), from its photo, or once the photo is gone (retention) from its stored region
(``FaceImage.region``: the face with a wide margin, kept at enrollment, wide enough for every
embedder's alignment). A face with neither (enrolled before regions were kept, photo deleted) or
without a recorded box and landmarks is reported, never guessed.

Two users: the embedder switch (recognition/embedder_switch.py) embeds every enrolled face with
the target embedder into ``FaceEmbedding`` rows, and ``reembed_faces`` (``manage.py reembed_faces``)
brings faces lacking the served embedder up to date: from a ``FaceEmbedding`` row the served
embedder already made (a face enrolled during a switch, or before a rollback), else by embedding.
Each batch is committed on its own (a crash loses at most one batch), and embeddings are written
only for faces that still exist (locked in the writing transaction): a face deleted meanwhile is
never brought back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from django.db import transaction

from .engine.alignment import face_in_region
from .engine.detection import LANDMARK_NAMES, DetectedFace
from .engine.images import ImageError, decode_image
from .engine.pipeline import FacePipeline
from .pipelines import pipeline_config, pipeline_for

logger = logging.getLogger(__name__)


@dataclass
class ReembedReport:
    embedder: str
    lacking_before: int = 0
    reembedded: int = 0
    copied: int = 0  # from an existing FaceEmbedding row of the served embedder
    from_region: int = 0  # embedded from the stored region (no photo)
    photo_gone: list[int] = field(default_factory=list)  # face ids: neither photo nor region (or unreadable)
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


def _read(field_file, face_id: int) -> np.ndarray | None:
    if not field_file:
        return None
    try:
        with field_file.open("rb") as fh:
            return decode_image(fh.read())
    except (OSError, ValueError, ImageError) as err:
        logger.warning("face %s: %s cannot be read: %s", face_id, field_file.name, err)
        return None


def face_source(face) -> tuple[np.ndarray, DetectedFace, str] | str:
    """(image, the face in it, "photo" | "region") to embed ``face`` from, or why there is none:
    "no_geometry" or "photo_gone"."""
    detected = stored_face(face.box, face.landmarks)
    if detected is None:
        return "no_geometry"
    rgb = _read(face.image, face.pk)
    if rgb is not None:
        return rgb, detected, "photo"
    if face.region and face.region_box:
        region = _read(face.region, face.pk)
        if region is not None:
            return region, face_in_region(detected, face.region_box), "region"
    return "photo_gone"


@dataclass
class Embedded:
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # face id -> (D,) float32
    from_region: int = 0
    photo_gone: list[int] = field(default_factory=list)
    no_geometry: list[int] = field(default_factory=list)


def embed_stored(faces, pipe: FacePipeline) -> Embedded:
    """Embed these FaceImage rows with ``pipe``'s embedder (one batch per network, no flip: gallery
    embeddings are made without it)."""
    result = Embedded()
    images, detections, ids = [], [], []
    for face in faces:
        source = face_source(face)
        if source == "no_geometry":
            result.no_geometry.append(face.pk)
        elif source == "photo_gone":
            result.photo_gone.append(face.pk)
        else:
            rgb, detected, kind = source
            images.append(rgb)
            detections.append(detected)
            ids.append(face.pk)
            result.from_region += kind == "region"
    if ids:
        _, vectors = pipe.embed_faces(images, detections, flip=False)
        result.vectors = dict(zip(ids, vectors))
    return result


def store_embeddings(embedder: str, vectors: dict[int, np.ndarray], served: bool = False) -> list[int]:
    """Write ``embedder``'s templates of these faces as FaceEmbedding rows (and, ``served``, on the
    faces' rows too), for the faces that still exist; returns their ids. Call inside a transaction."""
    from people.models import FaceEmbedding, FaceImage

    alive = list(FaceImage.objects.select_for_update().filter(pk__in=list(vectors)).values_list("pk", flat=True))
    FaceEmbedding.objects.filter(face_id__in=alive, embedder=embedder).delete()
    FaceEmbedding.objects.bulk_create([FaceEmbedding.of(pk, embedder, vectors[pk]) for pk in alive])
    if served:
        for pk in alive:
            FaceImage.objects.filter(pk=pk).update(embedding=np.asarray(vectors[pk], np.float32).tobytes(), embedder=embedder)
    return alive


def reembed_faces(batch: int = 16, limit: int | None = None, progress: Callable[[int], None] | None = None) -> ReembedReport:
    """Bring every enrolled face lacking the served embedder up to date (at most ``limit``); see the module."""
    from people.models import FaceEmbedding, FaceImage, GalleryChange

    started = time.perf_counter()
    config = pipeline_config()
    name = config.embedder_name
    report = ReembedReport(embedder=name)
    todo = FaceImage.objects.lacking_served_embedder().order_by("id")
    report.lacking_before = todo.count()
    skipped: set[int] = set()
    while limit is None or report.reembedded + report.copied < limit:
        size = batch if limit is None else min(batch, limit - report.reembedded - report.copied)
        chunk = list(todo.exclude(pk__in=skipped)[:size])
        if not chunk:
            break
        kept = dict(FaceEmbedding.objects.filter(face__in=chunk, embedder=name).values_list("face_id", "vector"))
        vectors = {pk: np.frombuffer(bytes(blob), np.float32) for pk, blob in kept.items()}
        missing = [f for f in chunk if f.pk not in kept]
        embedded = embed_stored(missing, pipeline_for(config)) if missing else Embedded()  # models loaded only if needed
        skipped.update(embedded.photo_gone, embedded.no_geometry)
        report.photo_gone += embedded.photo_gone
        report.no_geometry += embedded.no_geometry
        report.from_region += embedded.from_region
        vectors.update(embedded.vectors)
        if not vectors:
            continue
        with transaction.atomic():
            alive = store_embeddings(name, vectors, served=True)
            people = FaceImage.objects.filter(pk__in=alive).values_list("person_id", flat=True)
            GalleryChange.objects.record(GalleryChange.Kind.FACE, people)
        report.copied += sum(1 for pk in alive if pk in kept)
        report.reembedded += sum(1 for pk in alive if pk not in kept)
        if progress:
            progress(len(alive))
        skipped.update(set(vectors) - set(alive))
    report.lacking_after = FaceImage.objects.lacking_served_embedder().count()
    report.seconds = round(time.perf_counter() - started, 2)
    return report
