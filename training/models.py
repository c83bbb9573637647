from django.db import models, transaction
from django.utils import timezone


class ModelVersionQuerySet(models.QuerySet):
    def active(self) -> "ModelVersion | None":
        return self.filter(status=ModelVersion.Status.ACTIVE).order_by("-activated_at").first()


class ModelVersion(models.Model):
    """One trained, evaluated recogniser. At most one is active; recognition reports which."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        TRAINING = "training", "Training"
        READY = "ready", "Ready"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"
        FAILED = "failed", "Failed"

    number = models.PositiveIntegerField(unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    embedder = models.CharField(max_length=100, blank=True)
    threshold = models.FloatField(null=True, blank=True, help_text="Calibrated open-set threshold (cosine similarity).")
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"v{self.number} ({self.status})"

    @classmethod
    def next_number(cls) -> int:
        last = cls.objects.order_by("-number").values_list("number", flat=True).first()
        return (last or 0) + 1

    def activate(self) -> None:
        """Make this the only active version, atomically."""
        with transaction.atomic():
            ModelVersion.objects.select_for_update().filter(status=self.Status.ACTIVE).exclude(pk=self.pk).update(
                status=self.Status.RETIRED
            )
            self.status = self.Status.ACTIVE
            self.activated_at = timezone.now()
            self.save(update_fields=["status", "activated_at"])
