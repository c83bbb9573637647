"""Corrections: staff say a check-in was "not this person".

``reject_checkin`` is the one way it is done (the API, the admin action and the feed page's button
all call it): the check-in is deleted, so it leaves the attendance report, the check-in list and,
through an event on the feed group, the staff screens that show it; the wrong pair is kept as a
``RejectedMatch`` with the gallery faces the match was made on; ``checkin.rejected`` goes to
webhooks and MQTT; the check-in's audit row no longer names the person. The faces that made the match are then judged against the rest of the gallery
(recognition.outliers): those that are outliers of their person are listed for review.

``review(person)`` is what the outlier review shows of one person: their outlier faces, each with
its evidence, and the rejections that named any of their faces (computed in the request: one
person's faces). ``site_review`` shows the faces the newest site-wide scan stored
(checkin.outlier_scan, a background task).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from django.db import transaction

from integrations.events import checkin_rejected
from recognition import outliers
from recognition.outliers import FaceEvidence
from security.models import AuditEvent

from . import feed, outlier_scan
from .models import CheckIn, FlaggedFace, RejectedMatch


class NotRejectable(Exception):
    """A check-in that cannot be rejected; ``code`` is the API's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Rejection:
    match: RejectedMatch
    flagged: list[FaceEvidence]  # the faces behind the match that are outliers of their person


def reject_checkin(checkin_id: int, by=None) -> Rejection:
    """Reject check-in ``checkin_id`` as "not this person" (``by``: the staff user).

    Raises NotRejectable "not_found" when there is no such check-in (also when it was rejected
    already: the row is gone) and "no_person" for an anonymised check-in of an erased person."""
    with transaction.atomic():
        # no select_related here: FOR UPDATE cannot lock the nullable side of an outer join
        checkin = CheckIn.objects.select_for_update().filter(pk=checkin_id).first()
        if checkin is None:
            raise NotRejectable("not_found", "No check-in has this id (a rejected check-in is deleted).")
        if checkin.person_id is None:
            raise NotRejectable("no_person", "This check-in names nobody (its person was erased): there is nothing to reject.")
        match = RejectedMatch.objects.create(
            person_id=checkin.person_id,
            checkin_id=checkin.pk,
            checked_in_at=checkin.checked_in_at,
            similarity=checkin.similarity,
            threshold=checkin.threshold,
            model_version_id=checkin.model_version_id,
            embedder=checkin.embedder,
            kiosk_id=checkin.kiosk_id,
            device=checkin.device[:200],
            rejected_by=by if by is not None and by.is_authenticated else None,
        )
        # only faces still held, and still the person's (a face may have been deleted since)
        faces = checkin.person.faces.filter(pk__in=[int(pk) for pk in checkin.matched_faces or []])
        match.faces.set(faces)
        checkin_rejected(checkin, by=by)  # sent once this commits
        AuditEvent.objects.forget_checkin_person(checkin.pk)  # the audit row no longer names them
        checkin.delete()
        transaction.on_commit(partial(feed.announce_removed, checkin_id))
    matched = set(match.faces.values_list("pk", flat=True))
    flagged = [e for e in outliers.person_evidence(match.person_id) if e.face_id in matched and e.outlier]
    return Rejection(match, flagged)


@dataclass
class FaceReview:
    evidence: FaceEvidence
    rejections: list[RejectedMatch] = field(default_factory=list)  # rejected matches made on this face


@dataclass
class PersonReview:
    person_id: int
    bound: float
    faces: list[FaceReview]  # the person's outlier faces, most doubtful first
    rejections: list[RejectedMatch]  # every rejected match of the person, newest first


def review(person) -> PersonReview:
    """The person's outlier faces with their evidence, and their rejected matches."""
    bound = outliers.outlier_bound()
    rejections = list(
        RejectedMatch.objects.filter(person=person).select_related("kiosk", "rejected_by").prefetch_related("faces")
    )
    by_face: dict[int, list[RejectedMatch]] = {}
    for rejection in rejections:
        for face in rejection.faces.all():
            by_face.setdefault(face.pk, []).append(rejection)
    faces = [FaceReview(e, by_face.get(e.face_id, [])) for e in outliers.outliers(person.pk, bound)]
    return PersonReview(person.pk, bound, faces, rejections)


def site_review(rows: Iterable[FlaggedFace]) -> list[FaceReview]:
    """Outlier faces a site-wide scan stored (a page of checkin.outlier_scan.flagged_faces: the
    scan itself runs in a background task, never here), with the rejections made on them."""
    found = [outlier_scan.evidence(row) for row in rows]
    rejections: dict[int, list[RejectedMatch]] = {}
    through = RejectedMatch.faces.through.objects.filter(faceimage_id__in=[e.face_id for e in found])
    for row in through.select_related("rejectedmatch", "rejectedmatch__kiosk"):
        rejections.setdefault(row.faceimage_id, []).append(row.rejectedmatch)
    return [FaceReview(e, rejections.get(e.face_id, [])) for e in found]
