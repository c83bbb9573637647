"""Unknown visitors: sightings stored and clustered, merged, enrolled, discarded, forgotten.

Clustering is incremental: a new sighting's embedding is compared with every visitor's kept
embeddings (those made by the embedder served now) and joins the visitor it is closest to at or
above the threshold (VISITOR_MATCH_THRESHOLD, else recognition's match threshold in force: the same
"same person" line recognition draws). When it reaches two or more visitors they were one person
seen apart: they are merged into the oldest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max, Min
from django.utils import timezone

from integrations.events import face_verdict, visitor_created
from people.models import FaceImage, LegalBasis, Person
from people.services import gallery_changed
from recognition import services as recognition
from recognition.engine.matching import embeddings_from_blobs
from recognition.enrollment import mislabel_review, unname_if_erased

from .live import UnknownFace
from .models import Sighting, Visitor, VisitorEnrollment

log = logging.getLogger(__name__)


class Refused(Exception):
    """A staff action the service will not do; ``code`` and ``status`` are the API's."""

    def __init__(self, code: str, message: str, status: int = 400, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.status, self.field = code, message, status, field


def match_threshold() -> float:
    if settings.VISITOR_MATCH_THRESHOLD is not None:
        return float(settings.VISITOR_MATCH_THRESHOLD)
    return recognition.match_threshold()


def matching_visitors(embedding: np.ndarray, embedder: str, threshold: float) -> list[tuple[int, float]]:
    """(visitor id, best similarity) of every visitor at or above ``threshold``, best first."""
    rows = list(Sighting.objects.filter(embedding__isnull=False, embedder=embedder).values_list("visitor_id", "embedding"))
    if not rows:
        return []
    similarities = embeddings_from_blobs(blob for _, blob in rows) @ embedding
    best: dict[int, float] = {}
    for (visitor_id, _), similarity in zip(rows, similarities):
        best[visitor_id] = max(best.get(visitor_id, -1.0), float(similarity))
    return sorted(((v, s) for v, s in best.items() if s >= threshold), key=lambda pair: -pair[1])


# ---- sightings -------------------------------------------------------------------------------------


def record_sighting(face: UnknownFace, consent, kiosk=None, user=None) -> Sighting | None:
    """(ORM) Store one visit of an unknown face under ``consent`` and cluster it: a new visitor, or
    the visitor(s) it matches (merged if several). Nothing is stored without active consent.
    One sighting per visitor per consent: another track of the same face on the same visit only
    updates it."""
    if consent is None or not type(consent).objects.filter(pk=consent.pk, withdrawn_at__isnull=True).exists():
        return None
    now = timezone.now()
    embedding = face.embedding
    embedder = recognition.pipeline().embedder_name
    with transaction.atomic():
        matches = matching_visitors(embedding, embedder, match_threshold())
        if matches:
            ids = sorted(v for v, _ in matches)
            visitors = list(Visitor.objects.select_for_update().filter(pk__in=ids).order_by("id"))
            if not visitors:  # deleted meanwhile
                matches = []
        if matches:
            visitor = visitors[0]
            for other in visitors[1:]:
                merge(visitor, other)
            similarity = matches[0][1]
        else:
            visitor = Visitor.objects.create(first_seen_at=now, last_seen_at=now)
            similarity = None
            visitor_created(visitor, kiosk)
        sighting = Sighting.objects.filter(visitor=visitor, consent=consent).first()
        if sighting is None:
            sighting = Sighting(
                visitor=visitor, consent=consent, seen_at=now, kiosk=kiosk, user=user, similarity=similarity, embedder=embedder
            )
            sighting.embedding = embedding.astype(np.float32).tobytes()
        sighting.last_seen_at = now
        sighting.frames += face.frames
        if face.crop and not visitor.sightings.exclude(crop="").exists():
            sighting.crop.save("crop.jpg", ContentFile(face.crop), save=False)
        sighting.save()
        _keep_latest_embeddings(visitor)
        Visitor.objects.filter(pk=visitor.pk).update(last_seen_at=now)
    return sighting


def merge(into: Visitor, other: Visitor) -> None:
    """(ORM, in a transaction) ``other`` was ``into`` seen apart: its sightings move over (a visit
    seen as both keeps one sighting), one crop at most is kept, and ``other`` is deleted."""
    has_crop = into.sightings.exclude(crop="").exists()
    for sighting in other.sightings.all():
        if into.sightings.filter(consent_id=sighting.consent_id).exists():
            sighting.delete()  # the same visit, already counted
            continue
        if has_crop and sighting.crop:
            name, storage = sighting.crop.name, sighting.crop.storage
            transaction.on_commit(lambda name=name, storage=storage: storage.delete(name))
            sighting.crop = ""
        has_crop = has_crop or bool(sighting.crop)
        sighting.visitor = into
        sighting.save(update_fields=["visitor", "crop"])
    into.first_seen_at = min(into.first_seen_at, other.first_seen_at)
    into.last_seen_at = max(into.last_seen_at, other.last_seen_at)
    into.save(update_fields=["first_seen_at", "last_seen_at"])
    other.delete()


def _keep_latest_embeddings(visitor: Visitor) -> None:
    kept = visitor.sightings.filter(embedding__isnull=False).order_by("-seen_at", "-id")
    stale = list(kept.values_list("id", flat=True)[settings.VISITOR_MAX_EMBEDDINGS :])
    if stale:
        Sighting.objects.filter(pk__in=stale).update(embedding=None)


# ---- forgetting ------------------------------------------------------------------------------------


def _drop_empty_visitors() -> int:
    """Delete visitors left with no sighting; re-date the others from the sightings they keep."""
    deleted, _ = Visitor.objects.filter(sightings__isnull=True).delete()
    return deleted


def _redate(visitor_ids) -> None:
    for row in (
        Sighting.objects.filter(visitor_id__in=set(visitor_ids))
        .values("visitor_id")
        .annotate(first=Min("seen_at"), last=Max("last_seen_at"))
    ):
        Visitor.objects.filter(pk=row["visitor_id"]).update(first_seen_at=row["first"], last_seen_at=row["last"])


def forget_consent(consent) -> int:
    """A consent was withdrawn: everything kept under it goes (sightings, their embeddings and crop
    files; visitors left without a sighting). Returns the number of sightings deleted."""
    if consent is None:
        return 0
    with transaction.atomic():
        rows = Sighting.objects.filter(consent_id=consent.pk)
        visitors = set(rows.values_list("visitor_id", flat=True))
        deleted, _ = rows.delete()
        _drop_empty_visitors()
        _redate(visitors)
    return deleted


@dataclass
class PurgeReport:
    sightings_deleted: int = 0
    visitors_deleted: int = 0


def purge_expired(days: int | None = None, now=None) -> PurgeReport:
    """Delete sightings taken more than ``days`` (VISITOR_RETENTION_DAYS) ago, with their embeddings
    and crop files, and the visitors left with none."""
    days = settings.VISITOR_RETENTION_DAYS if days is None else days
    cutoff = (now or timezone.now()) - timedelta(days=days)
    with transaction.atomic():
        rows = Sighting.objects.filter(seen_at__lt=cutoff)
        visitors = set(rows.values_list("visitor_id", flat=True))
        sightings, _ = rows.delete()
        deleted = _drop_empty_visitors()
        _redate(visitors)
    return PurgeReport(sightings, deleted)


def discard(visitor: Visitor) -> None:
    """Staff: not someone to keep. The visitor, its sightings and crop go."""
    with transaction.atomic():
        visitor.delete()


# ---- enrollment ------------------------------------------------------------------------------------


@dataclass
class Enrolled:
    person: Person
    faces: list[FaceImage] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(1 for f in self.faces if f.status == FaceImage.Status.ACCEPTED)


def enroll_new_person(visitor: Visitor, name: str, by=None) -> Enrolled:
    """Staff: this visitor is a new person called ``name``. Their kept embeddings become the person's
    gallery faces (after the review an upload gets); the legal basis is the explicit consent the
    visitor gave at the camera, linked by a VisitorEnrollment. The visitor is then deleted."""
    name = name.strip()
    with transaction.atomic():
        visitor = _locked(visitor)
        sightings = _usable_sightings(visitor)
        consent = sightings[0].consent
        person = Person(name=name)
        person.record_legal_basis(LegalBasis.EXPLICIT_CONSENT, by)
        person.consent_notice_version = consent.notice_version
        person.save()
        return _move_into_gallery(visitor, sightings, person, by, assigned=False)


def assign_to_person(visitor: Visitor, person: Person, by=None) -> Enrolled:
    """Staff: this visitor is ``person`` (active). Their embeddings join the person's gallery, each
    accepted or held for review exactly as an uploaded photo would be."""
    if not person.is_active:
        raise Refused("inactive_person", f"{person.name} is inactive; activate them first.", field="person_id")
    with transaction.atomic():
        visitor = _locked(visitor)
        return _move_into_gallery(visitor, _usable_sightings(visitor), person, by, assigned=True)


def _locked(visitor: Visitor) -> Visitor:
    locked = Visitor.objects.select_for_update().filter(pk=visitor.pk).first()
    if locked is None:
        raise Refused("not_found", "This visitor no longer exists (discarded, enrolled or expired).", status=404)
    return locked


def _usable_sightings(visitor: Visitor) -> list[Sighting]:
    embedder = recognition.pipeline().embedder_name
    sightings = list(
        visitor.sightings.filter(embedding__isnull=False, embedder=embedder).select_related("consent").order_by("-seen_at", "-id")
    )
    if not sightings:
        raise Refused(
            "no_embeddings",
            f"This visitor has no face embedding made by the embedder served now ({embedder}); nothing can be enrolled.",
            status=409,
        )
    return sightings


def _move_into_gallery(visitor: Visitor, sightings: list[Sighting], person: Person, by, assigned: bool) -> Enrolled:
    now = timezone.now()
    result = Enrolled(person)
    for sighting in sightings:
        vector = sighting.vector
        face = FaceImage(
            person=person,
            image="",  # no photo: an unknown face's frames are never stored
            original_name=f"visitor {visitor.pk}, sighting {sighting.pk} ({sighting.seen_at:%Y-%m-%d %H:%M})",
            uploaded_by=by if by is not None and by.is_authenticated else None,
            embedder=sighting.embedder,
            processed_at=now,
        )
        face.set_vector(vector)
        verdict = mislabel_review(face, vector)
        face.status, face.reason_code, face.reason = verdict.status, verdict.code, verdict.reason
        face.reason_person_id = verdict.reason_person_id
        unname_if_erased(face)  # in this transaction: the person it names may have been erased since
        face.save()
        face_verdict(face)
        result.faces.append(face)
    latest = sightings[0]
    VisitorEnrollment.objects.create(
        person=person,
        consent=latest.consent,
        notice_version=latest.consent.notice_version,
        consent_given_at=latest.consent.given_at,
        sightings=visitor.sightings.count(),
        first_seen_at=visitor.first_seen_at,
        enrolled_by=by if by is not None and by.is_authenticated else None,
        assigned=assigned,
    )
    visitor.delete()  # sightings, embeddings and crop (after commit) go with it
    if result.accepted:
        gallery_changed()
        transaction.on_commit(recognition.invalidate_gallery)
    return result
