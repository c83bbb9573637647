"""Unknown visitors: faces seen at check-in, after consent, that matched nobody enrolled.

A Visitor is an anonymous, persistent id for one face; each Sighting is one visit (one consent given
on one page load) on which that face stayed unknown for CHECKIN_STABLE_FRAMES frames. A sighting
keeps the face's embedding (one, the mean of the visit's) and, only with VISITOR_KEEP_CROP, one
small face crop per visitor. Sightings are deleted VISITOR_RETENTION_DAYS after they were taken and
with their consent; a visitor with no sighting left is deleted too (services.purge_expired).
"""

from __future__ import annotations

import uuid

import numpy as np
from django.conf import settings
from django.db import models
from django.db.models import Count


def crop_upload_to(instance: Sighting, filename: str) -> str:
    return f"visitors/{uuid.uuid4().hex}.jpg"  # random: a crop's address is not guessable from ids


class VisitorQuerySet(models.QuerySet):
    def with_counts(self):
        return self.annotate(sighting_count=Count("sightings", distinct=True))


class Visitor(models.Model):
    first_seen_at = models.DateTimeField(db_index=True)
    last_seen_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = VisitorQuerySet.as_manager()

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        verbose_name = "unknown visitor"

    def __str__(self) -> str:
        return f"Visitor #{self.pk}"

    @property
    def crop_sighting(self) -> Sighting | None:
        """The one sighting holding the visitor's crop (VISITOR_KEEP_CROP), if any."""
        return self.sightings.exclude(crop="").order_by("seen_at", "id").first()


class Sighting(models.Model):
    """One visit of a visitor: one consent (page load), however many tracks it took."""

    visitor = models.ForeignKey(Visitor, on_delete=models.CASCADE, related_name="sightings")
    seen_at = models.DateTimeField(db_index=True)
    last_seen_at = models.DateTimeField()
    frames = models.PositiveIntegerField(default=0, help_text="Frames the face stayed unknown on this visit.")
    kiosk = models.ForeignKey("checkin.Kiosk", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The signed-in account whose browser ran check-in (when not a kiosk).",
    )
    # Withdrawing (or deleting) the consent deletes what was kept under it.
    consent = models.ForeignKey("checkin.Consent", on_delete=models.CASCADE, related_name="+")
    similarity = models.FloatField(null=True, blank=True, help_text="Best similarity to the visitor it joined (empty: new).")
    embedding = models.BinaryField(null=True, blank=True, editable=False, help_text="128 float32, L2-normalised.")
    embedder = models.CharField(max_length=100, blank=True)
    crop = models.ImageField(upload_to=crop_upload_to, blank=True, max_length=200)

    class Meta:
        ordering = ["-seen_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["visitor", "consent"], name="one_sighting_per_visit")]

    def __str__(self) -> str:
        return f"Sighting #{self.pk} of visitor #{self.visitor_id}"

    @property
    def vector(self) -> np.ndarray | None:
        return None if self.embedding is None else np.frombuffer(bytes(self.embedding), dtype=np.float32)


class VisitorEnrollment(models.Model):
    """A person enrolled from a visitor: the consent the visitor gave at the camera, linked to the
    person (and erased with them: the row cascades)."""

    person = models.ForeignKey("people.Person", on_delete=models.CASCADE, related_name="visitor_enrollments")
    consent = models.ForeignKey("checkin.Consent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    notice_version = models.CharField(max_length=40, blank=True)
    consent_given_at = models.DateTimeField(null=True, blank=True)
    sightings = models.PositiveIntegerField(default=0)
    first_seen_at = models.DateTimeField(null=True, blank=True)
    enrolled_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    enrolled_at = models.DateTimeField(auto_now_add=True)
    assigned = models.BooleanField(default=False, help_text="Added to an existing person rather than enrolled as a new one.")

    def __str__(self) -> str:
        return f"Enrollment of person #{self.person_id} from a visitor"
