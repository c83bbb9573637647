"""Django's door to the face engine: ORM rows <-> arrays, thresholds, the active model version.

One façade for what is served now (``served_now()``: the active version, its recognizer and
threshold, the gallery) and for the two questions the API asks of it, ``recognize()`` and
``verify()``, which answer with dataclasses the views send as they are.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from .answers import NamedCandidate, Recognition, RecognizedFace, Verification, VerifiedFace
from .engine.matching import Candidate, Gallery, embeddings_from_blobs
from .engine.open_set import ImpostorTail, OpenSet, expected_far
from .engine.pipeline import AnalysedFace
from .engine.recognizers import GalleryRecognizer, HeadRecognizer, Recognizer, ServedMatch
from .gallery import GalleryCache, forget_after_commit, write_snapshot  # noqa: F401  (the façade's too)

# the pipeline and upload rules are the façade's too (recognition/pipelines.py holds them)
from .pipelines import image_limits, main_face, pipeline, pipeline_config, quality_rules, read_upload  # noqa: F401
from .pipelines import verify_threshold as verify_threshold_for_served

logger = logging.getLogger(__name__)


# ---- the gallery (recognition/gallery.py: change log, snapshots) --------------------------------

_gallery_cache = GalleryCache()


def gallery() -> Gallery:
    """The gallery as of now: this process's copy, brought up to date with the change log."""
    return _gallery_cache.get()


def warm_up_gallery() -> None:
    """Load the gallery now (at start-up); a database not reachable yet leaves it to the first request."""
    import time

    from django.db import connection

    try:
        started = time.perf_counter()
        loaded = gallery()
        stats = _gallery_cache.stats
        logger.info(
            "gallery loaded at start-up: %d faces (%s) in %.2f s",
            len(loaded),
            "snapshot" if stats["from_snapshot"] else "database",
            time.perf_counter() - started,
        )
    except Exception as err:
        logger.warning("the gallery was not loaded at start-up: %s", err)
    finally:
        connection.close()


def invalidate_gallery() -> None:
    """Drop this process's copy: the next request loads it again (snapshot, else database)."""
    _gallery_cache.invalidate()


# ---- what is served now ---------------------------------------------------------------------------


def active_model_version():
    from training.models import ModelVersion

    return ModelVersion.objects.active()


def served_embedder() -> str:
    return pipeline_config().embedder_name


def served_dim() -> int:
    """The length of the served embedder's embeddings (128 FaceNet, 256 fused)."""
    return pipeline_config().dim


def impostor_tails(version) -> list[ImpostorTail]:
    """The per-pair impostor tails the open set is calibrated on for the served embedder: LFW
    strangers (committed) and the site's own people (recorded by ``version``'s training run)."""
    from training.open_set import impostor_tails as tails

    return tails(version)


def open_set(version, gallery_size: int) -> OpenSet:
    """The cosine threshold in force for a gallery of ``gallery_size`` faces: a stranger's best
    score reaches it in at most OPEN_SET_FAR_PER_SEARCH of searches (never below the per-pair
    threshold), and the rate expected there."""
    from training.open_set import calibration

    return calibration(version, gallery_size)


def match_threshold(gallery_size: int | None = None) -> float:
    """The cosine threshold of nearest-neighbour matching now, for the current gallery (or one of
    ``gallery_size`` faces). (A served softmax head has its own: ``recognizer().threshold``.)"""
    size = len(gallery()) if gallery_size is None else gallery_size
    return open_set(active_model_version(), size).threshold


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


def _recognizer_for(version, current: Gallery, cosine: float) -> Recognizer:
    """``version``'s recognizer (None: no version is active) over ``current`` at the cosine threshold."""
    if version is None or version.recognizer != version.Recognizer.SOFTMAX_HEAD:
        return GalleryRecognizer(current, cosine)
    try:
        head = _head_cache.get(version)
    except (OSError, ValueError, KeyError) as err:
        # a missing or altered artifact must not name anybody: serve the gallery and say why
        logger.error("Serving nearest neighbour instead of v%s's softmax head: %s", version.number, err)
        return GalleryRecognizer(current, cosine)
    return HeadRecognizer(head, float(version.head_threshold), current, cosine)


