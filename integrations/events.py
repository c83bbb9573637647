"""What the site tells the outside world: ``emit(event, data)`` and the payload of each event.

Services call the small helpers below (``checkin_created(checkin)``, ...) at the point where the
thing happened, inside their transaction. Nothing leaves before the transaction commits: then one
Delivery row per subscribed webhook is written and queued to the django-q worker, and the event is
queued for MQTT. Payloads carry ids, times and scores, and a person's name only while the person
exists; never an image.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from security.models import person_ids_field

from .models import EVENTS, TEST_EVENT, Delivery, Webhook

log = logging.getLogger(__name__)

TASK_GROUP = "integrations"


def emit(event: str, data: dict, also_names: Iterable[int | None] = ()) -> None:
    """Send ``event`` with ``data`` (JSON-ready) to webhooks and MQTT once the transaction commits.

    ``also_names``: ids of people the data names besides ``data["person"]`` (in a text), recorded on
    each delivery so that erasing them finds it. Never raises for a receiver, a broker or a queue
    outage: those are logged."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    created_at = timezone.now().isoformat()
    person = data.get("person")
    named = [*also_names, person.get("id") if isinstance(person, dict) else None]
    person_ids = person_ids_field(i for i in named if i is not None)
    transaction.on_commit(partial(_dispatch, event, data, created_at, person_ids), robust=True)


def message(event: str, data: dict, event_id: uuid.UUID, created_at: str) -> dict:
    return {"event": event, "id": str(event_id), "created_at": created_at, "data": data}


def _dispatch(event: str, data: dict, created_at: str, person_ids: str = "") -> None:
    try:
        for webhook in Webhook.objects.subscribed_to(event):
            queue_delivery(webhook, event, data, created_at, person_ids)
    except Exception:
        log.exception("could not queue webhook deliveries of %s", event)
    if settings.MQTT_URL:
        # The message (a person's name, for some events) is the task's argument: django-q would keep
        # it in its task table once published, so a published message is not kept (save=False);
        # a failed one is, until an erasure about its person deletes it (privacy.services).
        event_id = uuid.uuid4()
        _queue(
            "integrations.tasks.publish", event, message(event, data, event_id, created_at), event=event, ref=event_id, save=False
        )


def queue_delivery(webhook: Webhook, event: str, data: dict, created_at: str | None = None, person_ids: str = "") -> Delivery:
    delivery_id = uuid.uuid4()
    payload = message(event, data, delivery_id, created_at or timezone.now().isoformat())
    delivery = Delivery.objects.create(
        webhook=webhook, event=event, delivery_id=delivery_id, payload=payload, person_ids=person_ids
    )
    _queue("integrations.tasks.deliver", delivery.pk, event=event, ref=delivery.pk)
    return delivery


def _queue(func: str, *args, event: str, ref, save: bool = True) -> None:
    """Queue ``func(*args)``; ``event`` and ``ref`` (the delivery's or the message's id) are what a
    failure logs: never ``args``, which can hold a whole message (a person's name, a time, a kiosk)."""
    from django_q.tasks import async_task

    try:
        async_task(func, *args, group=TASK_GROUP, save=save)
    except Exception:
        # The broker is down: the delivery stays "pending" in the admin, where staff can retry it.
        log.exception("could not queue %s for %s %s", func, event, ref)


def send_test(webhook: Webhook) -> Delivery:
    """A ``webhook.test`` delivery to this endpoint alone, whatever it subscribes to (admin action)."""
    return queue_delivery(webhook, TEST_EVENT, {"webhook_id": webhook.pk, "message": "A test event from facesite."})


def retry(delivery: Delivery) -> None:
    """Send a delivery again now (admin action), whatever its state."""
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.PENDING, next_attempt_at=None)
    _queue("integrations.tasks.deliver", delivery.pk, event=delivery.event, ref=delivery.pk)


# ---- payloads -------------------------------------------------------------------------------------


def _person(person) -> dict | None:
    return None if person is None else {"id": person.pk, "name": person.name}


def _time(value) -> str | None:
    return value.isoformat() if value else None


