"""Privacy controls over people's face data: erasure, export of one person's data, photo retention."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import PurePath
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from checkin.models import CheckIn, Consent, FlaggedFace, RejectedMatch
from integrations.events import person_erased
from integrations.models import Delivery
from people.models import FaceImage, Person
from people.services import delete_files, discard_uncommitted_photos
from recognition import services as recognition
from recognition.enrollment import ERASED_REVIEW_TEXT, without_looks_like
from security.audit import checkin_audit_retention_days
from security.models import AuditEvent, person_ids_field
from training import redaction
from training import services as training
from visitors.models import Sighting, Visitor, VisitorEnrollment

log = logging.getLogger(__name__)


@dataclass
class ErasureReport:
    """What an erasure removed, by kind (no name, no id: it is also the audit receipt)."""

    checkins_deleted: int = 0
    checkins_anonymised: int = 0
    rejected_matches_deleted: int = 0
    model_versions_deleted: int = 0
    audit_events_redacted: int = 0
    admin_log_entries_deleted: int = 0
    faces_deleted: int = 0
    files_deleted: int = 0
    review_reasons_rewritten: int = 0
    model_versions_redacted: int = 0
    label_maps_rewritten: int = 0
    heads_rewritten: int = 0
    metrics_redacted: int = 0
    plots_redrawn: int = 0
    visitor_links_deleted: int = 0
    task_records_deleted: int = 0
    deliveries_redacted: int = 0
    outlier_flags_deleted: int = 0  # their faces flagged by the site-wide outlier scan


def erase_person(person: Person, by=None) -> ErasureReport:
    """Erase a person everywhere they are held, in one transaction, and leave an anonymised receipt.

    In order: their check-ins (deleted, or kept with the person removed when
    ERASE_CHECKINS_WITH_PERSON is off) and the check-ins rejected as not them; their id in audit events; admin history entries about them
    or their rows; other people's review reasons that name them; the outlier scan's rows about
    them (their flagged faces; their id as another face's nearest person); their photos, crops and
    embeddings; the person; their name in webhook deliveries; every model version's artifacts and fields (training.redaction.
    forget_person). Files go once the transaction commits, the gallery snapshot is rewritten without
    them (every process drops them on its next request: the change log) and a retrain is requested. The receipt is an AuditEvent "erase": who, when, these counts."""
    report = ErasureReport()
    pid, name = person.pk, person.name
    with transaction.atomic():
        # The person's row is locked first, so what is being written about them meanwhile either
        # commits before this goes on (and is erased below) or waits and finds them gone:
        # - an upload of their photo (people.services.photo_stored locks the row FOR UPDATE) stores
        #   nothing once they are gone;
        # - an audit event (AuditEvent.save reads the rows it names FOR SHARE) is written without them.
        # NO KEY: foreign key checks (a check-in, a rejection) still pass as before, so no new
        # deadlock. SQLite has one writer at a time and needs none of this.
        list(Person.objects.select_for_update(no_key=True).filter(pk=pid).values_list("pk", flat=True))
        checkins = CheckIn.objects.filter(person_id=pid)
        checkin_ids = list(checkins.values_list("id", flat=True))
        if settings.ERASE_CHECKINS_WITH_PERSON:
            report.checkins_deleted, _ = checkins.delete()
        else:
            # the faces a check-in was matched on are the person's: their ids go too
            report.checkins_anonymised = checkins.update(person=None, matched_faces=[])
        rejected = RejectedMatch.objects.filter(person_id=pid)
        rejected_ids = list(rejected.values_list("id", flat=True))  # for their admin history, below
        report.rejected_matches_deleted = rejected.delete()[1].get(RejectedMatch._meta.label, 0)

        report.audit_events_redacted = _forget_in_audit_log(pid, name)
        report.task_records_deleted = _forget_in_task_records(pid, name)

        faces = list(
            FaceImage.objects.select_for_update().filter(person_id=pid).values_list("id", "image", "crop", "region", "status")
        )
        report.admin_log_entries_deleted = _forget_in_admin_history(
            pid, name, {FaceImage: [f[0] for f in faces], CheckIn: checkin_ids, RejectedMatch: rejected_ids}
        )

        report.review_reasons_rewritten = _forget_in_review_reasons(pid, name)
        # The site-wide outlier scan's results: their flagged faces go; where they were another
        # face's nearest other person, that face's row forgets them. A scan writing meanwhile locks
        # the people it names first (checkin.outlier_scan): it waits for this, then writes none.
        report.outlier_flags_deleted = FlaggedFace.objects.filter(person_id=pid).delete()[1].get(FlaggedFace._meta.label, 0)
        FlaggedFace.objects.filter(nearest_other_id=pid).update(nearest_other=None)

        files = [n for f in faces for n in f[1:4] if n]  # photos, crops, regions (every embedder's templates cascade)
        storage = FaceImage._meta.get_field("image").storage
        report.files_deleted = sum(1 for n in files if storage.exists(n))
        report.faces_deleted = FaceImage.objects.filter(person_id=pid).delete()[1].get(FaceImage._meta.label, 0)
        # enrolled from an unknown visitor: the link to the visitor's consent (the visitor itself,
        # its sightings and crop were deleted when it was enrolled)
        report.visitor_links_deleted, _ = VisitorEnrollment.objects.filter(person_id=pid).delete()
        person.delete()
        report.deliveries_redacted = person_erased(pid, name, partial(_reason_without, name))
        transaction.on_commit(lambda: delete_files(files))

        redacted = redaction.forget_person(pid)
        report.model_versions_redacted = redacted.get("versions", 0)
        report.label_maps_rewritten = redacted.get("label_maps", 0)
        report.heads_rewritten = redacted.get("heads", 0)
        report.metrics_redacted = redacted.get("metrics", 0)
        report.plots_redrawn = redacted.get("plots", 0)

        if any(f[4] == FaceImage.Status.ACCEPTED for f in faces):
            transaction.on_commit(training.enrollment_changed)  # retrain, debounced
        # the gallery snapshot on disk holds their embeddings: rewritten without them (and their
        # photos) once, when this commits, before this returns
        recognition.forget_after_commit(person_ids=[pid])
        AuditEvent.objects.create(
            action="erase",
            user=by if by is not None and getattr(by, "is_authenticated", False) else None,
            actor=(by.get_username() if by is not None and getattr(by, "is_authenticated", False) else "system")[:200],
            status_code=200,
            result=asdict(report),
        )
    return report


def _forget_in_task_records(pid: int, name: str) -> int:
    """django-q keeps each finished task's arguments and result (pickled, so no text search finds
    them) in its Task table, and the ORM broker keeps queued tasks in OrmQ (the Redis broker in its
    lists): an MQTT message is a task argument and names its person. Those that mention the person
    (their id as a person's, or their name) are deleted: a queued message about them is not sent.
    (Redis is not part of the transaction: its lists are cleaned once the erasure commits.)"""
    from django_q.models import OrmQ, Task
    from django_q.signing import SignedPackage

    transaction.on_commit(lambda: _forget_in_redis_queues(pid, name), robust=True)

    deleted = 0
    for task in Task.objects.only("id", "args", "kwargs", "result").iterator():
        if _mentions((task.args, task.kwargs, task.result), pid, name):
            deleted += Task.objects.filter(pk=task.pk).delete()[0]
    for queued in OrmQ.objects.all().iterator():
        try:
            package = SignedPackage.loads(queued.payload)
        except Exception:  # not ours to judge: a package django-q cannot read either
            continue
        if _mentions((package.get("args"), package.get("kwargs")), pid, name):
            deleted += OrmQ.objects.filter(pk=queued.pk).delete()[0]
    return deleted


def _forget_in_redis_queues(pid: int, name: str) -> int:
    """Queued tasks that name the person, taken out of the Redis broker's lists (every cluster's)."""
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis
    from django_q.conf import Conf
    from django_q.signing import SignedPackage

    removed = 0
    for cluster in {Conf.CLUSTER_NAME, settings.TRAINING_Q_CLUSTER}:
        broker = get_broker(list_key=cluster)
        if not isinstance(broker, Redis):
            return 0  # the ORM broker's queue is a table, cleaned with the rest
        for item in broker.connection.lrange(broker.list_key, 0, -1):
            try:
                package = SignedPackage.loads(item)
            except Exception:  # not ours to judge
                continue
            if _mentions((package.get("args"), package.get("kwargs")), pid, name):
                removed += broker.connection.lrem(broker.list_key, 1, item)
    return removed


def _mentions(value, pid: int, name: str) -> bool:
    """Whether a task's data names the person: their name as words in any text, or their id as a
    person's (``person_id``, ``person``, or a ``person`` object's ``id``, as event payloads have it)."""
    if isinstance(value, str):
        return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", value) is not None
    if isinstance(value, dict):
        person = value.get("person")
        if value.get("person_id") == pid or person == pid or (isinstance(person, dict) and person.get("id") == pid):
            return True
        return any(_mentions(v, pid, name) for v in value.values())
    if isinstance(value, list | tuple | set):
        return any(_mentions(v, pid, name) for v in value)
    return False


def _forget_in_audit_log(pid: int, name: str) -> int:
    """Remove an erased person from the audit events that named them (their id in ``person_ids``;
    in ``result``, entries about them in lists, their id elsewhere, their name in any text); count
    the events changed. The events stay: who called, when, and what came out for others."""
    count = 0
    for event in AuditEvent.objects.about(pid):
        result = _without_person(dict(event.result), pid, name)
        result["erased_people"] = result.get("erased_people", 0) + 1
        kept = [int(i) for i in event.person_ids.strip(",").split(",") if i and int(i) != pid]
        AuditEvent.objects.filter(pk=event.pk).update(result=result, person_ids=person_ids_field(kept))
        count += 1
    return count


def _without_person(value, pid: int, name: str):
    if isinstance(value, dict):
        return {k: (None if k == "person_id" and v == pid else _without_person(v, pid, name)) for k, v in value.items()}
    if isinstance(value, list):
        return [
            _without_person(v, pid, name) for v in value if not (isinstance(v, dict) and v.get("person_id") == pid) and v != pid
        ]
    if isinstance(value, str) and name.strip() and name in value:
        return value.replace(name, "(erased)")
    return value


# Where admin history names a person: the object_repr (str(obj), cut at 200 characters) of the
# models whose __str__ holds their name, as (text before the name, regular expression after it).
# Nothing else in the admin's history holds a person's name (change messages list field names).
_LOCAL_MINUTE = r" at \d{4}-\d\d-\d\d \d\d:\d\d"
_ADMIN_REPRS = {
    Person: ("", ""),  # the name
    FaceImage: ("", r" #\d+"),  # "<name> #<id>"
    CheckIn: ("", _LOCAL_MINUTE),  # "<name> at <local time>"
    RejectedMatch: ("not ", _LOCAL_MINUTE),  # "not <name> at <local time>"
}


def _forget_in_admin_history(pid: int, name: str, rows: dict[type, list[int]]) -> int:
    """Admin history entries about the person or their rows (``rows``: ids by model, read before
    they are deleted) carry their name (``object_repr``): they are deleted (the erasure receipt
    records the erasure itself). So are entries about such rows deleted earlier, found by an
    ``object_repr`` that is exactly what the model's ``__str__`` makes of the name: another person
    whose name merely contains it ("Ann" in "Ann Smith") keeps their history."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    cut = LogEntry._meta.get_field("object_repr").max_length
    about = Q()
    for model, (before, after) in _ADMIN_REPRS.items():
        kind = ContentType.objects.get_for_model(model)
        ids = [pid] if model is Person else rows.get(model, [])
        about |= Q(content_type=kind, object_id__in=[str(i) for i in ids])
        if not name.strip():
            continue
        about |= Q(content_type=kind, object_repr__regex=f"^{re.escape(before + name)}{after}$")
        if len(before + name) > cut - 25:  # the text after the name may have been cut off
            about |= Q(content_type=kind, object_repr__startswith=(before + name)[:cut])
    deleted, _ = LogEntry.objects.filter(about).delete()
    return deleted


