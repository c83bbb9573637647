"""Django's door to the face engine: ORM rows <-> arrays, thresholds, the active model version."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db.models import Count, Max

from .engine.detection import DetectedFace
from .engine.images import ImageError, ImageLimits, decode_image
from .engine.matching import Candidate, Gallery, MatchResult
from .engine.pipeline import AnalysedFace, FacePipeline, PipelineConfig, shared_pipeline
from .engine.quality import QualityRules

logger = logging.getLogger(__name__)


def pipeline() -> FacePipeline:
    return shared_pipeline(
        PipelineConfig(
            weights_path=settings.FACE_WEIGHTS_PATH,
            detector=settings.FACE_DETECTOR,
            detect_max_side=settings.FACE_DETECT_MAX_SIDE,
            align_method=settings.FACE_ALIGN_METHOD,
            align_margin=settings.FACE_ALIGN_MARGIN,
            flip=settings.FACE_FLIP_TTA,
            min_detection_score=settings.FACE_MIN_DETECTION_SCORE,
            quality=QualityRules(
                min_face_px=settings.FACE_ENROLL_MIN_FACE_PX,
                min_sharpness=settings.FACE_ENROLL_MIN_SHARPNESS,
            ),
        )
    )


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


# ---- the gallery -------------------------------------------------------------------------------


class _GalleryCache:
    """The process's copy of the enrolled embeddings, reloaded when the database says it changed.

    The check is one aggregate query per request, so an enrollment or erasure made by another
    process (web worker, django-q worker) is used on this process's next request.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._gallery = Gallery()
        self._fingerprint = None
        self._loaded_since = None  # when the last (re)load started

    def _current_fingerprint(self):
        from people.models import FaceImage, Person

        faces = FaceImage.objects.in_gallery().aggregate(n=Count("id"), last=Max("updated_at"), top=Max("id"))
        people = Person.objects.aggregate(last=Max("updated_at"), n=Count("id"))
        return (faces["n"], faces["last"], faces["top"], people["last"], people["n"])

    def get(self) -> Gallery:
        fingerprint = self._current_fingerprint()
        if fingerprint != self._fingerprint:
            with self._lock:
                if fingerprint != self._fingerprint:
                    self._reload()
                    self._fingerprint = fingerprint
        return self._gallery

    # Rows saved this long before a reload may still be committing while it reads; they are read again.
    _OVERLAP = timedelta(seconds=5)
    _MAX_PEOPLE_PER_UPDATE = 2000

    def _reload(self) -> None:
        """Apply what changed since the last load, person by person (no rebuild of a large gallery).

        Faces or people saved since then are re-read per person; people who are gone or inactive
        are dropped. If the count still disagrees with the database, everything is read again.
        """
        from django.utils import timezone

        from people.models import FaceImage, Person

        started = timezone.now()
        if self._loaded_since is None:
            self._load_all()
        else:
            since = self._loaded_since - self._OVERLAP
            changed = set(FaceImage.objects.filter(updated_at__gt=since).values_list("person_id", flat=True))
            changed |= set(Person.objects.filter(updated_at__gt=since).values_list("id", flat=True))
            if len(changed) > self._MAX_PEOPLE_PER_UPDATE:  # a bulk import: one bulk read is quicker
                self._load_all()
                changed = set()
            for person_id in changed:
                rows = FaceImage.objects.in_gallery().filter(person_id=person_id).values_list("id", "embedding")
                keys, embeddings = _rows_to_arrays(rows)
                self._gallery.set_person(person_id, embeddings, keys)
            active = set(Person.objects.filter(is_active=True).values_list("id", flat=True))
            for person_id in self._gallery.person_ids - active:
                self._gallery.remove_person(person_id)
            if len(self._gallery) != FaceImage.objects.in_gallery().count():
                self._load_all()
        self._loaded_since = started

    def _load_all(self) -> None:
        from people.models import FaceImage

        rows = list(FaceImage.objects.in_gallery().values_list("id", "person_id", "embedding"))
        labels = np.array([row[1] for row in rows], np.int64)
        keys, embeddings = _rows_to_arrays((row[0], row[2]) for row in rows)
        gallery = Gallery()
        gallery.replace(embeddings, labels, keys)
        self._gallery = gallery

    def invalidate(self) -> None:
        self._fingerprint = None


