"""Every kind of bad input gets a 4xx with a clear code, and nothing is half-written."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from people.models import FaceImage, Person

from .conftest import PROBES, read

pytestmark = pytest.mark.django_db

JPEG = read(PROBES / "obama1.jpg")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


BAD_FILES = {
    "zero_bytes": (b"", 400, "empty_file"),
    "text": (b"hello, I am not a picture", 400, "invalid_image"),
    "html_renamed": (b"<!doctype html><html><body>hi</body></html>", 400, "invalid_image"),
    "pdf_renamed": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj", 400, "invalid_image"),
    "truncated_jpeg": (JPEG[: len(JPEG) // 3], 400, "corrupt_image"),
    "decompression_bomb": (png(Image.new("1", (30000, 30000))), 413, "image_too_large"),
    "tiny": (png(Image.new("RGB", (8, 8))), 400, "image_too_small"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_are_refused_by_recognize(user_api, name):
    data, status, code = BAD_FILES[name]
    response = user_api.post("/api/v1/recognize/", {"image": SimpleUploadedFile(f"{name}.jpg", data)}, format="multipart")
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_are_refused_by_enrollment_and_nothing_is_stored(staff_api, name):
    data, status, code = BAD_FILES[name]
    person = Person.objects.create(name="Somebody")
    before = FaceImage.objects.count()
    response = staff_api.post(
        f"/api/v1/people/{person.pk}/faces/", {"image": SimpleUploadedFile(f"{name}.jpg", data)}, format="multipart"
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert FaceImage.objects.count() == before


def test_oversized_upload_is_413(user_api, settings):
    settings.FACE_UPLOAD_MAX_BYTES = 50_000
    response = user_api.post("/api/v1/recognize/", {"image": SimpleUploadedFile("big.jpg", JPEG)}, format="multipart")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


def test_missing_image_field(user_api):
    response = user_api.post("/api/v1/recognize/", {}, format="multipart")
    assert response.status_code == 400
    body = response.json()["error"]
    assert body["code"] == "invalid" and "image" in body["fields"]


def test_wrong_types_in_parameters(user_api):
    response = user_api.post(
        "/api/v1/recognize/", {"image": SimpleUploadedFile("a.jpg", JPEG), "top_k": "many"}, format="multipart"
    )
    assert response.status_code == 400
    assert "top_k" in response.json()["error"]["fields"]


def test_json_body_instead_of_multipart(user_api):
    response = user_api.post("/api/v1/recognize/", {"image": "aGVsbG8="}, format="json")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_bad_json_to_people_endpoint(staff_api):
    response = staff_api.generic("POST", "/api/v1/people/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_unknown_person_for_upload_is_404(staff_api):
    response = staff_api.post("/api/v1/people/999999/faces/", {"image": SimpleUploadedFile("a.jpg", JPEG)}, format="multipart")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_non_utf8_file_name_is_stored_safely(staff_api, django_capture_on_commit_callbacks):
    person = Person.objects.create(name="Name Test")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(
            f"/api/v1/people/{person.pk}/faces/",
            {"image": SimpleUploadedFile("caf\udce9 ../../etc/passwd.jpg", JPEG)},
            format="multipart",
        )
    assert response.status_code == 201
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.image.name.startswith("faces/") and ".." not in face.image.name
