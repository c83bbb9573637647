"""The embedder in force and every switch between embedders (recognition/embedder_switch.py).

It imports only Django: recognition.pipelines reads the active row to know which embedder serves.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q


class EmbedderSwitchQuerySet(models.QuerySet):
    def active(self) -> "EmbedderSwitch | None":
        return self.filter(status=EmbedderSwitch.Status.ACTIVE).order_by("-activated_at", "-pk").first()

    def in_progress(self):
        return self.filter(status__in=EmbedderSwitch.IN_PROGRESS)


class EmbedderSwitch(models.Model):
    """One embedder's time in force, and the switch that brought it there.

    A switch is one row: QUEUED by staff (admin, ``manage.py switch_embedder``) or by a changed
    FACE_EMBEDDER setting; REEMBEDDING while a worker embeds every enrolled face with the target
    embedder (``done`` of ``total``, heartbeat), EVALUATING the two embedders side by side, then
    ACTIVE (served: at most one row is) or BLOCKED (evaluated worse; staff may force it), or FAILED.
    An active row becomes RETIRED when another one is activated (a switch or a rollback). The row
    made when the table was created records the embedder served then (``trigger`` initial)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        REEMBEDDING = "reembedding", "Re-embedding faces"
        EVALUATING = "evaluating", "Evaluating"
        BLOCKED = "blocked", "Blocked: evaluated worse"
        ACTIVE = "active", "Active (served)"
        RETIRED = "retired", "Retired"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        INITIAL = "initial", "Served when switches were introduced"
        SETTING = "setting", "FACE_EMBEDDER setting"
        ADMIN = "admin", "Admin"
        COMMAND = "command", "Command line"
        ROLLBACK = "rollback", "Rollback"

    IN_PROGRESS = (Status.QUEUED, Status.REEMBEDDING, Status.EVALUATING)

    embedder = models.CharField(max_length=20, help_text="The FACE_EMBEDDER value: facenet, facenet+dlib, ...")
    name = models.CharField(max_length=100, blank=True, help_text="The embedder's full name (FaceImage.embedder of its faces).")
    previous = models.CharField(max_length=20, blank=True, help_text="The embedder served when the switch was asked for.")
    previous_name = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.ADMIN)
    force = models.BooleanField(default=False, help_text="Activate even if it evaluates worse than the embedder served.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    activated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last progress report of the running worker.")
    finished_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the process running it.")
    runs = models.PositiveSmallIntegerField(default=0, help_text="Times a worker took it up (more than one: resumed).")
    done = models.PositiveIntegerField(default=0, help_text="Enrolled faces holding the target embedding.")
    total = models.PositiveIntegerField(default=0, help_text="Enrolled faces to embed.")
    skipped = models.JSONField(
        default=dict, blank=True, help_text="Face ids that could not be embedded: photo_gone (no photo, no region), no_geometry."
    )
    evaluation = models.JSONField(default=dict, blank=True, help_text="Old and new side by side on the site's own people.")
    note = models.TextField(blank=True, help_text="Why it was or was not activated.")
    error = models.TextField(blank=True)

    objects = EmbedderSwitchQuerySet.as_manager()

    class Meta:
        ordering = ["-pk"]
        constraints = [models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="one_active_embedder")]
        permissions = [("switch_embedder", "Can switch, force or roll back the served embedder")]

    def __str__(self) -> str:
        return f"{self.embedder} ({self.status})"

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.status not in self.IN_PROGRESS else 0)
