"""Enrollment through the admin, the API and the bulk-import command, on real photos."""

import io
import re

import cv2
import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image, ImageFilter

from people.models import FaceImage, Person
from recognition import services
from recognition.pipelines import pipeline

from .conftest import PEOPLE, PROBES, read

pytestmark = pytest.mark.django_db


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


class Uploaded:
    """The upload's response, and the face as it stands once the queued processing has run."""

    def __init__(self, response, api):
        self.status_code = response.status_code
        self.created = response.json()
        self.api = api

    def json(self):
        face = FaceImage.objects.get(pk=self.created["id"])
        return self.api.get(f"/api/v1/people/{face.person_id}/faces/{face.pk}/").json()


def upload_face(api, person, data: bytes, name="photo.jpg", capture=None):
    with capture(execute=True):
        response = api.post(f"/api/v1/people/{person.pk}/faces/", {"image": SimpleUploadedFile(name, data)}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "pending"  # processing is queued; the answer does not wait for it
    return Uploaded(response, api)


def test_import_command_enrolled_the_fixture_people():
    assert Person.objects.count() == 10
    assert FaceImage.objects.accepted().count() == 16
    obama = Person.objects.get(name="Barack Obama")
    face = obama.faces.first()
    assert face.embedder.startswith("facenet-irv1-128")
    assert len(face.vector) == 128 and face.box and face.landmarks and face.crop


def test_import_command_prints_a_summary(tmp_path):
    folder = tmp_path / "people" / "new_person"
    folder.mkdir(parents=True)
    (folder / "good.jpg").write_bytes(read(PROBES / "obama_small.jpg"))
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = io.StringIO()
    call_command("import_faces", str(tmp_path / "people"), legal_basis="explicit_consent", stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    assert re.search(r"1 people, 2 photos: \d+ accepted, \d+ rejected", text)
    assert "broken.jpg" in text
    assert Person.objects.filter(name="New Person").exists()


def test_api_upload_embeds_and_joins_the_gallery(staff_api, django_capture_on_commit_callbacks):
    person = Person.objects.create(name="Obama Again")
    response = upload_face(staff_api, person, read(PROBES / "obama-720p.jpg"), capture=django_capture_on_commit_callbacks)
    assert response.status_code == 201
    face = FaceImage.objects.get(pk=response.json()["id"])
    # The same man under another name is caught as a likely mislabel, not silently accepted.
    assert face.status == FaceImage.Status.REVIEW
    assert "Barack Obama" in face.reason


def test_a_new_person_is_recognized_as_soon_as_their_photo_is_accepted(staff_api, user_api, django_capture_on_commit_callbacks):
    Person.objects.filter(name="Barack Obama").delete()
    person = Person.objects.create(name="The 44th President")
    response = upload_face(
        staff_api, person, read(PEOPLE / "barack_obama/obama2.jpg"), capture=django_capture_on_commit_callbacks
    )
    assert response.json()["status"] == "accepted"
    recognized = user_api.post(
        "/api/v1/recognize/", {"image": SimpleUploadedFile("o.jpg", read(PROBES / "obama1.jpg"))}, format="multipart"
    )
    assert recognized.json()["faces"][0]["match"]["name"] == "The 44th President"


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda: jpeg(Image.new("RGB", (640, 480), (90, 140, 60))), "no_face"),
        (lambda: read(PROBES / "two_people.jpg"), "several_faces"),
        (lambda: jpeg(Image.open(PROBES / "obama1.jpg").resize((185, 104))), "face_too_small"),
        (lambda: jpeg(Image.open(PROBES / "obama1.jpg").filter(ImageFilter.GaussianBlur(12))), "too_blurry"),
    ],
)
def test_unusable_photos_are_rejected_with_a_reason(staff_api, django_capture_on_commit_callbacks, make, code):
    person = Person.objects.create(name="Quality Check")
    response = upload_face(staff_api, person, make(), capture=django_capture_on_commit_callbacks)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] in ("rejected",), body
    assert body["reason_code"] == code and body["reason"]
    assert FaceImage.objects.get(pk=body["id"]).embedding is None


# ---- the blur gate: sharpness relative to the face's size (BENCHMARKS.md, "Enrollment yield through the API") ----

BLURRED_FRACTION = 0.06  # Gaussian sigma over the face's side: recognition fails on most such faces


def face_side(rgb: np.ndarray) -> float:
    return float(max(pipeline().detect(rgb)[0].box[2:]))


def kit_photo(scale: float = 1.0, blur: float = 0.0) -> bytes:
    """Kit Harington's probe photo (not in the gallery), resized by ``scale``, blurred by a Gaussian
    kernel of sigma ``blur`` times his face's side."""
    rgb = np.asarray(Image.open(PROBES / "johnsnow_test1.jpg").convert("RGB"))
    if scale != 1.0:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if blur:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=blur * face_side(rgb))
    return jpeg(Image.fromarray(rgb))


@pytest.mark.parametrize(
    "photo, status",
    [
        (lambda: kit_photo(), "accepted"),
        (lambda: kit_photo(scale=0.45), "accepted"),  # sharp, its face about 80 x 100 px, smaller than LFW's
        (lambda: kit_photo(blur=BLURRED_FRACTION), "too_blurry"),
    ],
    ids=["sharp-original", "sharp-small", "blurred"],
)
def test_the_blur_gate_rejects_a_blurred_photo_and_accepts_its_sharp_original(
    staff_api, django_capture_on_commit_callbacks, photo, status
):
    kit = Person.objects.get(name="Kit Harington")
    body = upload_face(staff_api, kit, photo(), capture=django_capture_on_commit_callbacks).json()
    assert (body["reason_code"] or body["status"]) == status, body
    if status == "too_blurry":
        assert "too blurry" in body["reason"] and body["sharpness"] < settings.FACE_ENROLL_MIN_SHARPNESS


