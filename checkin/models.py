"""Live check-in records: kiosk devices, consent given before a camera is used, and check-ins.

No frame or face image is stored anywhere in this app: a check-in keeps who, when, how sure and
on which device, nothing else.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from people.models import FaceImage


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KioskQuerySet(models.QuerySet):
    def by_token(self, token: str) -> Kiosk | None:
        """The active kiosk holding this token, else None (tokens are stored hashed)."""
        if not token:
            return None
        return self.filter(token_hash=hash_token(token), is_active=True).first()

    def signed_in(self, kiosk_id: int | None, token_hash: str | None) -> Kiosk | None:
        """The active kiosk a device signed in as, if the token it signed in with is still the
        kiosk's: a new token (or deactivation) signs every device out. A sign-in that recorded no
        token hash (made before hashes were kept) is refused, so such a device enters its token again."""
        if not kiosk_id or not token_hash:
            return None
        return self.filter(pk=kiosk_id, token_hash=token_hash, is_active=True).first()


class Kiosk(models.Model):
    """A shared device (a tablet at the door) allowed to run check-in without a user login.

    Staff create it in the admin, which shows the token once; only its hash is kept.
    """

    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=8, editable=False, help_text="The token's first characters, to tell tokens apart.")
    is_active = models.BooleanField(default=True, help_text="An inactive kiosk's token is refused.")
    liveness_required = models.BooleanField(
        default=False, help_text="Ask the person to turn their head before checking in (a still photo then fails)."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    objects = KioskQuerySet.as_manager()

    class Meta:
        db_table = "recognition_kiosk"  # the table made before the check-in app was split out
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def set_new_token(self) -> str:
        """Give the kiosk a fresh token and return it (the only time it is seen in clear)."""
        token = secrets.token_urlsafe(24)
        self.token_hash = hash_token(token)
        self.token_prefix = token[:8]
        return token


class Consent(models.Model):
    """Explicit consent to camera processing, given on a page before the camera is touched."""

    class Purpose(models.TextChoices):
        CHECKIN = "checkin", "Live check-in"
        VERIFY = "verify", "Face verification"

    purpose = models.CharField(max_length=10, choices=Purpose.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    kiosk = models.ForeignKey(Kiosk, null=True, blank=True, on_delete=models.SET_NULL, related_name="consents")

    class Method(models.TextChoices):
        PAGE = "page", "Given on the page by the person"
        # an edge kiosk's (edge/kiosk.py): the operator's, for the people using the device
        INTERACTIVE = "interactive", "Edge: the operator was shown the notice on the device and agreed"
        OPERATOR_FLAG = "operator_flag", "Edge: the operator passed --consent (notice shown by other means)"
        UNRECORDED = "unrecorded", "Edge: the device did not say how"

    # CONSENT_NOTICE_VERSION and the digest of the notice's text (edge_api.notice_version)
    notice_version = models.CharField(max_length=40)
    age_confirmed = models.BooleanField(default=False)
    method = models.CharField(
        max_length=16, choices=Method.choices, default=Method.PAGE, help_text="How the consent was obtained."
    )
    given_at = models.DateTimeField(default=timezone.now)
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "recognition_consent"
        ordering = ["-given_at", "-id"]

    def __str__(self) -> str:
        who = self.user or self.kiosk or "anonymous"
        return f"{self.get_purpose_display()} consent by {who} at {self.given_at:%Y-%m-%d %H:%M}"

    @property
    def is_active(self) -> bool:
        return self.withdrawn_at is None

    def withdraw(self) -> None:
        if self.withdrawn_at is None:
            self.withdrawn_at = timezone.now()
            self.save(update_fields=["withdrawn_at"])


class NoticeVersion(models.Model):
    """When each notice version (CONSENT_NOTICE_VERSION and the digest of the notice's text; older
    rows: the configured version alone) came into force here (first served by this server): the
    history by which an edge kiosk's check-in, queued under the notice in force when it was made,
    is accepted after the notice changed (checkin.services.notice_in_force)."""

    version = models.CharField(max_length=40)
    since = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["since", "id"]

    def __str__(self) -> str:
        return f"notice {self.version} since {self.since:%Y-%m-%d %H:%M}"


class CheckInQuerySet(models.QuerySet):
    def today(self):
        start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        return self.filter(checked_in_at__gte=start)

    def recent_for(self, person_id: int, window: timedelta):
        return self.filter(person_id=person_id, checked_in_at__gte=timezone.now() - window)

    def near(self, person_id: int, at: datetime, window: timedelta):
        """The person's check-ins within ``window`` either side of ``at`` (an edge kiosk's queue
        arrives late and may be out of order, so a repeat may come before or after the stored one)."""
        return self.filter(person_id=person_id, checked_in_at__gte=at - window, checked_in_at__lte=at + window)


class CheckIn(models.Model):
    """A person identified live, stable over several frames above the match threshold."""

    # Nullable so that erasing a person can keep their check-ins anonymised (privacy settings).
    person = models.ForeignKey("people.Person", null=True, on_delete=models.SET_NULL, related_name="checkins")
    checked_in_at = models.DateTimeField(default=timezone.now, db_index=True)
    similarity = models.FloatField(help_text="Mean cosine similarity of the frames that agreed.")
    threshold = models.FloatField(help_text="The match threshold in force.")
    frames = models.PositiveSmallIntegerField(help_text="How many consecutive frames agreed.")
    model_version = models.ForeignKey("training.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    embedder = models.CharField(max_length=100, blank=True)
    kiosk = models.ForeignKey(Kiosk, null=True, blank=True, on_delete=models.SET_NULL, related_name="checkins")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The logged-in account whose browser ran the check-in (when not a kiosk).",
    )
    consent = models.ForeignKey(Consent, null=True, blank=True, on_delete=models.SET_NULL, related_name="checkins")
    liveness_checked = models.BooleanField(default=False)
    # An edge kiosk recording offline sends its own id for each check-in, so that retried uploads
    # never make a second row; checked_in_at is then the device's clock, and says so.
    client_id = models.UUIDField(
        null=True, blank=True, unique=True, editable=False, help_text="The edge client's id for this check-in."
    )
    time_source = models.CharField(
        max_length=10,
        choices=[("server", "Server clock"), ("device", "Device clock (recorded offline)")],
        default="server",
    )
    # Which gallery faces (FaceImage ids) the agreeing frames matched: if staff reject the check-in,
    # these are the faces to look at. Ids only; empty for edge uploads and older check-ins.
    matched_faces = models.JSONField(default=list, blank=True, editable=False)

    objects = CheckInQuerySet.as_manager()

    class Meta:
        db_table = "recognition_checkin"
        ordering = ["-checked_in_at", "-id"]
        verbose_name = "check-in"

    def __str__(self) -> str:
        return f"{self.person} at {timezone.localtime(self.checked_in_at):%Y-%m-%d %H:%M}"

    @property
    def device(self) -> str:
        if self.kiosk_id:
            return f"kiosk: {self.kiosk}"
        return f"user: {self.user}" if self.user_id else "-"


class RejectedMatch(models.Model):
    """Staff said a check-in was not this person: the wrong pair, kept as a negative for review.

    The check-in itself is deleted (it leaves reports, lists and the feed). What stays is who was
    wrongly named, when, by which device and how sure the match was, who corrected it, and the
    gallery faces the match was made on. No probe embedding: check-ins keep none. Erasing the
    person deletes these rows (privacy.services.erase_person).
    """

    person = models.ForeignKey("people.Person", on_delete=models.CASCADE, related_name="rejected_matches")
    checkin_id = models.PositiveBigIntegerField(help_text="The id the removed check-in had.")
    checked_in_at = models.DateTimeField()
    similarity = models.FloatField()
    threshold = models.FloatField()
    model_version = models.ForeignKey("training.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    embedder = models.CharField(max_length=100, blank=True)
    kiosk = models.ForeignKey(Kiosk, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    device = models.CharField(max_length=200, blank=True)
    faces = models.ManyToManyField(
        "people.FaceImage", blank=True, related_name="rejected_matches", help_text="The gallery faces the match was made on."
    )
    rejected_at = models.DateTimeField(default=timezone.now, db_index=True)
    rejected_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-rejected_at", "-id"]
        verbose_name = "rejected match"

    def __str__(self) -> str:
        return f"not {self.person} at {timezone.localtime(self.checked_in_at):%Y-%m-%d %H:%M}"


class OutlierFace(FaceImage):
    """The admin's outlier review (checkin.admin.OutlierFaceAdmin): gallery faces that sit far from
    the rest of their person, or closer to someone else. A proxy, so the review has its place on
    the admin index; no table of its own."""

    class Meta:
        proxy = True
        verbose_name = "outlier face review"
        verbose_name_plural = "outlier face review"


class OutlierScanQuerySet(models.QuerySet):
    def running(self):
        return self.filter(status=OutlierScan.Status.RUNNING)

    def finished(self):
        return self.filter(status=OutlierScan.Status.FINISHED)


class OutlierScan(models.Model):
    """One site-wide outlier scan (checkin.outlier_scan): every gallery face searched against the
    gallery by a background task, its flagged faces kept as ``FlaggedFace`` rows. The review shows
    the newest finished scan. At most one scan runs at a time: the database refuses a second row
    with status "running" (a partial unique constraint), however many workers ask at once."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"  # queued or being computed
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    requested_at = models.DateTimeField(default=timezone.now)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField(null=True, blank=True, help_text="When a worker began computing it.")
    finished_at = models.DateTimeField(null=True, blank=True)
    gallery_faces = models.PositiveIntegerField(null=True, blank=True, help_text="How many gallery faces were scanned.")
    bound = models.FloatField(null=True, blank=True, help_text="The outlier bound the scan judged with.")
    flagged = models.PositiveIntegerField(null=True, blank=True, help_text="How many outlier faces it stored.")
    error = models.TextField(blank=True)

    objects = OutlierScanQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=models.Q(status="running"), name="one_running_outlier_scan")
        ]

    def __str__(self) -> str:
        return f"outlier scan {self.pk} ({self.status})"


