"""GET /api/v1/people/<id>/export/ and /api/v1/visitors/<id>/export/: a person's or an unknown
visitor's data as a zip (staff only)."""

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.views import APIView

from facesite.api import StaffHoldsPermission
from people.models import Person
from security.permissions import TokenScope
from security.throttling import ScopedTokenThrottle
from visitors.models import Visitor

from . import services


def zip_response(person: Person) -> HttpResponse:
    response = HttpResponse(services.export_person(person), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="person-{person.pk}.zip"'
    return response


class PersonExportView(APIView):
    """Everything held about one person: details, photos, crops, embeddings and when they were recognized."""

    permission_classes = [IsAdminUser, StaffHoldsPermission, TokenScope]
    staff_permissions = {"GET": "people.export_person"}  # as the admin's export action
    token_scope = "export"
    throttle_classes = [*APIView.throttle_classes, ScopedTokenThrottle]
    throttle_scope = "export"  # a whole record zipped in memory

    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(description="person.json, photos/, crops/")})
    def get(self, request, pk: int):
        return zip_response(get_object_or_404(Person, pk=pk))


class VisitorExportView(APIView):
    """Everything held about one unknown visitor: sightings, their embeddings, and the crop if kept."""

    permission_classes = [IsAdminUser, StaffHoldsPermission, TokenScope]
    staff_permissions = {"GET": "visitors.view_visitor"}
    token_scope = "export"
    throttle_classes = [*APIView.throttle_classes, ScopedTokenThrottle]
    throttle_scope = "export"

    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(description="visitor.json, crops/")})
    def get(self, request, pk: int):
        visitor = get_object_or_404(Visitor, pk=pk)
        response = HttpResponse(services.export_visitor(visitor), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="visitor-{visitor.pk}.zip"'
        return response
