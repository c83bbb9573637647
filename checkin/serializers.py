"""The check-in API's serializers: a check-in as listed, and what an edge kiosk uploads."""

from django.utils import timezone
from rest_framework import serializers

from .models import CheckIn, RejectedMatch


class CheckInSerializer(serializers.ModelSerializer):
    person = serializers.SerializerMethodField()
    device = serializers.CharField(read_only=True)
    model_version = serializers.IntegerField(source="model_version.number", allow_null=True, read_only=True)

    class Meta:
        model = CheckIn
        fields = [
            "id",
            "person",
            "checked_in_at",
            "similarity",
            "threshold",
            "frames",
            "model_version",
            "embedder",
            "device",
            "client_id",
            "time_source",
        ]

    def get_person(self, obj) -> dict | None:
        return {"id": obj.person_id, "name": obj.person.name} if obj.person_id else None


class EdgeCheckInSerializer(serializers.Serializer):
    """What an edge kiosk uploads: one check-in it made by the server's multi-frame rule."""

    client_id = serializers.UUIDField()
    person_id = serializers.IntegerField(min_value=1)
    checked_in_at = serializers.DateTimeField(help_text="The device's clock, ISO 8601 with its offset.")
    similarity = serializers.FloatField(min_value=-1.0, max_value=1.0)
    threshold = serializers.FloatField(min_value=-1.0, max_value=1.0)
    frames = serializers.IntegerField(min_value=1, max_value=32767)
    model_version = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=2**31 - 1, help_text="The version number the kiosk ran."
    )
    notice_version = serializers.CharField(
        max_length=40,
        help_text="The consent notice the kiosk's operator accepted: the one in force when the check-in was made "
        "(else 409 stale_notice).",
    )
    consent_given_at = serializers.DateTimeField(required=False, allow_null=True)
    consent_method = serializers.ChoiceField(
        choices=["interactive", "operator_flag"],
        required=False,
        allow_null=True,
        help_text="How the device obtained consent: the notice shown and answered on it (interactive), or the "
        "operator's --consent flag. Not sent: stored as unrecorded.",
    )
    age_confirmed = serializers.BooleanField(
        required=False, default=False, help_text="Whether the device asked and the minimum age was confirmed."
    )


# ---- corrections and the outlier review (checkin/corrections.py) ----------------------------------


class RejectedMatchSerializer(serializers.ModelSerializer):
    """A check-in staff rejected as "not this person"; ``faces``: the gallery faces it was made on."""

    person = serializers.SerializerMethodField()
    kiosk = serializers.CharField(source="kiosk.name", allow_null=True, read_only=True, default=None)
    rejected_by = serializers.CharField(source="rejected_by.get_username", allow_null=True, read_only=True, default=None)
    faces = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = RejectedMatch
        fields = [
            "id",
            "person",
            "checkin_id",
            "checked_in_at",
            "similarity",
            "threshold",
            "embedder",
            "kiosk",
            "device",
            "faces",
            "rejected_at",
            "rejected_by",
        ]

    def get_person(self, obj) -> dict:
        return {"id": obj.person_id, "name": obj.person.name}


class FaceEvidenceSerializer(serializers.Serializer):
    """One gallery face against the rest of the gallery (cosine similarities)."""

    face_id = serializers.IntegerField()
    person_id = serializers.IntegerField()
    own_faces = serializers.IntegerField(help_text="The person's other gallery faces it was compared with.")
    own_best = serializers.FloatField(allow_null=True, help_text="Best similarity to them (leave-one-out).")
    own_mean = serializers.FloatField(allow_null=True)
    nearest_other_id = serializers.IntegerField(allow_null=True, help_text="The most similar other person.")
    nearest_other_name = serializers.CharField(allow_null=True)
    nearest_other_similarity = serializers.FloatField(allow_null=True)
    far_from_own = serializers.BooleanField(help_text="own_best is below the bound.")
    closer_to_other = serializers.BooleanField(help_text="Another person's nearest face is more similar than own_best.")
    outlier = serializers.BooleanField()
    reasons = serializers.ListField(child=serializers.CharField())


class FaceReviewSerializer(serializers.Serializer):
    """An outlier face with its evidence and the rejected matches made on it."""

    evidence = FaceEvidenceSerializer()
    rejections = RejectedMatchSerializer(many=True)


class RejectionSerializer(serializers.Serializer):
    """What a rejection did: the negative recorded, and which faces behind it are outliers."""

    rejected = RejectedMatchSerializer(source="match")
    flagged_faces = FaceEvidenceSerializer(source="flagged", many=True)


class PersonReviewSerializer(serializers.Serializer):
    person = serializers.SerializerMethodField()
    bound = serializers.FloatField(help_text="A face whose own_best is below this is far from its person.")
    outliers = FaceReviewSerializer(source="faces", many=True)
    rejections = RejectedMatchSerializer(many=True)

    def get_person(self, obj) -> dict:
        return {"id": self.context["person"].pk, "name": self.context["person"].name}


class OutlierScanSerializer(serializers.Serializer):
    """A site-wide outlier scan (checkin.outlier_scan): run by a background task, at most one at a time."""

    id = serializers.IntegerField()
    status = serializers.CharField(help_text="running (queued or computing), finished or failed.")
    requested_at = serializers.DateTimeField()
    requested_by = serializers.CharField(source="requested_by.get_username", allow_null=True, default=None)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    age_seconds = serializers.SerializerMethodField(help_text="Seconds since it finished (null while running).")
    gallery_faces = serializers.IntegerField(allow_null=True, help_text="How many gallery faces it judged.")
    bound = serializers.FloatField(allow_null=True)
    flagged = serializers.IntegerField(allow_null=True, help_text="How many outlier faces it stored.")
    error = serializers.CharField()

    def get_age_seconds(self, obj) -> int | None:
        return None if obj.finished_at is None else int((timezone.now() - obj.finished_at).total_seconds())


class SiteReviewSerializer(serializers.Serializer):
    """A page of the newest finished scan's outlier faces, with that scan and the one running."""

    scan = OutlierScanSerializer(allow_null=True, help_text="The newest finished scan; null before the first.")
    running = OutlierScanSerializer(allow_null=True, help_text="The scan running now, if any.")
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = FaceReviewSerializer(many=True)