def _reason_without(name: str, reason: str, recorded: bool) -> str | None:
    """``reason`` (a review reason about someone else's photo: "Looks more like <them> ...") with
    the erased person replaced where it says whom the photo looks like; None when it does not name
    them there. ``recorded``: the row records that it is about them (FaceImage.reason_person_id,
    Delivery.person_ids), whatever their name was then; otherwise (written before that was
    recorded) only a reason naming exactly ``name`` there is theirs."""
    return without_looks_like(reason, ERASED_REVIEW_TEXT, None if recorded else name)


def _forget_in_review_reasons(pid: int, name: str) -> int:
    """Other people's photos held for review because they look like the erased person say so by
    name: the name goes, the rest of the reason stays (the other similarity, the photo's own person,
    the advice)."""
    count = 0
    faces = FaceImage.objects.exclude(person_id=pid).filter(reason_person_id=pid)
    if name.strip():
        faces = faces | FaceImage.objects.exclude(person_id=pid).filter(
            reason_person_id__isnull=True, reason_code="possible_mislabel", reason__contains=name
        )
    for face in faces.only("id", "reason", "reason_person_id"):
        reason = _reason_without(name, face.reason, recorded=face.reason_person_id == pid)
        if reason is not None and reason != face.reason:
            FaceImage.objects.filter(pk=face.pk).update(reason=reason[:500], reason_person_id=None)
            count += 1
        elif face.reason_person_id == pid:
            FaceImage.objects.filter(pk=face.pk).update(reason_person_id=None)
    return count


