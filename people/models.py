import uuid
from pathlib import PurePath

import numpy as np
from django.conf import settings
from django.db import models


class LegalBasis(models.TextChoices):
    """Why the site may hold this person's face: the GDPR Art. 9(2) condition for biometric data used
    to identify someone (an Art. 6 basis such as contract or legitimate interests alone is not enough)."""

    EXPLICIT_CONSENT = "explicit_consent", "Explicit consent (Art. 9(2)(a))"
    EMPLOYMENT = "employment", "Employment or social security law (Art. 9(2)(b))"
    VITAL_INTERESTS = "vital_interests", "Vital interests (Art. 9(2)(c))"
    SUBSTANTIAL_PUBLIC_INTEREST = "substantial_public_interest", "Substantial public interest in law (Art. 9(2)(g))"


class Person(models.Model):
    name = models.CharField(max_length=200)
    external_id = models.CharField(
        max_length=100, blank=True, null=True, unique=True, help_text="An id from another system (HR, badge number)."
    )
    notes = models.TextField(blank=True)
    is_active = models.BooleanField(default=True, help_text="Inactive people are never recognized.")
    # Required for every new enrollment (API, admin, import_faces); blank only on people enrolled
    # before it was recorded ("not recorded").
    legal_basis = models.CharField(
        max_length=40, choices=LegalBasis.choices, blank=True, help_text="The legal basis for holding this face."
    )
    consent_recorded_at = models.DateTimeField(null=True, blank=True, editable=False)
    consent_recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, editable=False, on_delete=models.SET_NULL, related_name="+"
    )
    consent_notice_version = models.CharField(
        max_length=40, blank=True, editable=False, help_text="The CONSENT_NOTICE_VERSION in force when the basis was recorded."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        verbose_name_plural = "people"
        permissions = [("export_person", "Can export all data held about a person")]

    def __str__(self) -> str:
        return self.name

    def record_legal_basis(self, basis: str, by=None) -> None:
        """Set the legal basis with who recorded it, when, and the notice version then in force (not saved)."""
        from django.utils import timezone

        self.legal_basis = basis
        self.consent_recorded_at = timezone.now()
        self.consent_recorded_by = by if by is not None and by.is_authenticated else None
        self.consent_notice_version = settings.CONSENT_NOTICE_VERSION


def face_upload_to(instance: "FaceImage", filename: str) -> str:
    # A random name: the uploader's file name may be anything (non-UTF-8, path tricks, very long).
    suffix = PurePath(filename).suffix.lower()[:6] if filename else ""
    if suffix not in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
        suffix = ".img"
    return f"faces/{uuid.uuid4().hex}{suffix}"


class FaceImageQuerySet(models.QuerySet):
    def accepted(self):
        return self.filter(status=FaceImage.Status.ACCEPTED)

    def in_gallery(self):
        """The embeddings recognition matches against: accepted faces of active people, embedded by
        the embedder served now (the active EmbedderSwitch): another embedder's embeddings are not
        comparable (nor, fused, of the same length) and wait for ``manage.py reembed_faces``."""
        from recognition.pipelines import served_embedder

        return self.enrolled().filter(embedder=served_embedder())

    def enrolled(self):
        """Accepted faces of active people with an embedding, whatever embedder made it."""
        return self.accepted().filter(person__is_active=True, embedding__isnull=False)

    def lacking_served_embedder(self):
        """Enrolled faces recognition does not match until they are re-embedded (``reembed_faces``)."""
        from recognition.pipelines import served_embedder

        return self.enrolled().exclude(embedder=served_embedder())

    def gone(self, ids) -> set[int]:
        """Which of these face ids no longer exist (deleted photos), asked 1,000 at a time."""
        ids = sorted({int(i) for i in ids})
        alive: set[int] = set()
        for start in range(0, len(ids), 1000):
            alive.update(self.filter(pk__in=ids[start : start + 1000]).values_list("pk", flat=True))
        return set(ids) - alive


class FaceChoice(models.TextChoices):
    """Who chose the person's face in a photo of several (blank: the only or the clearly largest face)."""

    STAFF = "staff", "Chosen by staff"
    CENTRAL = "central", "Central subject"


class FaceImage(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"
        REVIEW = "review", "Needs review"

    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="faces")
    image = models.ImageField(upload_to=face_upload_to, max_length=200)
    crop = models.ImageField(upload_to="crops/", blank=True, max_length=200, help_text="The aligned face, 160x160.")
    # What any embedder can be re-run on once the photo is gone (retention): the face's box widened
    # on every side, at most FACE_REGION_MAX_SIDE px, with where it sat in the photo.
    region = models.ImageField(
        upload_to="regions/",
        blank=True,
        max_length=200,
        help_text="The face with a wide margin, for re-embedding without the photo.",
    )
    region_box = models.JSONField(
        null=True, blank=True, editable=False, help_text="[x0, y0, scale]: region pixel = (photo pixel - (x0, y0)) * scale."
    )
    original_name = models.CharField(max_length=255, blank=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    reason_code = models.CharField(max_length=40, blank=True)
    reason = models.CharField(max_length=500, blank=True, help_text="Why the image was rejected or held for review.")
    # A reason may name someone other than the photo's person ("Looks more like <them>"): who, so
    # that erasing them rewrites exactly the reasons about them (privacy.services), whatever their
    # name was then and whoever else shares it. An id, not a foreign key: the photo's person is the
    # one Person FK of a photo (the admin's inline relies on it).
    reason_person_id = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        db_index=True,
        editable=False,
        help_text="Id of the other enrolled person the reason names (possible_mislabel: the one the photo looks like).",
    )
    box = models.JSONField(null=True, blank=True, help_text="[x, y, w, h] in original image pixels.")
    landmarks = models.JSONField(null=True, blank=True)
    faces_found = models.JSONField(
        null=True,
        blank=True,
        help_text="Every face detected, when there were several: [[x, y, w, h], ...] in reading order (left to right); "
        "a face_index counts in this order.",
    )
    chosen_box = models.JSONField(
        null=True,
        blank=True,
        help_text="[x, y, w, h] of the face chosen as the person's (by staff, or the central-subject rule); "
        "processing takes the detected face overlapping it most.",
    )
    face_choice = models.CharField(max_length=10, choices=FaceChoice.choices, blank=True)
    face_choice_reason = models.CharField(
        max_length=200,
        blank=True,
        help_text="In a photo of several faces, which face was taken and why (chosen by staff, the central subject "
        "with its size and distance from the centre, or the clearly largest face).",
    )
    detection_score = models.FloatField(null=True, blank=True)
    sharpness = models.FloatField(null=True, blank=True)
    embedding = models.BinaryField(
        null=True, blank=True, editable=False, help_text="float32, L2-normalised: 128 (FaceNet) or 256 (fused), per embedder."
    )
    embedder = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When processing was last queued (empty: the broker was unreachable)."
    )

    objects = FaceImageQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # (updated_at, id): the edge gallery's keyset pages (checkin/edge_gallery.py)
        indexes = [models.Index(fields=["status", "person"]), models.Index(fields=["updated_at", "id"])]

    def __str__(self) -> str:
        return f"{self.person} #{self.pk}"

    @property
    def vector(self) -> np.ndarray | None:
        if self.embedding is None:
            return None
        return np.frombuffer(bytes(self.embedding), dtype=np.float32)

    def set_vector(self, vector: np.ndarray | None) -> None:
        self.embedding = None if vector is None else np.asarray(vector, np.float32).tobytes()