class FlaggedFace(models.Model):
    """A gallery face a site-wide scan found to be an outlier of its person, with the evidence
    (recognition.outliers.FaceEvidence). Data derived from the person: it goes with the face, the
    person (both cascade) and the scan; the nearest other person is forgotten when they are erased."""

    scan = models.ForeignKey(OutlierScan, on_delete=models.CASCADE, related_name="faces")
    face = models.ForeignKey(FaceImage, on_delete=models.CASCADE, related_name="+")
    person = models.ForeignKey("people.Person", on_delete=models.CASCADE, related_name="+")
    own_faces = models.PositiveIntegerField()
    own_best = models.FloatField(null=True)
    own_mean = models.FloatField(null=True)
    nearest_other = models.ForeignKey("people.Person", null=True, on_delete=models.SET_NULL, related_name="+")
    nearest_other_similarity = models.FloatField(null=True)
    far_from_own = models.BooleanField()
    closer_to_other = models.BooleanField()
    rank = models.PositiveIntegerField(help_text="Most doubtful first (lowest margin of own over other).")

    class Meta:
        ordering = ["scan", "rank"]
        constraints = [models.UniqueConstraint(fields=["scan", "face"], name="one_flag_per_face_and_scan")]
        indexes = [models.Index(fields=["scan", "rank"], name="flaggedface_scan_rank")]  # a page in review order

    def __str__(self) -> str:
        return f"face {self.face_id} flagged by outlier scan {self.scan_id}"
