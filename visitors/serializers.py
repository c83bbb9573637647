from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Sighting, Visitor


class StrictCharField(serializers.CharField):
    """A string, and only a string (DRF's CharField turns numbers into text)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An integer, as a JSON number or digits in a string; never a boolean or a fraction."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or isinstance(data, float):
            self.fail("invalid")
        return super().to_internal_value(data)


class KioskRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class SightingSerializer(serializers.ModelSerializer):
    kiosk = KioskRefSerializer(read_only=True, allow_null=True)
    account = serializers.SlugRelatedField(source="user", slug_field="username", read_only=True, allow_null=True)
    consent_id = serializers.IntegerField(read_only=True)
    has_embedding = serializers.SerializerMethodField()
    has_crop = serializers.SerializerMethodField()

    class Meta:
        model = Sighting
        fields = [
            "id",
            "seen_at",
            "last_seen_at",
            "frames",
            "kiosk",
            "account",
            "consent_id",
            "similarity",
            "has_embedding",
            "has_crop",
            "embedder",
        ]

    def get_has_embedding(self, sighting) -> bool:
        return sighting.embedding is not None

    def get_has_crop(self, sighting) -> bool:
        return bool(sighting.crop)


class VisitorSerializer(serializers.ModelSerializer):
    sighting_count = serializers.SerializerMethodField()
    kiosks = serializers.SerializerMethodField()
    accounts = serializers.SerializerMethodField()
    crop_url = serializers.SerializerMethodField()

    class Meta:
        model = Visitor
        fields = ["id", "first_seen_at", "last_seen_at", "sighting_count", "kiosks", "accounts", "crop_url"]

    def _sightings(self, visitor) -> list[Sighting]:
        return list(visitor.sightings.all())  # prefetched by the view

    def get_sighting_count(self, visitor) -> int:
        return len(self._sightings(visitor))

    @extend_schema_field(KioskRefSerializer(many=True))
    def get_kiosks(self, visitor):
        kiosks = {s.kiosk.pk: s.kiosk for s in self._sightings(visitor) if s.kiosk is not None}
        return [{"id": k.pk, "name": k.name} for k in sorted(kiosks.values(), key=lambda k: k.name)]

    def get_accounts(self, visitor) -> list[str]:
        return sorted({s.user.get_username() for s in self._sightings(visitor) if s.user is not None})

    def get_crop_url(self, visitor) -> str | None:
        from django.urls import reverse

        if not any(s.crop for s in self._sightings(visitor)):
            return None
        return reverse("visitor-crop", kwargs={"pk": visitor.pk})


class VisitorDetailSerializer(VisitorSerializer):
    sightings = SightingSerializer(many=True, read_only=True)

    class Meta(VisitorSerializer.Meta):
        fields = [*VisitorSerializer.Meta.fields, "sightings"]


class EnrollSerializer(serializers.Serializer):
    name = StrictCharField(max_length=200, help_text="The new person's name.")


class AssignSerializer(serializers.Serializer):
    person_id = StrictIntegerField(min_value=1, help_text="The enrolled (active) person this visitor is.")


class PersonRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class EnrolledFaceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    reason_code = serializers.CharField()
    reason = serializers.CharField()


class EnrolledSerializer(serializers.Serializer):
    person = PersonRefSerializer()
    faces = EnrolledFaceSerializer(many=True)
    accepted = serializers.IntegerField(help_text="Faces accepted into the gallery; the others wait for staff review.")
