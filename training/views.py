"""/api/v1/models/: training history, triggers, activation (rollback) and edge downloads.

Reading needs staff or an explicit read role (facesite.api.IsStaffOrReadRole); training and
activating need staff; the edge files need CanDownloadModel. Model files are served only here:
there is no public /media/ route."""

from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from facesite.api import ApiError, EdgeSyncKey, IsStaffOrReadRole
from security.permissions import TokenScope

from . import services
from .models import ModelVersion
from .permissions import CanDownloadModel
from .serializers import ModelVersionSerializer, TrainRequestSerializer, TrainResponseSerializer


def edge_file(url_path: str):
    """A version's file an edge client downloads: staff, the download permission, or a kiosk key."""
    return action(
        detail=True,
        methods=["get"],
        permission_classes=[CanDownloadModel | EdgeSyncKey],
        token_scope_read="edge_sync",  # kiosk keys sync the model (edge/); staff keys hold every scope
        url_path=url_path,
    )


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = ModelVersion.objects.select_related("requested_by")
    serializer_class = ModelVersionSerializer
    permission_classes = [IsStaffOrReadRole, TokenScope]
    token_scope_read, token_scope_write = "read", "train"  # "train": staff-role keys only
    # An edge device's account (the download permission) reads /models/active/ to find its files.
    read_permission = ("training.view_modelversion", "training.download_modelversion")
    lookup_value_regex = r"\d+"

    @extend_schema(request=TrainRequestSerializer, responses={202: TrainResponseSerializer, 200: TrainResponseSerializer})
    @action(detail=False, methods=["post"])
    def train(self, request):
        """Queue a training run (or join the queued one). 202 when a run was queued, 200 when joined."""
        body = TrainRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version, created = services.request_training(
            ModelVersion.Trigger.API, user=request.user, force_activate=body.validated_data["force_activate"]
        )
        data = {"created": created, "version": ModelVersionSerializer(version, context={"request": request}).data}
        return Response(data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)

    @action(detail=False, methods=["get"])
    def active(self, request):
        """The version recognition uses now."""
        version = ModelVersion.objects.active()
        if version is None:
            raise ApiError("no_active_version", "No model version is active yet; train one first.", status.HTTP_404_NOT_FOUND)
        return Response(self.get_serializer(version).data)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        """Make this finished version the active one (e.g. roll back); recognition uses it at once."""
        version = self.get_object()
        try:
            services.activate(version)
        except ValueError as err:
            raise ApiError("not_finished", str(err), status.HTTP_409_CONFLICT)
        except ModelVersion.DoesNotExist as err:  # deleted by retention while this request ran
            raise ApiError("not_found", str(err), status.HTTP_404_NOT_FOUND)
        return Response(self.get_serializer(version).data)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @edge_file("tflite")
    def tflite(self, request, pk=None):
        """The embedder for edge clients (.tflite): aligned RGB crops in, L2-normalised embeddings out."""
        version = self.get_object()
        return _download(version.tflite, f"facesite-v{version.number}.tflite", version.tflite_sha256, "application/octet-stream")

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @edge_file("dlib-tflite")
    def dlib_tflite(self, request, pk=None):
        """A fused site's second edge model (.tflite): dlib's network, 150x150 uint8 RGB chips in, raw
        128-d descriptors out (the label map's "template" says how they are fused with FaceNet's)."""
        version = self.get_object()
        return _download(
            version.dlib_tflite, f"facesite-v{version.number}-dlib.tflite", version.dlib_tflite_sha256, "application/octet-stream"
        )

    @extend_schema(responses={(200, "application/json"): dict})
    @edge_file("labels")
    def labels(self, request, pk=None):
        """The label map: people, threshold, recognizer and the reference embeddings."""
        version = self.get_object()
        return _download(version.labels, f"facesite-v{version.number}-labels.json", version.labels_sha256, "application/json")

    @extend_schema(responses={(200, "image/png"): bytes})
    @action(detail=True, methods=["get"], url_path="plots/(?P<which>confusion|roc)")
    def plot(self, request, pk=None, which=None):
        """The evaluation plot of this version (PNG): `confusion` matrix or `roc` curve."""
        version = self.get_object()
        field = version.confusion_plot if which == "confusion" else version.roc_plot
        handle = _open(field, "This version has no such plot.", "The plot of this version is missing from storage.")
        response = FileResponse(handle, content_type="image/png")
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response


def _open(field, absent: str, missing: str):
    """A version's artifact opened for reading; 404 no_artifact if it has none (``absent``) or its
    file is gone from storage (``missing``)."""
    if not field:
        raise ApiError("no_artifact", absent, status.HTTP_404_NOT_FOUND)
    try:
        return field.open("rb")
    except FileNotFoundError:
        raise ApiError("no_artifact", missing, status.HTTP_404_NOT_FOUND)


def _download(field, filename: str, sha256: str, content_type: str) -> FileResponse:
    handle = _open(
        field,
        "This version has no such file (not finished, or export was off).",
        "The file of this version is missing from storage.",
    )
    response = FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)
    response["X-Content-SHA256"] = sha256
    return response