def person_data(person: Person) -> dict:
    """Everything held about a person, as JSON-ready data (embeddings base64 float32, 128 each)."""
    faces = []
    for face in person.faces.order_by("id"):
        faces.append(
            {
                "id": face.pk,
                "status": face.status,
                "reason": face.reason,
                "original_name": face.original_name,
                "photo": f"photos/{face.pk}{PurePath(face.image.name).suffix}" if face.image else None,
                "crop": f"crops/{face.pk}.jpg" if face.crop else None,
                "region": f"regions/{face.pk}.jpg" if face.region else None,
                "box": face.box,
                "landmarks": face.landmarks,
                "faces_found": face.faces_found,
                "chosen_box": face.chosen_box,
                "face_choice": face.face_choice,
                "face_choice_reason": face.face_choice_reason,
                "detection_score": face.detection_score,
                "sharpness": face.sharpness,
                "embedder": face.embedder,
                "embedding_float32_base64": base64.b64encode(bytes(face.embedding)).decode() if face.embedding else None,
                "uploaded_at": face.created_at.isoformat(),
                "processed_at": face.processed_at.isoformat() if face.processed_at else None,
            }
        )
    recognitions = [
        {"at": e.created_at.isoformat(), "action": e.action, "by": e.actor, "result": e.result}
        for e in AuditEvent.objects.about(person.pk).order_by("created_at", "id")
    ]
    checkins = [
        {"at": c.checked_in_at.isoformat(), "similarity": c.similarity, "kiosk": str(c.kiosk) if c.kiosk else None}
        for c in CheckIn.objects.filter(person=person).select_related("kiosk").order_by("checked_in_at")
    ]
    rejected = [
        {
            "checked_in_at": r.checked_in_at.isoformat(),
            "similarity": r.similarity,
            "kiosk": str(r.kiosk) if r.kiosk else None,
            "rejected_at": r.rejected_at.isoformat(),
            "face_images": sorted(f.pk for f in r.faces.all()),
        }
        for r in RejectedMatch.objects.filter(person=person).select_related("kiosk").prefetch_related("faces")
    ]
    enrolled_from_visitors = [
        {
            "enrolled_at": e.enrolled_at.isoformat(),
            "assigned_to_existing_person": e.assigned,
            "consent_id": e.consent_id,
            "consent_notice_version": e.notice_version,
            "consent_given_at": e.consent_given_at.isoformat() if e.consent_given_at else None,
            "sightings": e.sightings,
            "first_seen_at": e.first_seen_at.isoformat() if e.first_seen_at else None,
            "enrolled_by": e.enrolled_by.get_username() if e.enrolled_by else None,
        }
        for e in VisitorEnrollment.objects.filter(person=person).select_related("enrolled_by").order_by("enrolled_at", "id")
    ]
    return {
        "exported_at": timezone.now().isoformat(),
        "person": {
            "id": person.pk,
            "name": person.name,
            "external_id": person.external_id,
            "notes": person.notes,
            "is_active": person.is_active,
            "legal_basis": person.legal_basis or None,  # None: enrolled before it was recorded
            "legal_basis_recorded_at": person.consent_recorded_at.isoformat() if person.consent_recorded_at else None,
            "legal_basis_recorded_by": person.consent_recorded_by.get_username() if person.consent_recorded_by else None,
            "consent_notice_version": person.consent_notice_version or None,
            "created_at": person.created_at.isoformat(),
            "updated_at": person.updated_at.isoformat(),
        },
        "face_images": faces,
        "recognitions": recognitions,
        "checkins": checkins,
        "rejected_matches": rejected,  # check-ins staff rejected as not this person
        "enrolled_from_visitors": enrolled_from_visitors,
    }


