"""The check-in API's serializers: a check-in as listed, and what an edge kiosk uploads."""

from rest_framework import serializers

from .models import CheckIn


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
    model_version = serializers.IntegerField(required=False, allow_null=True, help_text="The version number the kiosk ran.")
    notice_version = serializers.CharField(max_length=20, help_text="The consent notice the kiosk's operator accepted.")
    consent_given_at = serializers.DateTimeField(required=False, allow_null=True)
