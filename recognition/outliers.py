"""Gallery faces that may not belong to their person: the outlier review's evidence.

A face is an outlier of its person when

- it is **far from their other faces**: its best cosine similarity to any other of the person's
  gallery faces (leave-one-out) is below the bound, the calibrated match threshold in force: the
  recognizer itself would not call the two the same person; or
- it is **closer to another person**: some other enrolled person's nearest face is more similar to
  it than the person's own nearest other face.

A person with one gallery face has nothing to compare it with: it is judged only by the second
rule. The nearest other people come from the served gallery (recognition.services.gallery()), so
only faces recognition matches against (accepted faces of active people) are reviewed; each is
scored on their trusted faces (those not far from their own), so that one misfiled photo counts
against the person it is filed under, not against the true owner's own photos as well.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from . import services
from .engine.matching import embeddings_from_blobs

_NEAREST_PEOPLE = 4  # other people looked at per face (best first by their nearest face)


@dataclass(frozen=True)
class FaceEvidence:
    """One gallery face against the rest of the gallery (similarities are cosine, rounded to 4 places)."""

    face_id: int
    person_id: int
    own_faces: int  # the person's other gallery faces it was compared with
    own_best: float | None  # best similarity to them (None: the person has no other face)
    own_mean: float | None
    nearest_other_id: int | None  # the most similar other person, and how similar their nearest face is
    nearest_other_name: str | None
    nearest_other_similarity: float | None
    far_from_own: bool
    closer_to_other: bool

    @property
    def outlier(self) -> bool:
        return self.far_from_own or self.closer_to_other

    @property
    def reasons(self) -> list[str]:
        return [
            name for name, flagged in (("far_from_own", self.far_from_own), ("closer_to_other", self.closer_to_other)) if flagged
        ]


def outlier_bound() -> float:
    """The leave-one-out similarity below which a face is far from its person:
    FACE_OUTLIER_BOUND when set, else the calibrated match threshold in force."""
    bound = settings.FACE_OUTLIER_BOUND
    return float(bound) if bound is not None else services.match_threshold()


def person_evidence(person_id: int, bound: float | None = None) -> list[FaceEvidence]:
    """Every gallery face of the person with its evidence, in face id order (outliers or not)."""
    return _evidence(_gallery_rows(person_id=person_id), outlier_bound() if bound is None else bound)


def outliers(person_id: int | None = None, bound: float | None = None) -> list[FaceEvidence]:
    """The outlier faces of one person, or of everybody (``person_id`` None), most doubtful first
    (lowest margin of own over other). Everybody's is the site-wide scan: run it in a background
    task (checkin.outlier_scan), never in a request."""
    return site_scan(person_id, bound)[1]


def site_scan(person_id: int | None = None, bound: float | None = None) -> tuple[int, list[FaceEvidence]]:
    """(how many gallery faces were judged, their outliers most doubtful first): ``outliers`` with
    the size of the gallery it looked at."""
    rows = _gallery_rows(person_id=person_id)
    found = [e for e in _evidence(rows, outlier_bound() if bound is None else bound) if e.outlier]
    return len(rows), sorted(found, key=_doubt)


def _doubt(e: FaceEvidence) -> tuple:
    own = -1.0 if e.own_best is None else e.own_best
    other = -1.0 if e.nearest_other_similarity is None else e.nearest_other_similarity
    return (own - other, e.person_id, e.face_id)


def _gallery_rows(person_id: int | None) -> list[tuple[int, int, bytes]]:
    from people.models import FaceImage

    faces = FaceImage.objects.in_gallery().order_by("person_id", "id")
    if person_id is not None:
        faces = faces.filter(person_id=person_id)
    return list(faces.values_list("id", "person_id", "embedding"))


def _evidence(rows: list[tuple[int, int, bytes]], bound: float) -> list[FaceEvidence]:
    if not rows:
        return []
    from people.models import Person

    face_ids = np.array([r[0] for r in rows], np.int64)
    owners = np.array([r[1] for r in rows], np.int64)
    embeddings = embeddings_from_blobs(r[2] for r in rows)

    # Own faces: the person's other gallery faces (``rows`` hold all of a person's, or nobody's).
    by_person: dict[int, list[int]] = defaultdict(list)
    for index, owner in enumerate(owners.tolist()):
        by_person[owner].append(index)

    # Nearest other person: the gallery's best people for each face (its own first: the face itself
    # is in the gallery), each judged on their trusted faces only, so that a photo misfiled under
    # someone else does not make the true owner's faces look out of place too.
    nearest = services.gallery().search(embeddings, top_k=_NEAREST_PEOPLE, threshold=1.0)
    trusted = _trusted_faces({c.person_id for r in nearest for c in r.candidates} - {int(o) for o in owners}, bound)
    trusted.update({owner: _trusted(embeddings[rows_of], bound) for owner, rows_of in by_person.items()})
    names = dict(Person.objects.filter(pk__in=trusted).values_list("id", "name"))

    found = []
    for index, (face_id, owner) in enumerate(zip(face_ids.tolist(), owners.tolist())):
        others = [i for i in by_person[owner] if i != index]
        own = embeddings[others] @ embeddings[index] if others else np.zeros((0,), np.float32)
        own_best = float(own.max()) if len(own) else None
        scored = [
            (float(np.max(trusted[c.person_id] @ embeddings[index])), c.person_id)
            for c in nearest[index].candidates
            if c.person_id != owner and len(trusted.get(c.person_id, ()))
        ]
        other_similarity, other_id = max(scored) if scored else (None, None)
        found.append(
            FaceEvidence(
                face_id=face_id,
                person_id=owner,
                own_faces=len(others),
                own_best=_round(own_best),
                own_mean=_round(float(own.mean())) if len(own) else None,
                nearest_other_id=other_id,
                nearest_other_name=None if other_id is None else names.get(other_id, ""),
                nearest_other_similarity=_round(other_similarity),
                far_from_own=own_best is not None and own_best < bound,
                closer_to_other=other_similarity is not None and other_similarity > (own_best if own_best is not None else bound),
            )
        )
    return found


def _trusted_faces(person_ids: set[int], bound: float) -> dict[int, np.ndarray]:
    """Each person's gallery faces that are not far from their own other faces, (N, 128) per
    person; all of them when none is (nothing tells which is wrong) or when they have only one."""
    from people.models import FaceImage

    rows = FaceImage.objects.in_gallery().filter(person_id__in=person_ids).values_list("person_id", "embedding")
    by_person: dict[int, list[bytes]] = defaultdict(list)
    for person_id, blob in rows:
        by_person[person_id].append(blob)
    return {person_id: _trusted(embeddings_from_blobs(blobs), bound) for person_id, blobs in by_person.items()}


def _trusted(faces: np.ndarray, bound: float) -> np.ndarray:
    """(N, 128) one person's faces -> those whose best similarity to another of them reaches ``bound``."""
    if len(faces) < 2:
        return faces
    similarity = faces @ faces.T
    np.fill_diagonal(similarity, -1.0)
    kept = faces[similarity.max(axis=1) >= bound]
    return kept if len(kept) else faces


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
