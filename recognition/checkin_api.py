"""GET /api/v1/checkins/: staff see who checked in (today by default).

POST /api/v1/checkins/: an edge kiosk (kiosk API key, or staff) uploads a check-in it recorded,
possibly offline, with its own client_id: a retried upload returns the same row (200), never a second.
"""

from datetime import date, datetime, time

from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from facesite.api import ApiError, IsStaffOrReadRole
from integrations.events import checkin_created
from security.models import ApiKey
from security.permissions import TokenScope

from .edge_api import EdgeSyncKey
from .models import CheckIn, Consent


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


class CheckInListView(generics.ListCreateAPIView):
    """Check-ins, newest first: today's (server time zone), a given day's (?date=YYYY-MM-DD) or all (?date=all).
    POST: an edge kiosk's check-in, idempotent by its client_id."""

    serializer_class = CheckInSerializer
    permission_classes = [IsStaffOrReadRole, TokenScope]
    token_scope = "checkins"  # staff API keys only: no narrower role lists check-ins
    token_scope_write = "edge_sync"  # kiosk keys upload their check-ins

    def get_permissions(self):
        if self.request.method == "POST":
            return [EdgeSyncKey(), TokenScope()]
        return super().get_permissions()

    @extend_schema(request=EdgeCheckInSerializer, responses={201: CheckInSerializer, 200: CheckInSerializer})
    def post(self, request, *args, **kwargs):
        """Store an edge kiosk's check-in (201), or return the one already stored with this client_id (200)."""
        from people.models import Person
        from training.models import ModelVersion

        body = EdgeCheckInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        key = request.auth if isinstance(request.auth, ApiKey) else None
        kiosk = getattr(key, "kiosk", None) if key else None
        user = None if kiosk else request.user
        existing = self._existing(data["client_id"], kiosk, user)
        if existing is not None:
            return Response(CheckInSerializer(existing).data, status=status.HTTP_200_OK)
        if not Person.objects.filter(pk=data["person_id"]).exists():
            raise ApiError("unknown_person", "No person has this id.", fields={"person_id": ["Unknown person."]})
        version = None
        if data.get("model_version") is not None:
            version = ModelVersion.objects.filter(number=data["model_version"]).first()
        consent, _ = Consent.objects.get_or_create(
            purpose=Consent.Purpose.CHECKIN,
            kiosk=kiosk,
            user=user,
            notice_version=data["notice_version"],
            given_at=data.get("consent_given_at") or data["checked_in_at"],
            defaults={"age_confirmed": True},
        )
        try:
            with transaction.atomic():
                checkin = CheckIn.objects.create(
                    client_id=data["client_id"],
                    person_id=data["person_id"],
                    checked_in_at=data["checked_in_at"],
                    time_source="device",
                    similarity=data["similarity"],
                    threshold=data["threshold"],
                    frames=data["frames"],
                    model_version=version,
                    embedder=f"edge-tflite-v{data['model_version']}" if data.get("model_version") else "edge-tflite",
                    kiosk=kiosk,
                    user=user,
                    consent=consent,
                )
                checkin_created(checkin)  # sent after commit; a retried upload (200 above) sends nothing
        except IntegrityError:  # the same upload, racing: the other request stored it
            existing = self._existing(data["client_id"], kiosk, user)
            if existing is None:
                raise
            return Response(CheckInSerializer(existing).data, status=status.HTTP_200_OK)
        checkin = CheckIn.objects.select_related("person", "kiosk", "user", "model_version").get(pk=checkin.pk)
        return Response(CheckInSerializer(checkin).data, status=status.HTTP_201_CREATED)

    @staticmethod
    def _existing(client_id, kiosk, user) -> CheckIn | None:
        row = CheckIn.objects.select_related("person", "kiosk", "user", "model_version").filter(client_id=client_id).first()
        if row is None:
            return None
        if row.kiosk_id != (kiosk.pk if kiosk else None) or (kiosk is None and row.user_id != user.pk):
            raise ApiError("client_id_taken", "Another device already used this client_id.", status.HTTP_409_CONFLICT)
        return row

    read_permission = "recognition.view_checkin"  # an account given this in the admin may list them too

    @extend_schema(parameters=[OpenApiParameter("date", str, description="'today' (default), 'all' or YYYY-MM-DD")])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        rows = CheckIn.objects.select_related("person", "kiosk", "user", "model_version")
        wanted = self.request.query_params.get("date", "today")
        if wanted == "all":
            return rows
        if wanted == "today":
            return rows.today()
        try:
            day = date.fromisoformat(wanted)
        except ValueError:
            raise ApiError("invalid", "date must be 'today', 'all' or a day as YYYY-MM-DD.", fields={"date": ["Invalid date."]})
        start = timezone.make_aware(datetime.combine(day, time.min))
        end = timezone.make_aware(datetime.combine(day, time.max))
        return rows.filter(checked_in_at__range=(start, end))
