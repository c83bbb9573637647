"""GET /api/v1/checkins/: staff see who checked in (today by default).

POST /api/v1/checkins/: an edge kiosk (kiosk API key, or staff) uploads a check-in it recorded,
possibly offline, with its own client_id: a retried upload returns the same row (200), never a second,
and so does a second check-in of the person from that device within the repeat window.

GET /api/v1/reports/attendance/: staff see who came on which days, and who did not (JSON or CSV).
"""

from datetime import date

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from facesite.api import ApiError, EdgeSyncKey, IsStaffOrReadRole
from security.models import ApiKey
from security.permissions import TokenScope
from security.throttling import ScopedTokenThrottle, TokenRateThrottle

from . import reports, services
from .models import CheckIn
from .serializers import CheckInSerializer, EdgeCheckInSerializer


class EdgeCheckInRateThrottle(TokenRateThrottle):
    """Check-in uploads per kiosk (else per user): THROTTLE_EDGE_CHECKIN, besides the role's own rate.
    Each stored check-in fans out into webhook and MQTT tasks, so uploads get a rate of their own."""

    def _role(self, request) -> str:
        return "edge_checkin"


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

    def get_throttles(self):
        if self.request.method == "POST":
            return [*super().get_throttles(), EdgeCheckInRateThrottle()]
        return super().get_throttles()

    @extend_schema(request=EdgeCheckInSerializer, responses={201: CheckInSerializer, 200: CheckInSerializer})
    def post(self, request, *args, **kwargs):
        """Store an edge kiosk's check-in (201), or return the one already stored with this client_id,
        or this device's check-in of the person within the repeat window (200)."""
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
        try:
            start, end = reports.local_day_bounds(day, day)
        except reports.DayOutOfRange:
            raise ApiError("invalid", "date must be a day this site can store.", fields={"date": ["Out of range."]})
        return rows.filter(checked_in_at__gte=start, checked_in_at__lt=end)


class AttendanceReportView(APIView):
    """GET /api/v1/reports/attendance/?from=YYYY-MM-DD&to=YYYY-MM-DD[&format=csv][&external_id_prefix=...]:
    per person and local day, first and last check-in, count and kiosks; the active people not seen."""

    permission_classes = [IsStaffOrReadRole, TokenScope]
    token_scope = "checkins"  # staff API keys only, as for the check-ins list
    throttle_classes = [*APIView.throttle_classes, ScopedTokenThrottle]
    throttle_scope = "report"  # up to REPORT_MAX_ROWS person-days built in the request
    # No read_permission: the absent list names the whole active roster, which checkin.view_checkin
    # alone does not grant.
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request, force=False):
        # ?format=csv is this view's own download, not a DRF renderer's: negotiate as if it were
        # absent (DRF would answer 404), so that errors are JSON in the one error shape.
        return JSONRenderer(), JSONRenderer.media_type

    @extend_schema(
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, description="First day (site time zone), default today"),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last day, included; default today"),
            OpenApiParameter("format", str, enum=["json", "csv"], description="csv: a spreadsheet download"),
            OpenApiParameter("external_id_prefix", str, description="Only people whose external_id starts with this"),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request):
        params = request.query_params
        first_day, last_day = _report_range(params.get("from"), params.get("to"))
        wanted = params.get("format", "json")
        if wanted not in ("json", "csv"):
            raise ApiError("invalid", "format must be 'json' or 'csv'.", fields={"format": ["Unknown format."]})
        prefix = params.get("external_id_prefix", "")
        rows = ((last_day - first_day).days + 1) * reports.expected_people(prefix).count()
        if rows > settings.REPORT_MAX_ROWS:
            raise ApiError(
                "report_too_large",
                f"This report would have {rows:,} person-days, more than REPORT_MAX_ROWS "
                f"({settings.REPORT_MAX_ROWS:,}): ask for fewer days, or narrow it with external_id_prefix.",
                fields={"to": ["Too many person-days."]},
            )
        days = reports.attendance(first_day, last_day, prefix)
        if wanted == "csv":
            # The BOM makes spreadsheets read the file as UTF-8 (accented names).
            response = HttpResponse("\ufeff" + reports.attendance_csv(days), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="attendance-{first_day}-{last_day}.csv"'
        else:
            response = Response(
                {
                    "from": first_day,
                    "to": last_day,
                    "time_zone": timezone.get_current_timezone_name(),
                    "external_id_prefix": prefix,
                    "days": [_day_json(day) for day in days],
                }
            )
        response["Cache-Control"] = "private, no-store"
        return response


def _report_range(first: str | None, last: str | None) -> tuple[date, date]:
    if first is None and last is None:
        today = timezone.localdate()
        return today, today
    days = {}
    for name, value in (("from", first), ("to", last)):
        if value is None:
            raise ApiError(
                "invalid", "from and to go together (or both left out, for today).", fields={name: ["Required with the other."]}
            )
        try:
            days[name] = date.fromisoformat(value)
        except ValueError:
            raise ApiError("invalid", f"{name} must be a day as YYYY-MM-DD.", fields={name: ["Invalid date."]})
    if days["to"] < days["from"]:
        raise ApiError("invalid", "to is before from.", fields={"to": ["Before from."]})
    try:
        reports.local_day_bounds(days["from"], days["to"])
    except reports.DayOutOfRange:
        raise ApiError("invalid", "from and to must be days this site can store.", fields={"to": ["Out of range."]})
    longest = settings.REPORT_MAX_DAYS
    if (days["to"] - days["from"]).days + 1 > longest:
        raise ApiError(
            "invalid", f"A report covers at most {longest} days.", fields={"to": [f"More than {longest} days after from."]}
        )
    return days["from"], days["to"]


def _day_json(day: reports.Day) -> dict:
    return {
        "date": day.date,
        "present": [
            {
                "person_id": entry.person_id,
                "name": entry.name,
                "external_id": entry.external_id,
                "date": entry.date,
                "first_check_in": entry.first_check_in.isoformat(timespec="seconds"),
                "last_check_in": entry.last_check_in.isoformat(timespec="seconds"),
                "check_ins": entry.check_ins,
                "kiosks": entry.kiosks,
            }
            for entry in day.present
        ],
        "absent": [{"person_id": entry.person_id, "name": entry.name, "external_id": entry.external_id} for entry in day.absent],
        "anonymous_check_ins": day.anonymous_check_ins,
    }
