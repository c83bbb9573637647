"""GET /api/v1/checkins/: staff see who checked in (today by default)."""

from datetime import date, datetime, time

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers

from facesite.api import IsStaffOrReadRole
from security.permissions import TokenScope

from .errors import ApiError
from .models import CheckIn


class CheckInSerializer(serializers.ModelSerializer):
    person = serializers.SerializerMethodField()
    device = serializers.CharField(read_only=True)
    model_version = serializers.IntegerField(source="model_version.number", allow_null=True, read_only=True)

    class Meta:
        model = CheckIn
        fields = ["id", "person", "checked_in_at", "similarity", "threshold", "frames", "model_version", "embedder", "device"]

    def get_person(self, obj) -> dict | None:
        return {"id": obj.person_id, "name": obj.person.name} if obj.person_id else None


class CheckInListView(generics.ListAPIView):
    """Check-ins, newest first: today's (server time zone), a given day's (?date=YYYY-MM-DD) or all (?date=all)."""

    serializer_class = CheckInSerializer
    permission_classes = [IsStaffOrReadRole, TokenScope]
    token_scope = "checkins"  # staff API keys only: no narrower role lists check-ins
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