def _checkin(checkin) -> dict:
    kiosk = checkin.kiosk
    return {
        "checkin_id": checkin.pk,
        "checked_in_at": _time(checkin.checked_in_at),
        "time_source": checkin.time_source,  # "device": an edge kiosk's clock, uploaded later
        "person": _person(checkin.person),
        "similarity": round(checkin.similarity, 4),
        "threshold": checkin.threshold,
        "frames": checkin.frames,
        "liveness_checked": checkin.liveness_checked,
        "kiosk": None if kiosk is None else {"id": kiosk.pk, "name": kiosk.name},
        "model_version": checkin.model_version.number if checkin.model_version_id else None,
    }


def checkin_created(checkin) -> None:
    emit("checkin.created", _checkin(checkin))


def checkin_rejected(checkin, by=None) -> None:
    """Staff deleted a check-in (a wrong identification)."""
    emit("checkin.rejected", {**_checkin(checkin), "rejected_by": by.get_username() if by else None})


def visitor_created(visitor, kiosk=None) -> None:
    """A face unknown to the site was seen (after consent) for the first time: its anonymous id,
    when and where. No embedding, no image."""
    emit(
        "visitor.created",
        {
            "visitor_id": visitor.pk,
            "first_seen_at": _time(visitor.first_seen_at),
            "kiosk": None if kiosk is None else {"id": kiosk.pk, "name": kiosk.name},
        },
    )


FACE_EVENTS = {"accepted": "face.accepted", "rejected": "face.rejected", "review": "face.needs_review"}


def face_verdict(face) -> None:
    """A processed (or approved) enrollment photo's verdict; "pending" emits nothing. Its reason
    names the photo's person, and may name another (``face.reason_person_id``)."""
    event = FACE_EVENTS.get(face.status)
    if event is None:
        return
    emit(
        event,
        {
            "face_id": face.pk,
            "person": _person(face.person),
            "status": face.status,
            "reason_code": face.reason_code,
            "reason": face.reason,
            "detection_score": face.detection_score,
            "sharpness": face.sharpness,
            "processed_at": _time(face.processed_at),
        },
        also_names=[face.reason_person_id],
    )


def model_activated(version) -> None:
    emit(
        "model.activated",
        {
            "model_version": {
                "id": version.pk,
                "number": version.number,
                "embedder": version.embedder,
                "threshold": version.threshold,
                "trigger": version.trigger,
                "activated_at": _time(version.activated_at),
            }
        },
    )


def person_erased(person_id: int, name: str, other_reason: Callable[[str, bool], str | None]) -> int:
    """Tell the world a person was erased (only their id goes out) and strike them from the
    delivery log, so that no delivery stored, or sent later (a pending or retrying one is sent as it
    is stored now), names them; returns how many deliveries were rewritten.

    Their own deliveries keep the id with the name blanked, and lose the reason (it names them).
    Other people's deliveries that name them in the reason (recorded in ``person_ids``; before that
    was recorded, a review reason naming ``name`` where it says who the photo looks like) get the
    reason ``other_reason(reason, recorded)`` gives: the reason with only that place rewritten (None:
    it cannot tell where, and the reason is blanked)."""
    about = Q(payload__data__person__id=person_id) | Q(person_ids__contains=f",{person_id},")
    if name.strip():
        # written before person_ids was: only a review reason (possible_mislabel) names another person
        about |= Q(
            person_ids="",
            event=FACE_EVENTS["review"],
            payload__data__reason_code="possible_mislabel",
            payload__data__reason__icontains=name,
        )
    rewritten = 0
    for delivery in list(Delivery.objects.filter(about).only("id", "payload", "person_ids")):
        data = delivery.payload.get("data") if isinstance(delivery.payload, dict) else None
        if not isinstance(data, dict):
            continue
        before, person_ids = json.dumps(data), delivery.person_ids
        person = data.get("person")
        if isinstance(person, dict) and person.get("id") == person_id:
            data["person"] = {"id": person_id, "name": None}
            if data.get("reason"):
                data["reason"] = ""
        elif isinstance(data.get("reason"), str):
            recorded = f",{person_id}," in person_ids
            data["reason"] = other_reason(data["reason"], recorded) or ("" if recorded else data["reason"])
            person_ids = person_ids_field(i for i in person_ids.strip(",").split(",") if i and int(i) != person_id)
        if json.dumps(data) != before or person_ids != delivery.person_ids:
            Delivery.objects.filter(pk=delivery.pk).update(payload=delivery.payload, person_ids=person_ids)
            rewritten += 1
    emit("person.erased", {"person": {"id": person_id}, "erased_at": timezone.now().isoformat()})
    return rewritten
