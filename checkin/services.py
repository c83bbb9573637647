"""Check-ins recorded elsewhere: an edge kiosk's upload, idempotent by its client_id and, as on the
live socket, one per person within the repeat window."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status

from facesite.api import ApiError
from integrations.events import checkin_created

from .models import CheckIn, Consent, NoticeVersion


def record_edge_checkin(data: dict, kiosk, user) -> tuple[CheckIn, bool]:
    """Store an edge kiosk's check-in (``data``: EdgeCheckInSerializer's validated data) for
    ``kiosk`` (a kiosk key) or ``user`` (staff); return the row and whether it is new. A retried
    upload returns the row already stored with its client_id; ApiError if another device used it
    (409), the person is unknown or inactive (``unknown_person``: the kiosk drops it), or the
    notice it was made under was not in force then (409 ``stale_notice``, see notice_in_force),
    or its time is one retention would not keep (400, see check_device_time).

    A person this kiosk (or this staff uploader) already checked in within
    CHECKIN_REPEAT_WINDOW_MINUTES of the device's time is not checked in again: the stored row is
    returned (not new) and nothing is announced, as on the live socket."""
    from people.models import Person
    from people.services import lock_person
    from training.models import ModelVersion

    existing = _existing(data["client_id"], kiosk, user)
    if existing is not None:
        return existing, False
    check_device_time(data["checked_in_at"])
    # a deactivated person is never recognized (the manifest tells the kiosk to mask them), and a
    # check-in the kiosk made before it knew is not stored either: one answer, as for an erased one
    if not Person.objects.filter(pk=data["person_id"], is_active=True).exists():
        raise ApiError("unknown_person", "No active person has this id.", fields={"person_id": ["Unknown person."]})
    if not notice_in_force(data["notice_version"], data["checked_in_at"]):
        raise ApiError(
            "stale_notice",
            f"Notice {data['notice_version']!r} was not in force at {data['checked_in_at'].isoformat()} "
            f"(the notice in force is {current_notice().version!r}): sync, and ask for consent to it.",
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
            # Two uploads of one person wait for each other here (FOR NO KEY UPDATE; SQLite has one
            # writer at a time), so the second sees the first's row in the repeat window.
            if not lock_person(data["person_id"]):  # erased since the check above
                raise ApiError("unknown_person", "No active person has this id.", fields={"person_id": ["Unknown person."]})
            repeat = _repeat(data["person_id"], data["checked_in_at"], kiosk, user)
            if repeat is not None:
                return repeat, False
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


def check_device_time(at: datetime) -> None:
    """Refuse an edge check-in's device time that retention would not handle: more than
    EDGE_CLOCK_SKEW_SECONDS ahead of the server's clock (400 ``checked_in_at_in_future``: never
    purged, and always "today"), or older than CHECKIN_RETENTION_DAYS (400 ``checked_in_at_too_old``:
    it would be deleted at the next purge; the kiosk drops it). A device whose clock runs ahead
    keeps its check-in and is stored once the server's clock has caught up."""
    now = timezone.now()
    if at > now + timedelta(seconds=settings.EDGE_CLOCK_SKEW_SECONDS):
        raise ApiError(
            "checked_in_at_in_future",
            f"checked_in_at {at.isoformat()} is ahead of the server's clock ({now.isoformat(timespec='seconds')}): "
            "set the device's clock.",
            fields={"checked_in_at": ["In the future."]},
        )
    days = settings.CHECKIN_RETENTION_DAYS
    if days > 0 and at < now - timedelta(days=days):
        raise ApiError(
            "checked_in_at_too_old",
            f"checked_in_at {at.isoformat()} is older than the {days} days check-ins are kept.",
            fields={"checked_in_at": ["Older than the retention period."]},
        )


def current_notice() -> NoticeVersion:
    """The notice version in force (edge_api.notice_version: CONSENT_NOTICE_VERSION and a digest of
    the text), recorded in the notice history the first time this server serves it (the manifest,
    every edge upload and every consent given on the check-in page ask). A text changed by the
    configuration alone (a webhook subscribed to check-ins) is a new version from then on."""
    from .edge_api import notice_version

    served = notice_version()
    latest = NoticeVersion.objects.order_by("-since", "-pk").first()
    if latest is None or latest.version != served:
        latest = NoticeVersion.objects.create(version=served)
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


def _repeat(person_id: int, at: datetime, kiosk, user) -> CheckIn | None:
    """This device's check-in of the person within the repeat window around ``at``, if any."""
    window = timedelta(minutes=settings.CHECKIN_REPEAT_WINDOW_MINUTES)
    if window <= timedelta(0):
        return None
    rows = _rows().near(person_id, at, window)
    rows = rows.filter(kiosk=kiosk) if kiosk is not None else rows.filter(kiosk=None, user=user)
    return rows.order_by("checked_in_at", "pk").first()


def _existing(client_id, kiosk, user) -> CheckIn | None:
    row = _rows().filter(client_id=client_id).first()
    if row is None:
        return None
    if row.kiosk_id != (kiosk.pk if kiosk else None) or (kiosk is None and row.user_id != user.pk):
        raise ApiError("client_id_taken", "Another device already used this client_id.", status.HTTP_409_CONFLICT)
    return row
