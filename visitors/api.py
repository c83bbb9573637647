"""/api/v1/visitors/: staff list, inspect, enroll, assign and discard unknown visitors.

Staff users (session or token) and staff-role API keys only: a visitor is biometric data about
someone who is not enrolled, so no read role sees it."""

from __future__ import annotations

from django.db.models import Prefetch
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from facesite.api import ApiError, is_staff
from people.models import Person
from security.permissions import TokenScope

from . import services
from .models import Sighting, Visitor
from .serializers import AssignSerializer, EnrolledSerializer, EnrollSerializer, VisitorDetailSerializer, VisitorSerializer

TOKEN_SCOPE = "visitors"  # no narrower role than staff has it


class IsStaff(BasePermission):
    message = "Only staff may see or act on unknown visitors."

    def has_permission(self, request, view):
        return is_staff(request)


def enrolled_body(result: services.Enrolled) -> dict:
    return {
        "person": {"id": result.person.pk, "name": result.person.name},
        "faces": [{"id": f.pk, "status": f.status, "reason_code": f.reason_code, "reason": f.reason} for f in result.faces],
        "accepted": result.accepted,
    }


def api_error(err: services.Refused) -> ApiError:
    return ApiError(err.code, err.message, err.status, fields={err.field: [err.message]} if err.field else None)


class VisitorViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Unknown visitors, last seen first. DELETE discards one (its sightings, embeddings and crop)."""

    permission_classes = [IsStaff, TokenScope]
    token_scope = TOKEN_SCOPE
    parser_classes = [JSONParser, FormParser]

    def get_queryset(self):
        sightings = Sighting.objects.select_related("kiosk", "user").order_by("-seen_at", "-id")
        return Visitor.objects.prefetch_related(Prefetch("sightings", queryset=sightings)).order_by("-last_seen_at", "-id")

    def get_serializer_class(self):
        return VisitorDetailSerializer if self.action == "retrieve" else VisitorSerializer

    def perform_destroy(self, instance):
        services.discard(instance)

    @extend_schema(request=EnrollSerializer, responses={201: EnrolledSerializer})
    @action(detail=True, methods=["post"])
    def enroll(self, request, pk=None):
        """Enroll this visitor as a new person ``{"name"}``: their embeddings become the person's faces."""
        visitor = self.get_object()
        body = EnrollSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            result = services.enroll_new_person(visitor, body.validated_data["name"], by=request.user)
        except services.Refused as err:
            raise api_error(err)
        return Response(enrolled_body(result), status=status.HTTP_201_CREATED)

    @extend_schema(request=AssignSerializer, responses={200: EnrolledSerializer})
    @action(detail=True, methods=["post"])
    def assign(self, request, pk=None):
        """This visitor is an enrolled person ``{"person_id"}``: their embeddings join that person's
        faces, each accepted or held for review as an uploaded photo would be."""
        visitor = self.get_object()
        body = AssignSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        person = Person.objects.filter(pk=body.validated_data["person_id"]).first()
        if person is None:
            message = f"No person with id {body.validated_data['person_id']}."
            raise ApiError("unknown_person", message, fields={"person_id": [message]})
        try:
            result = services.assign_to_person(visitor, person, by=request.user)
        except services.Refused as err:
            raise api_error(err)
        return Response(enrolled_body(result))


class VisitorCropView(APIView):
    """GET the visitor's small face crop (kept only with VISITOR_KEEP_CROP): staff only."""

    permission_classes = [IsStaff, TokenScope]
    token_scope = TOKEN_SCOPE

    @extend_schema(responses={(200, "image/jpeg"): bytes})
    def get(self, request, pk: int):
        visitor = get_object_or_404(Visitor, pk=pk)
        sighting = visitor.crop_sighting
        if sighting is None:
            raise Http404("This visitor has no face crop.")
        try:
            handle = sighting.crop.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise Http404("The crop file is missing from storage.")
        response = FileResponse(handle, content_type="image/jpeg")
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response
