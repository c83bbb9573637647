"""Privacy controls over people's face data: export of one person's data, and photo retention."""

from __future__ import annotations

import base64
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePath

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from people.models import FaceImage, Person
from recognition.models import CheckIn
from security.models import AuditEvent

log = logging.getLogger(__name__)


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
                "box": face.box,
                "landmarks": face.landmarks,
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
    return {
        "exported_at": timezone.now().isoformat(),
        "person": {
            "id": person.pk,
            "name": person.name,
            "external_id": person.external_id,
            "notes": person.notes,
            "is_active": person.is_active,
            "created_at": person.created_at.isoformat(),
            "updated_at": person.updated_at.isoformat(),
        },
        "face_images": faces,
        "recognitions": recognitions,
        "checkins": checkins,
    }


def export_person(person: Person) -> bytes:
    """A zip: person.json plus the person's photos and face crops still on file."""
    data = person_data(person)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("person.json", json.dumps(data, indent=2, ensure_ascii=False))
        for face, entry in zip(person.faces.order_by("id"), data["face_images"]):
            for field, name in ((face.image, entry["photo"]), (face.crop, entry["crop"])):
                if not name:
                    continue
                try:
                    with field.open("rb") as fh:
                        archive.writestr(name, fh.read())
                except OSError:
                    log.warning("export of person %s: file %s is missing", person.pk, field.name)
    return buf.getvalue()


@dataclass
class RetentionReport:
    photos_deleted: int
    crops_deleted: int
    audit_events_deleted: int


def apply_retention(days: int | None = None, now=None) -> RetentionReport:
    """Delete original photos uploaded more than ``days`` ago, keeping their embeddings (and, by
    setting, the aligned crops); and audit events older than AUDIT_LOG_RETENTION_DAYS."""
    days = settings.FACE_PHOTO_RETENTION_DAYS if days is None else days
    now = now or timezone.now()
    photos = crops = 0
    if days > 0:
        expired = FaceImage.objects.filter(created_at__lt=now - timedelta(days=days)).exclude(image="")
        for face in expired.iterator():
            files = [face.image.name]
            face.image = ""
            update = ["image", "updated_at"]
            if not settings.FACE_RETENTION_KEEP_CROPS and face.crop:
                files.append(face.crop.name)
                face.crop = ""
                update.append("crop")
                crops += 1
            with transaction.atomic():
                face.save(update_fields=update)
                transaction.on_commit(lambda files=files: _delete_files(files))
            photos += 1
    audit = 0
    if settings.AUDIT_LOG_RETENTION_DAYS > 0:
        audit, _ = AuditEvent.objects.filter(created_at__lt=now - timedelta(days=settings.AUDIT_LOG_RETENTION_DAYS)).delete()
    return RetentionReport(photos, crops, audit)


def _delete_files(names: list[str]) -> None:
    storage = FaceImage._meta.get_field("image").storage
    for name in names:
        storage.delete(name)
