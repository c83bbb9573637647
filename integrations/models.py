"""Webhook endpoints registered by staff, and the log of each delivery to them."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

# Every event a webhook may subscribe to.
EVENTS = (
    "checkin.created",
    "checkin.rejected",
    "visitor.created",
    "face.accepted",
    "face.rejected",
    "face.needs_review",
    "model.activated",
    "person.erased",
)
# Sent only by the admin's "send test event" action, to the chosen endpoints; not subscribable.
TEST_EVENT = "webhook.test"


class WebhookQuerySet(models.QuerySet):
    def subscribed_to(self, event: str) -> list[Webhook]:
        """Active endpoints listening to ``event`` (filtered in Python: SQLite has no JSON contains)."""
        return [hook for hook in self.filter(is_active=True) if event in hook.events]


class Webhook(models.Model):
    """An HTTP endpoint that receives signed JSON POSTs for the events it subscribes to."""

    url = models.URLField(max_length=500, help_text="http(s) URL; private and loopback addresses are refused.")
    events = models.JSONField(default=list, help_text='Event names, e.g. ["checkin.created", "person.erased"].')
    secret = models.CharField(max_length=200, help_text="Shared secret: deliveries carry an HMAC-SHA256 of the body with it.")
    description = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WebhookQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url


class Delivery(models.Model):
    """One event sent (or being sent) to one webhook: what, when, how it went."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RETRYING = "retrying", "Retrying"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40, db_index=True)
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    payload = models.JSONField(help_text="The JSON body sent (ids, times, scores: never images).")
    # ",3,7,": whom the payload names (its person, and the one a review reason says the photo looks
    # like), so that an erasure finds every delivery about them by id, not by searching for a name.
    person_ids = models.CharField(max_length=100, blank=True, editable=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook} ({self.status})"