class FaceEmbedding(models.Model):
    """One embedder's template of one face. A face holds one per embedder that embedded it; the
    served embedder's is also on ``FaceImage.embedding`` (what the gallery reads), copied there when
    an embedder is switched to or rolled back to (recognition/embedder_switch.py)."""

    face = models.ForeignKey(FaceImage, on_delete=models.CASCADE, related_name="embeddings")
    embedder = models.CharField(max_length=100)
    vector = models.BinaryField(help_text="float32, L2-normalised.")
    dim = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["face", "embedder"], name="one_embedding_per_face_and_embedder")]
        indexes = [models.Index(fields=["embedder", "face"])]

    def __str__(self) -> str:
        return f"face {self.face_id} by {self.embedder}"

    @classmethod
    def of(cls, face_id: int, embedder: str, vector: np.ndarray) -> "FaceEmbedding":
        vector = np.asarray(vector, np.float32)
        return cls(face_id=face_id, embedder=embedder, vector=vector.tobytes(), dim=len(vector))


class GalleryChangeQuerySet(models.QuerySet):
    def record(self, kind: str, person_ids=()) -> None:
        """Log that these people's matchable faces changed (or, with none, that many did: kind BULK).

        Call it inside the transaction that makes the change, as late in it as possible: a row
        commits with that change, and the sequence number it takes is what other processes wait
        for (see recognition.gallery)."""
        ids = sorted({int(p) for p in person_ids if p is not None})
        if ids:
            self.bulk_create([GalleryChange(kind=kind, person_id=pid) for pid in ids])
        else:
            self.create(kind=kind)


class GalleryChange(models.Model):
    """The gallery's change log: one row per enrollment change (a face accepted or removed, a person
    (de)activated or erased, a bulk import), written in the change's own transaction. Every
    process remembers the last ``seq`` it applied and, per request, reads only newer rows, then
    re-reads only the changed people. Rows are pruned after GALLERY_CHANGE_KEEP_HOURS."""

    class Kind(models.TextChoices):
        FACE = "face", "A face joined or left the gallery"
        PERSON = "person", "A person was activated or deactivated"
        ERASED = "erased", "A person was erased"
        BULK = "bulk", "Many people changed (bulk import): reload everything"
        SNAPSHOT = "snapshot", "A new gallery snapshot was written"
        EMBEDDER = "embedder", "Another embedder is served: reload everything"

    seq = models.BigAutoField(primary_key=True)
    # Not a foreign key: the row must outlive an erased person long enough for every process to
    # drop them; it holds only the number, never a name, and is pruned within hours.
    person_id = models.BigIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = GalleryChangeQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.person_id or ''}".strip()