@dataclass(frozen=True)
class Served:
    """What recognition serves at one moment, read once per request: the active model version
    (None when none is), its recognizer and that recognizer's open-set threshold (cosine, or the
    head's probability), over the gallery as it was read."""

    version: object | None  # training.models.ModelVersion
    recognizer: Recognizer
    open_set: OpenSet  # the cosine threshold for this gallery's size and its expected false accepts

    @property
    def threshold(self) -> float:
        return float(self.recognizer.threshold)

    @property
    def gallery(self) -> Gallery:
        return self.recognizer.gallery

    @property
    def kind(self) -> str:
        """The embedder whose faces this gallery holds: probes must be embedded by it (another
        thread may have seen a switch since the gallery was read)."""
        from .pipelines import served_kind

        return getattr(self.gallery, "kind", None) or served_kind()

    @property
    def model_version(self) -> int | None:
        return None if self.version is None else self.version.number

    def expected_far(self, threshold: float) -> float | None:
        """The expected share of strangers' searches naming somebody at the cosine ``threshold``
        over this gallery (None: a softmax head serves, whose probability is not calibrated per
        search, or no impostor tail is known)."""
        if self.recognizer.name != "nearest_neighbour":
            return None
        return expected_far(impostor_tails(self.version), threshold, len(self.gallery))


def served_now() -> Served:
    """The active version's recognizer with its threshold. A new active version (or a rollback) is
    used on this process's next call, without a restart."""
    version = active_model_version()
    current = gallery()
    calibrated = open_set(version, len(current))
    return Served(version, _recognizer_for(version, current, calibrated.threshold), calibrated)


def recognizer() -> Recognizer:
    """The recognizer served now (see ``served_now``), searched like a Gallery."""
    return served_now().recognizer


# ---- recognition and verification ----------------------------------------------------------------

# The answers show thresholds to 4 decimals; a client sending the shown value back is not lowering it.
_THRESHOLD_TOLERANCE = 5e-5


class Refused(Exception):
    """A request the service will not answer as asked; ``code`` is the API's error code."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def threshold_in_force(asked: float | None, served: float) -> float:
    """The threshold a request is answered at: the served one, or a stricter one the client asked
    for. Nobody lowers it through the API (a lower one would turn strangers into matches, logged
    against the people they were matched to): staff evaluate thresholds in training, not here."""
    if asked is None:
        return served
    if asked < served - _THRESHOLD_TOLERANCE:
        raise Refused(
            "invalid",
            f"threshold {asked:g} is below the threshold in force ({served:.4f}): a request may raise it, not lower it.",
            "threshold",
        )
    return max(float(asked), served)


def _names(person_ids) -> dict[int, str]:
    from people.models import Person

    return dict(Person.objects.filter(pk__in=set(person_ids)).values_list("id", "name"))


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def recognize(
    rgb: np.ndarray, top_k: int | None = None, threshold: float | None = None, all_candidates: bool = False
) -> Recognition:
    """Every face in the image (largest first), each matched by the recognizer served now.

    ``threshold`` may only raise the served threshold (``Refused`` otherwise). Each face's
    candidates are the people at or above the threshold in force, at most ``top_k``;
    ``all_candidates`` (for staff) lists the top ``top_k`` whatever their score. Only a candidate at
    or above the threshold is ever a ``match``."""
    served = served_now()
    in_force = threshold_in_force(threshold, served.threshold)
    pipe = pipeline(served.kind)
    faces = pipe.analyse(rgb, max_faces=settings.FACE_MAX_FACES_PER_IMAGE)
    results: list[ServedMatch] = []
    if faces:
        results = served.recognizer.search(
            np.stack([f.embedding for f in faces]), top_k=top_k or settings.FACE_TOP_K, threshold=in_force
        )
    shown = [r.candidates if all_candidates else [c for c in r.candidates if c.similarity >= r.threshold] for r in results]
    names = _names(c.person_id for candidates in shown for c in candidates)

    def named(c: Candidate) -> NamedCandidate:
        return NamedCandidate(c.person_id, names.get(c.person_id, ""), _round(c.similarity))

    return Recognition(
        faces=[
            RecognizedFace(
                box=f.face.box_ints(),
                landmarks=f.face.landmarks_dict(),
                detection_score=_round(f.face.score),
                match=named(r.match) if r.match else None,
                candidates=[named(c) for c in candidates],
                margin=_round(r.margin),
                scored_by=r.scored_by,
            )
            for f, r, candidates in zip(faces, results, shown)
        ],
        threshold=_round(in_force),
        recogniser=served.recognizer.name,
        model_version=served.model_version,
        embedder=pipe.embedder_name,
        gallery_size=len(served.gallery),
        expected_false_accepts_per_search=significant(served.expected_far(in_force)),
        target_false_accepts_per_search=float(settings.OPEN_SET_FAR_PER_SEARCH),
    )


def significant(value: float | None) -> float | None:
    """A rate shown to 4 significant digits (a per-search rate can be 1e-6)."""
    return None if value is None else float(f"{value:.4g}")


def person_similarity(embedding: np.ndarray, person_id: int) -> tuple[float | None, int]:
    """Best cosine similarity of ``embedding`` to the person's accepted faces, and how many there are."""
    from people.models import FaceImage

    blobs = list(FaceImage.objects.in_gallery().filter(person_id=person_id).values_list("embedding", flat=True))
    if not blobs:
        return None, 0
    return float(np.max(embeddings_from_blobs(blobs) @ embedding)), len(blobs)


