from django.urls import reverse
from rest_framework import serializers

from .models import ModelVersion


class ModelVersionSerializer(serializers.ModelSerializer):
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    tflite_url = serializers.SerializerMethodField()
    dlib_tflite_url = serializers.SerializerMethodField()
    labels_url = serializers.SerializerMethodField()
    confusion_plot_url = serializers.SerializerMethodField()
    roc_plot_url = serializers.SerializerMethodField()
    # the API's key keeps its earlier spelling
    recogniser = serializers.ChoiceField(source="recognizer", choices=ModelVersion.Recognizer.choices, read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "number",
            "status",
            "stage",
            "progress",
            "trigger",
            "requested_by",
            "force_activate",
            "people_count",
            "image_count",
            "embedder",
            "recogniser",
            "threshold",
            "head_threshold",
            "head_sha256",
            "metrics",
            "comparison",
            "activation_note",
            "timings",
            "created_at",
            "started_at",
            "finished_at",
            "activated_at",
            "error",
            "log",
            "tflite_sha256",
            "labels_sha256",
            "tflite_url",
            "dlib_tflite_sha256",
            "dlib_tflite_url",
            "labels_url",
            "confusion_plot_url",
            "roc_plot_url",
        ]
        read_only_fields = fields

    def _url(self, obj, name: str, has: bool, *args) -> str | None:
        if not has:
            return None
        request = self.context.get("request")
        path = reverse(name, args=[obj.pk, *args])
        return request.build_absolute_uri(path) if request else path

    def get_tflite_url(self, obj) -> str | None:
        return self._url(obj, "model-tflite", bool(obj.tflite))

    def get_dlib_tflite_url(self, obj) -> str | None:
        return self._url(obj, "model-dlib-tflite", bool(obj.dlib_tflite))

    def get_labels_url(self, obj) -> str | None:
        return self._url(obj, "model-labels", bool(obj.labels))

    def get_confusion_plot_url(self, obj) -> str | None:
        return self._url(obj, "model-plot", bool(obj.confusion_plot), "confusion")

    def get_roc_plot_url(self, obj) -> str | None:
        return self._url(obj, "model-plot", bool(obj.roc_plot), "roc")


class TrainRequestSerializer(serializers.Serializer):
    force_activate = serializers.BooleanField(
        default=False, help_text="Activate even if it evaluates worse than the active version."
    )


class TrainResponseSerializer(serializers.Serializer):
    created = serializers.BooleanField(help_text="False when an already queued run was joined.")
    version = ModelVersionSerializer()
