"""GET /api/v1/people/<id>/export/ and /api/v1/visitors/<id>/export/: a person's or an unknown
visitor's data as a zip (staff only)."""

import tempfile
from collections.abc import Callable
from typing import BinaryIO

from django.conf import settings
from django.http import FileResponse
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


def archive_response(write: Callable[[BinaryIO], None], filename: str) -> FileResponse:
    """``write`` the archive into a temporary file and stream it as ``filename``.

    Up to EXPORT_SPOOL_MAX_BYTES stay in memory, the rest goes to an anonymous file in
    EXPORT_TEMP_DIR (tempfile.TemporaryFile: it has no name on disk, so nothing is left behind even
    if the process dies). The file is closed, and so gone, when the response is closed, or at once
    if writing it fails."""
    spool = tempfile.SpooledTemporaryFile(max_size=settings.EXPORT_SPOOL_MAX_BYTES, dir=settings.EXPORT_TEMP_DIR)
    try:
        write(spool)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    response = FileResponse(spool, as_attachment=True, filename=filename, content_type="application/zip")
    response["Cache-Control"] = "private, no-store"
    return response


def zip_response(person: Person) -> FileResponse:
    return archive_response(lambda out: services.export_person(person, out), f"person-{person.pk}.zip")


class PersonExportView(APIView):
    """Everything held about one person: details, photos, crops, embeddings and when they were recognized."""

    permission_classes = [IsAdminUser, StaffHoldsPermission, TokenScope]
    staff_permissions = {"GET": "people.export_person"}  # as the admin's export action
    token_scope = "export"
    throttle_classes = [*APIView.throttle_classes, ScopedTokenThrottle]
    throttle_scope = "export"  # a whole record read and zipped

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
        return archive_response(lambda out: services.export_visitor(visitor, out), f"visitor-{visitor.pk}.zip")
