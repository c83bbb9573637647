"""Check-ins recorded elsewhere: an edge kiosk's upload, idempotent by its client_id."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from rest_framework import status

from facesite.api import ApiError
from integrations.events import checkin_created

from .models import CheckIn, Consent, NoticeVersion


def record_edge_checkin(data: dict, kiosk, user) -> tuple[CheckIn, bool]:
    """Store an edge kiosk's check-in (``data``: EdgeCheckInSerializer's validated data) for
    ``kiosk`` (a kiosk key) or ``user`` (staff); return the row and whether it is new. A retried
    upload returns the row already stored with its client_id; ApiError if another device used it
    (409), the person is unknown or inactive (``unknown_person``: the kiosk drops it), or the
    notice it was made under was not in force then (409 ``stale_notice``, see notice_in_force)."""
    from people.models import Person
    from training.models import ModelVersion

    existing = _existing(data["client_id"], kiosk, user)
    if existing is not None:
        return existing, False
    # a deactivated person is never recognized (the manifest tells the kiosk to mask them), and a
    # check-in the kiosk made before it knew is not stored either: one answer, as for an erased one
    if not Person.objects.filter(pk=data["person_id"], is_active=True).exists():
        raise ApiError("unknown_person", "No active person has this id.", fields={"person_id": ["Unknown person."]})
    if not notice_in_force(data["notice_version"], data["checked_in_at"]):
        raise ApiError(
            "stale_notice",
            f"Notice {data['notice_version']!r} was not in force at {data['checked_in_at'].isoformat()} "
            f"(the notice in force is {settings.CONSENT_NOTICE_VERSION!r}): sync, and ask for consent to it.",
            status.HTTP_409_CONFLICT,
            fields={"notice_version": ["Not the notice in force when the check-in was made."]},
        )
    version = None
    if data.get("model_version") is not None:
        version = ModelVersion.objects.filter(number=data["model_version"]).first()
    given = {
        "purpose": Consent.Purpose.CHECKIN,
        "kiosk": kiosk,
        "user": user,
        "notice_version": data["notice_version"],
        "given_at": data.get("consent_given_at") or data["checked_in_at"],
        # stored as the device says it was obtained; a device that does not say confirmed no age
        "method": data.get("consent_method") or Consent.Method.UNRECORDED,
        "age_confirmed": bool(data.get("age_confirmed")),
    }
    try:
        with transaction.atomic():
            # One device session's consent: two uploads of it racing may both store it (nothing
            # makes it unique), so the oldest is taken rather than exactly one (get_or_create would
            # fail every later upload of that session). Created with the check-in, so a check-in
            # that is not stored leaves no consent behind.
            consent = Consent.objects.filter(**given).order_by("pk").first()
            if consent is None:
                consent = Consent.objects.create(**given)
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


def current_notice() -> NoticeVersion:
    """The CONSENT_NOTICE_VERSION in force, recorded in the notice history the first time this
    server serves it (the manifest and every edge upload ask)."""
    latest = NoticeVersion.objects.order_by("-since", "-pk").first()
    if latest is None or latest.version != settings.CONSENT_NOTICE_VERSION:
        latest = NoticeVersion.objects.create(version=settings.CONSENT_NOTICE_VERSION)
    return latest


def notice_in_force(version: str, at: datetime) -> bool:
    """Was notice ``version`` in force at ``at`` (an edge check-in's device time)? The current
    one always is; an earlier one only from when this server first served it until the next one
    replaced it, so a check-in queued offline under the previous notice before the change is
    stored, one made under it after the change (or under a version never served here) is not.
    The first version recorded was in force since before the history began: its period has no start."""
    current_notice()
    periods = list(NoticeVersion.objects.order_by("since", "pk").values_list("version", "since"))
    if version == periods[-1][0]:
        return True
    return any(v == version and (i == 0 or since <= at) and at < periods[i + 1][1] for i, (v, since) in enumerate(periods[:-1]))


def _rows():
    return CheckIn.objects.select_related("person", "kiosk", "user", "model_version")


def _existing(client_id, kiosk, user) -> CheckIn | None:
    row = _rows().filter(client_id=client_id).first()
    if row is None:
        return None
    if row.kiosk_id != (kiosk.pk if kiosk else None) or (kiosk is None and row.user_id != user.pk):
        raise ApiError("client_id_taken", "Another device already used this client_id.", status.HTTP_409_CONFLICT)
    return row