def _rows_to_arrays(rows) -> tuple[np.ndarray, np.ndarray]:
    """(id, embedding blob) rows -> keys (N,) int64, embeddings (N, 128) float32."""
    rows = list(rows)
    keys = np.array([row[0] for row in rows], np.int64)
    blobs = b"".join(bytes(row[1]) for row in rows)
    return keys, np.frombuffer(blobs, dtype=np.float32).reshape(-1, 128)


_gallery_cache = _GalleryCache()


def gallery() -> Gallery:
    return _gallery_cache.get()


def invalidate_gallery() -> None:
    _gallery_cache.invalidate()


# ---- recognition and verification ----------------------------------------------------------------


@dataclass
class RecognisedFace:
    analysed: AnalysedFace
    result: MatchResult


def active_model_version():
    from training.models import ModelVersion

    return ModelVersion.objects.active()


# "Look the active version up": callers that already did pass theirs, which may be None (none active).
ACTIVE = object()


def match_threshold(version=ACTIVE) -> float:
    """The cosine threshold of nearest-neighbour matching: the active model version's calibrated
    one, else the LFW-chosen default. (A served softmax head has its own: ``recogniser().threshold``.)"""
    version = active_model_version() if version is ACTIVE else version
    if version is not None and version.threshold is not None:
        return float(version.threshold)
    return float(settings.FACE_MATCH_THRESHOLD)


# ---- the served recogniser ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedMatch(MatchResult):
    """A MatchResult that says which recogniser scored it: for "softmax_head" the candidates'
    ``similarity`` is the head's probability, for "nearest_neighbour" a cosine similarity."""

    scored_by: str = "nearest_neighbour"


class GalleryRecogniser:
    """Nearest neighbour over the enrolled gallery, open-set by a cosine threshold."""

    name = "nearest_neighbour"

    def __init__(self, gallery: Gallery, threshold: float):
        self.gallery, self.threshold = gallery, threshold

    def search(self, queries: np.ndarray, top_k: int = 5, threshold: float | None = None) -> list[ServedMatch]:
        threshold = self.threshold if threshold is None else threshold
        return [ServedMatch(r.candidates, r.threshold, self.name) for r in self.gallery.search(queries, top_k, threshold)]


class HeadRecogniser:
    """The active version's softmax head, open-set by its calibrated probability threshold.

    The head only knows the people enrolled when it was trained, so the gallery still answers
    two questions per face: who is in it now, and whether the face is closest to someone the head
    never saw. People erased or deactivated since (no longer in the gallery) lose their column at
    once; the probabilities are not renormalised, so their face is not handed to the next-likeliest
    person. A face whose nearest enrolled face belongs to a person enrolled after training is
    matched by the gallery at the cosine threshold instead (until the next retrain adds them)."""

    name = "softmax_head"

    def __init__(self, head, threshold: float, gallery: Gallery, cosine_threshold: float):
        self.head, self.threshold = head, threshold
        self.gallery, self.cosine_threshold = gallery, cosine_threshold
        self._known = set(int(c) for c in head.classes)

    def search(self, queries: np.ndarray, top_k: int = 5, threshold: float | None = None) -> list[ServedMatch]:
        threshold = self.threshold if threshold is None else threshold
        queries = np.asarray(queries, np.float32).reshape(-1, 128)
        nearest = self.gallery.search(queries, top_k, self.cosine_threshold)
        enrolled = self.gallery.person_ids
        served = np.isin(self.head.classes, list(enrolled))
        probabilities = self.head.scores(queries)
        results = []
        for row, near in zip(probabilities, nearest):
            if near.candidates and near.candidates[0].person_id not in self._known:
                results.append(ServedMatch(near.candidates, near.threshold, "nearest_neighbour"))
                continue
            order = [c for c in np.argsort(-row, kind="stable") if served[c]][:top_k]
            candidates = [Candidate(int(self.head.classes[c]), float(row[c])) for c in order]
            results.append(ServedMatch(candidates, threshold, self.name))
        return results


