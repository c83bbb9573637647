import json
import math
from contextlib import contextmanager

from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema_field
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
        with self._external_id_race(validated_data, None):
            person.save()
        return person

    def update(self, instance, validated_data):
        basis = validated_data.pop("legal_basis", None)
        if basis and basis != instance.legal_basis:
            instance.record_legal_basis(basis, by=self._recorder())
        with self._external_id_race(validated_data, instance):
            return super().update(instance, validated_data)

    @contextmanager
    def _external_id_race(self, validated_data, instance):
        """The unique check above ran before the write: a request storing the same external_id in
        between (an HR sync retrying, two staff typing one badge number) makes the write fail. That
        is the same answer as the check's, a 400 on external_id, not a 500."""
        try:
            with transaction.atomic():
                yield
        except IntegrityError:
            wanted = validated_data.get("external_id")
            taken = Person.objects.filter(external_id=wanted).exclude(pk=getattr(instance, "pk", None))
            if wanted is None or not taken.exists():
                raise
            raise serializers.ValidationError({"external_id": ["person with this external id already exists."]}) from None


class FaceFoundSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The face_index that chooses this face (0 is the leftmost).")
    box = serializers.ListField(child=serializers.IntegerField(), help_text="[x, y, w, h] in the photo's pixels.")


class FaceImageSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()
    crop_url = serializers.SerializerMethodField()
    faces = serializers.SerializerMethodField(
        help_text="Every face found when there were several (e.g. reason several_faces), numbered left to right: "
        "upload again with face_index or box to choose one."
    )

    class Meta:
        model = FaceImage
        fields = [
            "id",
            "person",
            "status",
            "reason_code",
            "reason",
            "box",
            "faces",
            "chosen_box",
            "face_choice",
            "face_choice_reason",
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

    @extend_schema_field(FaceFoundSerializer(many=True, allow_null=True))
    def get_faces(self, obj) -> list[dict] | None:
        if not obj.faces_found:
            return None
        return [{"index": i, "box": box} for i, box in enumerate(obj.faces_found)]

    def get_image_url(self, obj) -> str | None:
        return self._url(obj, "image")

    def get_crop_url(self, obj) -> str | None:
        return self._url(obj, "crop")


@extend_schema_field({"type": "string", "example": "258,79,89,120"})
class BoxField(serializers.Field):
    """[x, y, w, h] in the photo's pixels, sent as "x,y,w,h" or a JSON list (multipart forms hold strings)."""

    default_error_messages = {
        "invalid": 'Give the box as four numbers x, y, w, h in the photo\'s pixels ("120,40,80,96" or "[120, 40, 80, 96]").',
        "empty": "The box must have a positive width and height, and x and y must not be negative.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            text = data.strip()
            try:
                data = json.loads(text) if text.startswith("[") else [float(part) for part in text.split(",")]
            except (ValueError, RecursionError):
                self.fail("invalid")
        if not isinstance(data, (list, tuple)) or len(data) != 4:
            self.fail("invalid")
        try:
            box = [float(v) for v in data]
        except (TypeError, ValueError):
            self.fail("invalid")
        if any(isinstance(v, bool) for v in data) or not all(math.isfinite(v) for v in box):
            self.fail("invalid")
        if box[0] < 0 or box[1] < 0 or box[2] <= 0 or box[3] <= 0:
            self.fail("empty")
        return box

    def to_representation(self, value):
        return value


class FaceUploadSerializer(serializers.Serializer):
    image = serializers.FileField(
        allow_empty_file=True,
        help_text="A photo of the person alone (JPEG, PNG or WebP), or of several people with face_index or box.",
    )
    face_index = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=10_000,
        help_text="Which face of a photo of several is the person: its index among the faces found, numbered left to "
        "right by the centre of their boxes (0 is the leftmost), as listed in a several_faces answer's faces.",
    )
    box = BoxField(
        required=False,
        help_text="Or: where the person's face is, [x, y, w, h] in the photo's pixels; the face found that overlaps "
        "it most is taken (none overlapping: 400 no_face_at_box).",
    )
