"""Check-ins recorded elsewhere: an edge kiosk's upload, idempotent by its client_id."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from rest_framework import status

from facesite.api import ApiError
from integrations.events import checkin_created

from .models import CheckIn, Consent


def record_edge_checkin(data: dict, kiosk, user) -> tuple[CheckIn, bool]:
    """Store an edge kiosk's check-in (``data``: EdgeCheckInSerializer's validated data) for
    ``kiosk`` (a kiosk key) or ``user`` (staff); return the row and whether it is new. A retried
    upload returns the row already stored with its client_id; ApiError if another device used it
    (409) or the person is unknown."""
    from people.models import Person
    from training.models import ModelVersion

    existing = _existing(data["client_id"], kiosk, user)
    if existing is not None:
        return existing, False
    if not Person.objects.filter(pk=data["person_id"]).exists():
        raise ApiError("unknown_person", "No person has this id.", fields={"person_id": ["Unknown person."]})
    version = None
    if data.get("model_version") is not None:
        version = ModelVersion.objects.filter(number=data["model_version"]).first()
    given = {
        "purpose": Consent.Purpose.CHECKIN,
        "kiosk": kiosk,
        "user": user,
        "notice_version": data["notice_version"],
        "given_at": data.get("consent_given_at") or data["checked_in_at"],
    }
    try:
        with transaction.atomic():
            # One device session's consent: two uploads of it racing may both store it (nothing
            # makes it unique), so the oldest is taken rather than exactly one (get_or_create would
            # fail every later upload of that session). Created with the check-in, so a check-in
            # that is not stored leaves no consent behind.
            consent = Consent.objects.filter(**given).order_by("pk").first()
            if consent is None:
                consent = Consent.objects.create(**given, age_confirmed=True)
            checkin = CheckIn.objects.create(
                client_id=data["client_id"],
                person_id=data["person_id"],
                checked_in_at=data["checked_in_at"],
                time_source="device",
                similarity=data["similarity"],
                threshold=data["threshold"],
                frames=data["frames"],
                model_version=version,
                embedder=f"edge-tflite-v{data['model_version']}" if data.get("model_version") else "edge-tflite",
                kiosk=kiosk,
                user=user,
                consent=consent,
            )
            checkin_created(checkin)  # sent after commit; a retried upload (returned above) sends nothing
    except IntegrityError:  # the same upload, racing: the other request stored it
        existing = _existing(data["client_id"], kiosk, user)
        if existing is None:
            raise
        return existing, False
    return _rows().get(pk=checkin.pk), True


def _rows():
    return CheckIn.objects.select_related("person", "kiosk", "user", "model_version")


def _existing(client_id, kiosk, user) -> CheckIn | None:
    row = _rows().filter(client_id=client_id).first()
    if row is None:
        return None
    if row.kiosk_id != (kiosk.pk if kiosk else None) or (kiosk is None and row.user_id != user.pk):
        raise ApiError("client_id_taken", "Another device already used this client_id.", status.HTTP_409_CONFLICT)
    return row