class _HeadCache:
    """The active version's head, read from its artifact once per process per version (and sha256)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._head = None

    def get(self, version):
        key = (version.pk, version.head_sha256)
        if key != self._key:
            with self._lock:
                if key != self._key:
                    self._head = _load_head(version)
                    self._key = key
        return self._head


def _load_head(version):
    from django.core.files.storage import default_storage

    from training.engine.heads import SoftmaxHead

    with default_storage.open(version.head.name, "rb") as fh:
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != version.head_sha256:
        raise ValueError(f"v{version.number}'s head artifact has sha256 {digest}, not the recorded {version.head_sha256}")
    with np.load(io.BytesIO(data)) as arrays:
        return SoftmaxHead.from_arrays(arrays["kernel"], arrays["bias"], arrays["classes"])


_head_cache = _HeadCache()


def recogniser(version=ACTIVE) -> GalleryRecogniser | HeadRecogniser:
    """What recognition serves now: the active version's recogniser with its threshold. A new
    active version (or a rollback) is used on this process's next call, without a restart."""
    version = active_model_version() if version is ACTIVE else version
    cosine = match_threshold(version)
    current = gallery()
    if version is None or version.recogniser != version.Recogniser.SOFTMAX_HEAD:
        return GalleryRecogniser(current, cosine)
    try:
        head = _head_cache.get(version)
    except (OSError, ValueError, KeyError) as err:
        # a missing or altered artifact must not name anybody: serve the gallery and say why
        logger.error("Serving nearest neighbour instead of v%s's softmax head: %s", version.number, err)
        return GalleryRecogniser(current, cosine)
    return HeadRecogniser(head, float(version.head_threshold), current, cosine)


def recognize(rgb: np.ndarray, top_k: int | None = None, threshold: float | None = None, served=None) -> list[RecognisedFace]:
    """Every face in the image, largest first, each matched by the served recogniser (the active
    version's; ``threshold`` overrides its threshold, in its own units)."""
    top_k = top_k or settings.FACE_TOP_K
    served = recogniser() if served is None else served
    faces = pipeline().analyse(rgb, max_faces=settings.FACE_MAX_FACES_PER_IMAGE)
    if not faces:
        return []
    results = served.search(np.stack([f.embedding for f in faces]), top_k=top_k, threshold=threshold)
    return [RecognisedFace(f, r) for f, r in zip(faces, results)]


def main_face(rgb: np.ndarray, flip: bool | None = None) -> tuple[AnalysedFace | None, int]:
    """The largest face of an image and how many faces were found (``flip``: see FacePipeline.analyse)."""
    faces = pipeline().detect(rgb)
    if not faces:
        return None, 0
    return pipeline().analyse(rgb, faces=faces[:1], flip=flip)[0], len(faces)


def person_similarity(embedding: np.ndarray, person_id: int) -> tuple[float | None, int]:
    """Best cosine similarity of ``embedding`` to the person's accepted faces, and how many there are."""
    from people.models import FaceImage

    blobs = list(FaceImage.objects.in_gallery().filter(person_id=person_id).values_list("embedding", flat=True))
    if not blobs:
        return None, 0
    matrix = np.frombuffer(b"".join(bytes(b) for b in blobs), dtype=np.float32).reshape(-1, 128)
    return float(np.max(matrix @ embedding)), len(blobs)


def verify_threshold() -> float:
    return float(settings.FACE_VERIFY_THRESHOLD)


def box_of(face: DetectedFace) -> list[int]:
    return face.box_ints()
