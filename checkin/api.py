"""GET /api/v1/checkins/: staff see who checked in (today by default).

POST /api/v1/checkins/: an edge kiosk (kiosk API key, or staff) uploads a check-in it recorded,
possibly offline, with its own client_id: a retried upload returns the same row (200), never a second.
"""

from datetime import date, datetime, time

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from facesite.api import ApiError, EdgeSyncKey, IsStaffOrReadRole
from security.models import ApiKey
from security.permissions import TokenScope

from . import services
from .models import CheckIn
from .serializers import CheckInSerializer, EdgeCheckInSerializer


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
        body = EdgeCheckInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = request.auth if isinstance(request.auth, ApiKey) else None
        kiosk = getattr(key, "kiosk", None) if key else None
        checkin, created = services.record_edge_checkin(body.validated_data, kiosk, None if kiosk else request.user)
        return Response(CheckInSerializer(checkin).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    read_permission = "checkin.view_checkin"  # an account given this in the admin may list them too

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