def test_mislabelled_photo_is_held_for_review_and_can_be_approved(staff_api, django_capture_on_commit_callbacks):
    obama = Person.objects.get(name="Barack Obama")
    response = upload_face(staff_api, obama, read(PEOPLE / "joe_biden/biden2.jpg"), capture=django_capture_on_commit_callbacks)
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.status == FaceImage.Status.REVIEW and face.reason_code == "possible_mislabel"
    assert "Joe Biden" in face.reason
    assert face.pk not in FaceImage.objects.in_gallery().values_list("id", flat=True)
    from people.services import approve

    approve(face)
    assert FaceImage.objects.in_gallery().filter(pk=face.pk).exists()


def test_list_and_delete_a_face(staff_api):
    obama = Person.objects.get(name="Barack Obama")
    listing = staff_api.get(f"/api/v1/people/{obama.pk}/faces/").json()
    assert listing["count"] == 3
    face_id = listing["results"][0]["id"]
    assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{face_id}/").status_code == 204
    assert not FaceImage.objects.filter(pk=face_id).exists()


def test_people_crud_over_the_api(staff_api):
    created = staff_api.post(
        "/api/v1/people/", {"name": "Ada Lovelace", "external_id": "E-1", "legal_basis": "employment"}, format="json"
    )
    assert created.status_code == 201
    pid = created.json()["id"]
    assert staff_api.patch(f"/api/v1/people/{pid}/", {"notes": "engineer"}, format="json").json()["notes"] == "engineer"
    duplicate = staff_api.post(
        "/api/v1/people/", {"name": "Other", "external_id": "E-1", "legal_basis": "employment"}, format="json"
    )
    assert duplicate.status_code == 400 and "external_id" in duplicate.json()["error"]["fields"]
    assert staff_api.delete(f"/api/v1/people/{pid}/").status_code == 204


def test_erasing_a_person_removes_images_embeddings_and_gallery_entries(
    staff_api, tmp_path, settings, django_capture_on_commit_callbacks
):
    person = Person.objects.create(name="To Be Erased")
    response = upload_face(staff_api, person, read(PEOPLE / "rose_leslie/img1.jpg"), capture=django_capture_on_commit_callbacks)
    face = FaceImage.objects.get(pk=response.json()["id"])
    image_path, crop_path = face.image.path, face.crop.path
    services.gallery()
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{person.pk}/").status_code == 204
    assert not FaceImage.objects.filter(pk=face.pk).exists()
    import os

    assert not os.path.exists(image_path) and not os.path.exists(crop_path)
    assert person.pk not in services.gallery().person_ids


def test_inactive_people_are_not_recognized(user_api):
    Person.objects.filter(name="Barack Obama").update(is_active=False)
    body = user_api.post(
        "/api/v1/recognize/", {"image": SimpleUploadedFile("o.jpg", read(PROBES / "obama1.jpg"))}, format="multipart"
    ).json()
    assert body["faces"][0]["match"] is None


# ---- the admin -----------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, staff_user):
    client.force_login(staff_user)
    return client


def test_admin_uploads_several_photos_at_once(admin_client, django_capture_on_commit_callbacks):
    person = Person.objects.create(name="Kit Again")
    files = [
        SimpleUploadedFile("john1.jpeg", read(PEOPLE / "kit_harington/john1.jpeg"), content_type="image/jpeg"),
        SimpleUploadedFile("nothing.jpg", jpeg(Image.new("RGB", (300, 300), "white")), content_type="image/jpeg"),
        SimpleUploadedFile("broken.jpg", b"garbage", content_type="image/jpeg"),
    ]
    data = {
        "name": person.name,
        "external_id": "",
        "notes": "",
        "is_active": "on",
        "new_photos": files,
        "faces-TOTAL_FORMS": "0",
        "faces-INITIAL_FORMS": "0",
        "faces-MIN_NUM_FORMS": "0",
        "faces-MAX_NUM_FORMS": "1000",
        "_continue": "1",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/people/person/{person.pk}/change/", data, follow=True)
    assert response.status_code == 200
    statuses = sorted(person.faces.values_list("status", flat=True))
    assert len(statuses) == 2  # the unreadable file is refused and not stored
    assert "rejected" in statuses
    assert "Not stored: broken.jpg" in response.content.decode()
    page = admin_client.get(f"/admin/people/person/{person.pk}/change/").content.decode()
    assert "No face was found" in page  # the rejection reason is shown inline
    crop = person.faces.exclude(crop="").first()
    assert f"/api/v1/people/{person.pk}/faces/{crop.pk}/crop/" in page  # the thumbnail, through the staff-only view


def test_admin_lists_faces_with_thumbnails_filters_and_search(admin_client):
    page = admin_client.get("/admin/people/faceimage/?status__exact=accepted&q=obama").content.decode()
    assert len(re.findall(r'<img src="/api/v1/people/\d+/faces/\d+/crop/"', page)) == 3
    assert admin_client.get("/admin/people/person/?q=biden").content.decode().count("Joe Biden") >= 1


def test_admin_reprocess_action(admin_client, django_capture_on_commit_callbacks):
    obama = Person.objects.get(name="Barack Obama")
    FaceImage.objects.filter(person=obama).update(status="pending", embedding=None)
    response = admin_client.post(
        "/admin/people/person/", {"action": "reprocess_photos", "_selected_action": [obama.pk]}, follow=True
    )
    assert response.status_code == 200
    assert set(obama.faces.values_list("status", flat=True)) == {"accepted"}
