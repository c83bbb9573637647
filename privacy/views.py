"""GET /api/v1/people/<id>/export/: a person's data as a zip (staff only)."""

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.views import APIView

from people.models import Person
from security.permissions import TokenScope

from . import services


def zip_response(person: Person) -> HttpResponse:
    response = HttpResponse(services.export_person(person), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="person-{person.pk}.zip"'
    return response


class PersonExportView(APIView):
    """Everything held about one person: details, photos, crops, embeddings and when they were recognized."""

    permission_classes = [IsAdminUser, TokenScope]
    token_scope = "export"

    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(description="person.json, photos/, crops/")})
    def get(self, request, pk: int):
        return zip_response(get_object_or_404(Person, pk=pk))