def verify_threshold() -> float:
    return verify_threshold_for_served()


def _face_of(rgb: np.ndarray, field_name: str, flip: bool | None = None) -> tuple[AnalysedFace, int]:
    face, count = main_face(rgb, flip=flip)
    if face is None:
        raise Refused("no_face", f"{field_name}: no face was found in the image.", field_name)
    return face, count


def verify(
    images: dict[str, np.ndarray],
    person_id: int | None = None,
    threshold: float | None = None,
    reads_people: bool = False,
) -> Verification:
    """``images`` {"image1": rgb, "image2": rgb} -> are they the same person? Or ``images``
    {"image": rgb} and ``person_id`` -> is this face that (active) person (best of their accepted
    faces)?

    ``reads_people``: the caller may read the roster (``facesite.api.may_read_people``). Anybody
    else learns nothing about a person it names by id beyond the answer itself: the name only when
    the face is verified (as recognition names people at or above the threshold), and not how
    many faces were compared.

    ``threshold`` may only raise FACE_VERIFY_THRESHOLD; ``Refused`` for a person who is unknown,
    deactivated or not enrolled, an image without a face, or a lower threshold."""
    from people.models import Person

    in_force = threshold_in_force(threshold, verify_threshold())
    if person_id is not None:
        # The face first, for any id: an answer must not differ by the id before the comparison.
        # Compared with gallery embeddings, which are made without flip.
        face, count = _face_of(images["image"], "image")
        person = Person.objects.filter(pk=person_id, is_active=True).first()
        similarity, compared = person_similarity(face.embedding, person.pk) if person else (None, 0)
        if similarity is None:
            # One refusal, without the name, for an id that is unknown, deactivated or not enrolled:
            # telling them apart would let an account that may not read the roster find out by
            # counting which ids are people (and, with the name, who). Only a caller who may read
            # the roster, and so learns nothing new, is told that an active person has no face yet.
            if person is not None and reads_people:
                raise Refused("person_not_enrolled", f"{person.name} has no accepted face images to compare with.", "person_id")
            raise Refused("unknown_person", f"No enrolled person with id {person_id}.", "person_id")
        analysed = [("image", face, count)]
        person_fields = {
            "person_id": person.pk,
            "name": person.name if similarity >= in_force or reads_people else None,
            "compared_images": compared if reads_people else None,
        }
    else:
        # two fresh faces: both embedded with flip test-time augmentation (more accurate on LFW)
        analysed = [(name, *_face_of(images[name], name, flip=settings.FACE_VERIFY_FLIP_TTA)) for name in ("image1", "image2")]
        similarity = float(analysed[0][1].embedding @ analysed[1][1].embedding)
        person_fields = {}
    return Verification(
        verified=similarity >= in_force,
        similarity=_round(similarity),
        threshold=_round(in_force),
        faces=[VerifiedFace(name, f.face.box_ints(), _round(f.face.score), count) for name, f, count in analysed],
        **person_fields,
    )
