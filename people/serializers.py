from rest_framework import serializers

from .media import face_media_url
from .models import FaceImage, Person


class PersonSerializer(serializers.ModelSerializer):
    face_count = serializers.IntegerField(read_only=True)
    accepted_face_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Person
        fields = [
            "id",
            "name",
            "external_id",
            "notes",
            "is_active",
            "face_count",
            "accepted_face_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate_external_id(self, value):
        return value or None


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
