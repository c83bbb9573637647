"""django-q tasks: one webhook delivery attempt (retried with backoff), one MQTT publish."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import mqtt, webhooks
from .models import Delivery

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=6)


def backoff(attempts: int) -> timedelta:
    """Wait before the next attempt after ``attempts`` failures: base, 6x base, 36x base, ... (10 s, 60 s, 6 min)."""
    return min(timedelta(seconds=settings.WEBHOOK_RETRY_BASE_SECONDS * 6 ** (attempts - 1)), MAX_BACKOFF)


def deliver(delivery_pk: int) -> str:
    """Make one attempt at a delivery; on failure schedule the next one, until WEBHOOK_MAX_ATTEMPTS."""
    delivery = Delivery.objects.select_related("webhook").filter(pk=delivery_pk).first()
    if delivery is None or delivery.status in (Delivery.Status.DELIVERED, Delivery.Status.FAILED):
        return "nothing to do"
    webhook = delivery.webhook
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    answer = webhooks.post(
        webhook.url,
        body,
        {
            "X-Facesite-Event": delivery.event,
            "X-Facesite-Delivery": str(delivery.delivery_id),
            "X-Facesite-Signature": webhooks.signature(webhook.secret, body),
        },
    )
    now = timezone.now()
    delivery.attempts += 1
    delivery.response_code = answer.status
    delivery.last_error = answer.error[:500]
    delivery.next_attempt_at = None
    if answer.ok:
        delivery.status = Delivery.Status.DELIVERED
        delivery.delivered_at = now
    elif delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS or not webhook.is_active:
        delivery.status = Delivery.Status.FAILED
        log.warning("webhook delivery %s to %s failed for good: %s", delivery.delivery_id, webhook.url, answer.error)
    else:
        delivery.status = Delivery.Status.RETRYING
        delivery.next_attempt_at = now + backoff(delivery.attempts)
    delivery.save(update_fields=["attempts", "response_code", "last_error", "next_attempt_at", "status", "delivered_at"])
    if delivery.status == Delivery.Status.RETRYING:
        _schedule_retry(delivery)
    return delivery.status


def _schedule_retry(delivery: Delivery) -> None:
    from django_q.models import Schedule
    from django_q.tasks import schedule

    try:
        schedule(
            "integrations.tasks.deliver",
            delivery.pk,
            name=f"webhook delivery {delivery.delivery_id} attempt {delivery.attempts + 1}",
            schedule_type=Schedule.ONCE,
            next_run=delivery.next_attempt_at,
            q_options={"group": "integrations"},
        )
    except Exception:
        log.exception("could not schedule the retry of webhook delivery %s", delivery.delivery_id)


def publish(event: str, message: dict) -> bool:
    """Publish one event to MQTT (False, logged, when the broker is unreachable)."""
    return mqtt.publish(event, message)


def announce_online() -> bool:
    """Every minute (schedule in migration 0002): keep the retained MQTT status ``online``."""
    return mqtt.announce_online()