def visitor_data(visitor: Visitor) -> dict:
    """Everything held about an unknown visitor (embeddings base64 float32, 128 each)."""
    sightings = [
        {
            "id": s.pk,
            "seen_at": s.seen_at.isoformat(),
            "last_seen_at": s.last_seen_at.isoformat(),
            "frames": s.frames,
            "kiosk": str(s.kiosk) if s.kiosk else None,
            "account": s.user.get_username() if s.user else None,
            "consent_id": s.consent_id,
            "similarity": s.similarity,
            "embedder": s.embedder,
            "embedding_float32_base64": base64.b64encode(bytes(s.embedding)).decode() if s.embedding else None,
            "crop": f"crops/{s.pk}.jpg" if s.crop else None,
        }
        for s in Sighting.objects.filter(visitor=visitor).select_related("kiosk", "user").order_by("seen_at", "id")
    ]
    return {
        "exported_at": timezone.now().isoformat(),
        "visitor": {
            "id": visitor.pk,
            "first_seen_at": visitor.first_seen_at.isoformat(),
            "last_seen_at": visitor.last_seen_at.isoformat(),
            "retention_days": settings.VISITOR_RETENTION_DAYS,
        },
        "sightings": sightings,
    }


def export_visitor(visitor: Visitor, out: BinaryIO) -> None:
    """Write a zip into ``out`` (a binary file, seekable): visitor.json plus the visitor's face crop,
    if one is kept."""
    data = visitor_data(visitor)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("visitor.json", json.dumps(data, indent=2, ensure_ascii=False))
        for sighting in Sighting.objects.filter(visitor=visitor).exclude(crop=""):
            _copy_into(archive, f"crops/{sighting.pk}.jpg", sighting.crop, f"visitor {visitor.pk}")


