"""The corrections API, staff only (a staff account, with its session, token or a staff-role key):

POST /api/v1/checkins/{id}/reject/: "not this person". The check-in is deleted and the wrong pair
recorded (checkin.corrections). Rejecting a check-in again answers 404, as for any unknown id:
the row is gone. An anonymised check-in (its person erased) answers 409.

GET /api/v1/people/{id}/outliers/: the person's gallery faces that may not be theirs, with the
evidence, and their rejected matches (computed in the request: one person's faces).

GET /api/v1/outliers/: the outlier faces of the whole gallery as the newest finished site-wide scan
found them, paginated, with the scan's time and age and the scan running now, if any. POST
/api/v1/outliers/: ask for a new scan (202), run by a background task (checkin.outlier_scan); 409
while one is running. No request scans the whole gallery.
"""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from facesite.api import ApiError
from people.models import Person
from security.permissions import TokenScope
from security.throttling import scoped_throttle

from . import corrections, outlier_scan
from .serializers import (
    FaceReviewSerializer,
    OutlierScanSerializer,
    PersonReviewSerializer,
    RejectionSerializer,
    SiteReviewSerializer,
)

_STATUS = {"not_found": status.HTTP_404_NOT_FOUND, "no_person": status.HTTP_409_CONFLICT}


class StaffOnly:
    # IsAdminUser: user.is_staff (inactive accounts cannot authenticate). TokenScope: no narrower
    # key role holds "corrections", so only a staff-role key of a staff account gets through.
    permission_classes = [IsAdminUser, TokenScope]
    token_scope = "corrections"


class RejectCheckInView(StaffOnly, APIView):
    @extend_schema(request=None, responses={200: RejectionSerializer})
    def post(self, request, pk: int):
        """Mark a check-in as "not this person": it is deleted and kept as a rejected match."""
        try:
            rejection = corrections.reject_checkin(pk, by=request.user)
        except corrections.NotRejectable as err:
            raise ApiError(err.code, err.message, _STATUS[err.code])
        return Response(RejectionSerializer(rejection).data)


class PersonOutliersView(StaffOnly, APIView):
    @extend_schema(responses={200: PersonReviewSerializer})
    def get(self, request, pk: int):
        """The person's outlier faces with the evidence, and the check-ins rejected as not them."""
        person = get_object_or_404(Person, pk=pk)
        return Response(PersonReviewSerializer(corrections.review(person), context={"person": person}).data)


class OutliersView(StaffOnly, APIView):
    def get_throttles(self):
        if self.request.method == "POST":  # a scan queued: its own rate, besides the role's
            return [*super().get_throttles(), scoped_throttle("outliers")()]
        return super().get_throttles()

    @extend_schema(responses={200: SiteReviewSerializer})
    def get(self, request):
        """The outlier faces the newest finished site-wide scan found, most doubtful first, a page at
        a time; with that scan (when, how many faces, its age) and the one running, if any."""
        scan = outlier_scan.latest()
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(outlier_scan.flagged_faces(scan), request, view=self)
        results = FaceReviewSerializer(corrections.site_review(page), many=True).data
        paged = paginator.get_paginated_response(results).data
        running = outlier_scan.running()
        return Response(
            {
                "scan": None if scan is None else OutlierScanSerializer(scan).data,
                "running": None if running is None else OutlierScanSerializer(running).data,
                **paged,
            }
        )

    @extend_schema(request=None, responses={202: OutlierScanSerializer})
    def post(self, request):
        """Ask for a new site-wide scan, run by a background task; 409 while one is running."""
        try:
            scan = outlier_scan.request_scan(by=request.user)
        except outlier_scan.ScanRunning as err:
            running = None if err.scan is None else OutlierScanSerializer(err.scan).data
            raise ApiError(
                "scan_running", f"An outlier scan is already running (requested at {running and running['requested_at']}).", 409
            )
        return Response(OutlierScanSerializer(scan).data, status=status.HTTP_202_ACCEPTED)
