"""Face photos and crops, for staff only: the one way their bytes leave the server.

There is no public /media/ route (facesite/urls.py): a photo is biometric data. The URL names a
FaceImage row, never a file path, so nothing from the request reaches the filesystem.
"""

from __future__ import annotations

from django.http import FileResponse, Http404
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from PIL import Image, UnidentifiedImageError
from rest_framework.permissions import BasePermission
from rest_framework.views import APIView

from facesite.api import is_staff
from security.permissions import TokenScope

from .models import FaceImage


def face_media_url(face: FaceImage, kind: str) -> str | None:
    """The path of a face's photo ("image") or aligned crop ("crop"), None if it has none on file."""
    if not getattr(face, kind):
        return None
    return reverse(f"face-{kind}", kwargs={"person_pk": face.person_id, "pk": face.pk})


def _content_type(handle) -> str:
    """From the stored bytes, not the file name: the format Pillow reads in the file's header."""
    try:
        with Image.open(handle) as img:
            content_type = Image.MIME.get(img.format or "")
    except (UnidentifiedImageError, OSError):
        content_type = None
    handle.seek(0)
    return content_type or "application/octet-stream"


class IsStaff(BasePermission):
    message = "Only staff may see face photos."

    def has_permission(self, request, view):
        return is_staff(request)


class FaceMediaView(APIView):
    """GET a face's photo or crop: staff users (session or their token) and staff-role API keys."""

    permission_classes = [IsStaff, TokenScope]
    token_scope = "face_media"  # no narrower role than staff has it
    kind = "image"

    @extend_schema(responses={(200, "image/*"): bytes})
    def get(self, request, person_pk: int, pk: int):
        face = FaceImage.objects.filter(pk=pk, person_id=person_pk).first()
        field = getattr(face, self.kind) if face is not None else None
        if not field:
            raise Http404("No such face photo.")
        try:
            handle = field.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise Http404("The file of this photo is missing from storage.")
        response = FileResponse(handle, content_type=_content_type(handle))
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response
