"""The corrections API, staff only (a staff account, with its session, token or a staff-role key):

POST /api/v1/checkins/{id}/reject/: "not this person". The check-in is deleted and the wrong pair
recorded (checkin.corrections). Rejecting a check-in again answers 404, as for any unknown id:
the row is gone. An anonymised check-in (its person erased) answers 409.

GET /api/v1/people/{id}/outliers/: the person's gallery faces that may not be theirs, with the
evidence, and their rejected matches. GET /api/v1/outliers/: every outlier face in the gallery.
"""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from facesite.api import ApiError
from people.models import Person
from security.permissions import TokenScope
from security.throttling import ScopedTokenThrottle

from . import corrections
from .serializers import FaceReviewSerializer, PersonReviewSerializer, RejectionSerializer

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
    throttle_classes = [*APIView.throttle_classes, ScopedTokenThrottle]
    throttle_scope = "outliers"  # every gallery face searched against the gallery, in the request

    @extend_schema(responses={200: FaceReviewSerializer(many=True)})
    def get(self, request):
        """Every outlier face in the gallery, most doubtful first."""
        return Response(FaceReviewSerializer(corrections.site_review(), many=True).data)
