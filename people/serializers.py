from rest_framework import serializers

from .media import face_media_url
from .models import FaceImage, LegalBasis, Person


class PersonSerializer(serializers.ModelSerializer):
    face_count = serializers.IntegerField(read_only=True)
    accepted_face_count = serializers.IntegerField(read_only=True)
    # Required on enrollment (validate); who recorded it, when and under which notice are the server's.
    legal_basis = serializers.ChoiceField(
        choices=LegalBasis.choices, required=False, help_text="The GDPR Art. 9(2) condition for holding this face."
    )
    consent_recorded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Person
        fields = [
            "id",
            "name",
            "external_id",
            "notes",
            "is_active",
            "legal_basis",
            "consent_recorded_at",
            "consent_recorded_by",
            "consent_notice_version",
            "face_count",
            "accepted_face_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at", "consent_recorded_at", "consent_notice_version"]

    def validate_external_id(self, value):
        return value or None

    def validate(self, attrs):
        if self.instance is None and not attrs.get("legal_basis"):
            raise serializers.ValidationError({"legal_basis": ["This field is required to enroll a person."]})
        return attrs

    def _recorder(self):
        request = self.context.get("request")
        return getattr(request, "user", None)

    def create(self, validated_data):
        basis = validated_data.pop("legal_basis")
        person = Person(**validated_data)
        person.record_legal_basis(basis, by=self._recorder())
        person.save()
        return person

    def update(self, instance, validated_data):
        basis = validated_data.pop("legal_basis", None)
        if basis and basis != instance.legal_basis:
            instance.record_legal_basis(basis, by=self._recorder())
        return super().update(instance, validated_data)


class FaceImageSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()
    crop_url = serializers.SerializerMethodField()

    class Meta:
        model = FaceImage
        fields = [
            "id",
            "person",
            "status",
            "reason_code",
            "reason",
            "box",
            "landmarks",
            "detection_score",
            "sharpness",
            "embedder",
            "original_name",
            "image_url",
            "crop_url",
            "created_at",
            "processed_at",
        ]
        read_only_fields = fields

    def _url(self, face, kind: str) -> str | None:
        # The staff-only view (people/media.py), never the storage URL: there is no public /media/.
        path = face_media_url(face, kind)
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request and path else path

    def get_image_url(self, obj) -> str | None:
        return self._url(obj, "image")

    def get_crop_url(self, obj) -> str | None:
        return self._url(obj, "crop")


class FaceUploadSerializer(serializers.Serializer):
    image = serializers.FileField(allow_empty_file=True, help_text="A photo of the person alone (JPEG, PNG or WebP).")