def export_person(person: Person, out: BinaryIO) -> None:
    """Write a zip into ``out`` (a binary file, seekable): person.json plus the person's photos and
    face crops still on file. Each file is copied in chunks: the archive is never held in memory."""
    data = person_data(person)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("person.json", json.dumps(data, indent=2, ensure_ascii=False))
        for face, entry in zip(person.faces.order_by("id"), data["face_images"]):
            for field, name in ((face.image, entry["photo"]), (face.crop, entry["crop"]), (face.region, entry["region"])):
                if name:
                    _copy_into(archive, name, field, f"person {person.pk}")


def _copy_into(archive: zipfile.ZipFile, name: str, field, whose: str) -> None:
    """Copy a stored file into the archive as ``name``; a file that cannot be read is logged and left
    out (an error writing the archive is not: the export fails)."""
    try:
        source = field.open("rb")
    except OSError:
        log.warning("export of %s: file %s is missing", whose, field.name)
        return
    with source, archive.open(name, "w") as target:
        shutil.copyfileobj(source, target, 1024 * 1024)


@dataclass
class RetentionReport:
    photos_deleted: int
    crops_deleted: int
    audit_events_deleted: int
    checkins_deleted: int = 0
    webhook_deliveries_deleted: int = 0
    rejected_matches_deleted: int = 0
    model_versions_deleted: int = 0
    uncommitted_photos_deleted: int = 0  # photos whose upload's transaction rolled back
    consents_deleted: int = 0  # consent records past CHECKIN_RETENTION_DAYS that nothing refers to
    future_checkins_deleted: int = 0  # edge check-ins dated past EDGE_CLOCK_SKEW_SECONDS ahead: they would never expire


