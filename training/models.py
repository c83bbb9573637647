from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from integrations.events import model_activated


class ModelVersionQuerySet(models.QuerySet):
    def active(self) -> "ModelVersion | None":
        return self.filter(status=ModelVersion.Status.ACTIVE).order_by("-activated_at").first()

    def queued(self):
        return self.filter(status=ModelVersion.Status.QUEUED)

    def running(self):
        return self.filter(status=ModelVersion.Status.TRAINING)

    def finished(self):
        return self.filter(status__in=[ModelVersion.Status.READY, ModelVersion.Status.ACTIVE, ModelVersion.Status.RETIRED])


def artifact_path(instance: "ModelVersion", filename: str) -> str:
    return f"models/v{instance.number}/{filename}"


class ModelVersion(models.Model):
    """One trained, evaluated recognizer. At most one is active; recognition reports which.

    A training run is one row: created QUEUED by a trigger, TRAINING while a worker runs it (stage,
    progress and heartbeat updated as it goes), then READY or ACTIVE, or FAILED with its error. The
    database allows at most one queued, one training and one active version at a time.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        TRAINING = "training", "Training"
        READY = "ready", "Ready"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        ADMIN = "admin", "Admin button"
        API = "api", "API"
        ENROLLMENT = "enrollment", "Enrollment change"
        COMMAND = "command", "Command line"

    class Recognizer(models.TextChoices):
        NEAREST_NEIGHBOUR = "nearest_neighbour", "Nearest neighbour (gallery)"
        SOFTMAX_HEAD = "softmax_head", "Softmax head"

    number = models.PositiveIntegerField(unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    embedder = models.CharField(max_length=100, blank=True)
    threshold = models.FloatField(
        null=True, blank=True, help_text="Calibrated open-set threshold of nearest-neighbour matching (cosine similarity)."
    )
    metrics = models.JSONField(default=dict, blank=True)
    open_set = models.JSONField(
        default=dict,
        blank=True,
        help_text="The impostor score tail of the site's own people (cross-person cosine scores only: no names or ids), "
        "for the per-search open-set threshold.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    trigger = models.CharField(max_length=12, choices=Trigger.choices, default=Trigger.ADMIN)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    force_activate = models.BooleanField(default=False, help_text="Activate even if it evaluates worse than the active version.")
    task_id = models.CharField(max_length=64, blank=True, help_text="The django-q task running it.")
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the process running it.")
    stage = models.CharField(max_length=40, blank=True)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent.")
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last progress report of the running worker.")
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds per stage.")
    people_count = models.PositiveIntegerField(default=0)
    image_count = models.PositiveIntegerField(default=0)
    # the column (and the API key) keep the earlier spelling
    recognizer = models.CharField(max_length=20, choices=Recognizer.choices, blank=True, db_column="recogniser")
    comparison = models.JSONField(default=dict, blank=True, help_text="Every approach evaluated on the same split.")
    activation_note = models.TextField(blank=True, help_text="Why it was or was not activated.")
    log = models.TextField(blank=True)
    tflite = models.FileField(blank=True, max_length=200, help_text="The embedder for edge clients (shared between versions).")
    tflite_sha256 = models.CharField(max_length=64, blank=True)
    # A fused site's second edge model: dlib's network as TFLite (shared between versions, like tflite).
    dlib_tflite = models.FileField(
        blank=True, max_length=200, help_text="dlib's network for edge clients of a fused site (shared between versions)."
    )
    dlib_tflite_sha256 = models.CharField(max_length=64, blank=True)
    labels = models.FileField(upload_to=artifact_path, blank=True, max_length=200, help_text="Label map JSON for edge clients.")
    labels_sha256 = models.CharField(max_length=64, blank=True)
    confusion_plot = models.FileField(upload_to=artifact_path, blank=True, max_length=200)
    roc_plot = models.FileField(upload_to=artifact_path, blank=True, max_length=200)
    # Set when the softmax head is the production recognizer: its weights and the class -> person id
    # map (.npz), and its own open-set threshold (a probability, not a cosine similarity).
    head = models.FileField(upload_to=artifact_path, blank=True, max_length=200, help_text="The fitted softmax head (.npz).")
    head_sha256 = models.CharField(max_length=64, blank=True)
    head_threshold = models.FloatField(
        null=True, blank=True, help_text="Calibrated open-set threshold on the softmax head's probability."
    )

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="queued"), name="one_queued_model_version"),
            models.UniqueConstraint(fields=["status"], condition=Q(status="training"), name="one_training_model_version"),
            models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="one_active_model_version"),
        ]
        permissions = [("download_modelversion", "Can download model files for edge clients")]

    def __str__(self) -> str:
        return f"v{self.number} ({self.status})"

    @classmethod
    def next_number(cls) -> int:
        last = cls.objects.order_by("-number").values_list("number", flat=True).first()
        return (last or 0) + 1

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.READY, self.Status.ACTIVE, self.Status.RETIRED)

    def activate(self) -> None:
        """Make this the only active version, atomically. ModelVersion.DoesNotExist if the version
        was deleted meanwhile (retention: training.services.prune_versions locks the row too)."""
        with transaction.atomic():
            if not ModelVersion.objects.select_for_update().filter(pk=self.pk).exists():
                raise ModelVersion.DoesNotExist(f"Version {self.number} was deleted.")
            ModelVersion.objects.select_for_update().filter(status=self.Status.ACTIVE).exclude(pk=self.pk).update(
                status=self.Status.RETIRED
            )
            self.status = self.Status.ACTIVE
            self.activated_at = timezone.now()
            self.save(update_fields=["status", "activated_at"])
            model_activated(self)


class PendingRedaction(models.Model):
    """A deleted photo still to be taken out of the model versions' label maps: its id and when it
    was added, never an embedding. Written in the transaction that deletes the photo (so a deletion
    rolled back leaves none, and a crash after the commit loses none), and drained by the task
    ``training.tasks.redact_pending``, one pass over the label maps for every photo deleted so far."""

    face_id = models.BigIntegerField()
    added_at = models.DateTimeField(null=True, blank=True, help_text="When the photo was added.")
    deleted_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"photo {self.face_id}"