def apply_retention(days: int | None = None, now=None) -> RetentionReport:
    """Delete original photos uploaded more than ``days`` ago, keeping their embeddings (and, by
    setting, the aligned crops and face regions); and audit events, check-ins (and rejected ones)
    and webhook deliveries older than AUDIT_LOG_RETENTION_DAYS, CHECKIN_RETENTION_DAYS and
    WEBHOOK_LOG_RETENTION_DAYS (the live check-in's audit rows that name a person no later than the
    check-ins: security.audit.checkin_audit_retention_days); and the model versions past TRAINING_KEEP_VERSIONS; and photos
    whose upload's transaction rolled back (people.services.discard_uncommitted_photos); and consent
    records given more than CHECKIN_RETENTION_DAYS ago that nothing refers to any more
    (unreferenced_consents), after the check-ins above, so those that expired with them go too."""
    days = settings.FACE_PHOTO_RETENTION_DAYS if days is None else days
    now = now or timezone.now()
    photos = crops = 0
    keep_crops = settings.FACE_RETENTION_KEEP_CROPS
    if days > 0:
        expired = FaceImage.objects.filter(created_at__lt=now - timedelta(days=days))
        # Without KEEP_CROPS, also the faces whose photo went while crops were kept (the setting
        # was turned off since): no face past the period keeps a crop or region either.
        expired = expired.exclude(image="") if keep_crops else expired.filter(~Q(image="") | ~Q(crop="") | ~Q(region=""))
        for pk in expired.values_list("pk", flat=True).iterator():
            with transaction.atomic():
                # the files the row names now (a task may have written a crop since the query), or
                # none if it was deleted meanwhile
                face = FaceImage.objects.select_for_update().filter(pk=pk).first()
                if face is None:
                    continue
                files, update = [], ["updated_at"]
                if face.image:
                    files.append(face.image.name)
                    face.image = ""
                    update.append("image")
                    photos += 1
                if not keep_crops and (face.crop or face.region):
                    # the region goes with the crop: without either a face can no longer be embedded
                    # again (an embedder switch reports it)
                    files += [f.name for f in (face.crop, face.region) if f]
                    face.crop = face.region = ""
                    update += ["crop", "region"]
                    crops += 1
                if files:
                    face.save(update_fields=update)
                    transaction.on_commit(lambda files=files: delete_files(files))
    report = RetentionReport(
        photos,
        crops,
        _delete_older(AuditEvent.objects.all(), "created_at", settings.AUDIT_LOG_RETENTION_DAYS, now)
        # the live check-in's rows that name someone go with the check-ins they document (the notice says so)
        + _delete_older(AuditEvent.objects.naming_people_at_checkin(), "created_at", checkin_audit_retention_days(), now),
        _delete_older(CheckIn.objects.all(), "checked_in_at", settings.CHECKIN_RETENTION_DAYS, now),
        _delete_older(Delivery.objects.all(), "created_at", settings.WEBHOOK_LOG_RETENTION_DAYS, now),
        # a rejected check-in is kept as long as the check-in would have been
        _delete_older(RejectedMatch.objects.all(), "checked_in_at", settings.CHECKIN_RETENTION_DAYS, now),
        training.prune_versions(),
        discard_uncommitted_photos(now=now),
        _delete_older(unreferenced_consents(), "given_at", settings.CHECKIN_RETENTION_DAYS, now),
        _delete_future_checkins(now),
    )
    redaction.redact_pending()  # deleted photos a failed or lost task left in the label maps
    return report


def unreferenced_consents():
    """Consent records no row refers to: not a check-in made under it, a visitor's sighting or
    enrollment, nor any model added later with a foreign key to Consent (found from the model's
    relations, so a new one is kept out without a change here). A withdrawn consent is no different:
    the record of the withdrawal stays as long as a check-in made under that consent does."""
    # NOT EXISTS (an anti-join), not NOT IN (subquery): PostgreSQL hashes a NOT IN list only while
    # it fits in work_mem, and past that (a million check-ins) compares each consent with every
    # check-in. A row whose consent is NULL matches no consent here, as the NOT IN's list left out
    # its NULLs (one NULL in it would have kept every consent).
    rows = Consent.objects.all()
    for relation in Consent._meta.get_fields(include_hidden=True):
        if relation.auto_created and not relation.concrete and (relation.one_to_many or relation.one_to_one):
            field = relation.field
            referring = relation.related_model._base_manager.filter(**{field.name: OuterRef(field.target_field.attname)})
            rows = rows.filter(~Exists(referring))
    return rows


def _delete_future_checkins(now) -> int:
    """Delete the check-ins (and rejected ones) an edge device dated more than
    EDGE_CLOCK_SKEW_SECONDS ahead of the server's clock: the server refuses such uploads
    (``checked_in_at_in_future``), but rows stored before it did, or by a clock run wild, would
    otherwise outlive CHECKIN_RETENTION_DAYS, which counts from ``checked_in_at`` (kept forever at
    year 9999). Only while check-ins expire at all (CHECKIN_RETENTION_DAYS > 0)."""
    if settings.CHECKIN_RETENTION_DAYS <= 0:
        return 0
    ahead = now + timedelta(seconds=settings.EDGE_CLOCK_SKEW_SECONDS)
    _, by_model = CheckIn.objects.filter(time_source="device", checked_in_at__gt=ahead).delete()
    # a rejected check-in keeps its check-in's time (corrections): gone with it
    RejectedMatch.objects.filter(checked_in_at__gt=ahead).delete()
    return by_model.get(CheckIn._meta.label, 0)


def _delete_older(rows, field: str, days: int, now) -> int:
    """Delete the rows whose ``field`` is more than ``days`` before ``now`` (0 days: keep all)."""
    if days <= 0:
        return 0
    _, by_model = rows.filter(**{f"{field}__lt": now - timedelta(days=days)}).delete()
    return by_model.get(rows.model._meta.label, 0)
