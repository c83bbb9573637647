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


# ---- days at the calendar's edge: a 400 (or the default range), never an overflow ---------------


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York"])
def test_days_at_the_calendars_edge_are_refused_not_500(staff_api, staff_user, client, settings, zone):
    settings.TIME_ZONE = zone
    for day in ("0001-01-01", "9999-12-31"):
        listed = staff_api.get(f"/api/v1/checkins/?date={day}")
        report = staff_api.get(f"/api/v1/reports/attendance/?from={day}&to={day}")
        for response in (listed, report):
            # 0001-01-01 on UTC can be stored: an empty day; otherwise a 400 naming the field
            assert response.status_code in (200, 400), (day, response.content)
            if response.status_code == 400:
                assert response.json()["error"]["code"] == "invalid" and response.json()["error"]["fields"]
    assert staff_api.get("/api/v1/checkins/?date=9999-12-31").status_code == 400
    assert staff_api.get("/api/v1/reports/attendance/?from=9999-12-31&to=9999-12-31").status_code == 400
    client.force_login(staff_user)
    page = client.get("/admin/dashboard/?from=9999-12-30&to=9999-12-31")
    assert page.status_code == 200 and "outside the calendar" in page.content.decode()


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_an_edge_cursor_at_the_calendars_edge_is_a_400(staff_api, since):
    from urllib.parse import quote

    response = staff_api.get(f"/api/v1/edge/gallery/?since={quote(since)}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {"since": ["Invalid cursor."]}


def test_two_people_raced_onto_one_external_id_is_a_400_not_a_500(staff_api, monkeypatch):
    """The unique check passes, another request stores the id, then this one writes: a 400 on
    external_id, as if the check had seen it, and the other request's person is untouched."""
    from rest_framework.validators import UniqueValidator

    checked = UniqueValidator.__call__

    def racing(self, value, field):
        checked(self, value, field)
        if not Person.objects.filter(external_id=value).exists():
            Person.objects.create(name="Other request", external_id=value, legal_basis="explicit_consent")

    monkeypatch.setattr(UniqueValidator, "__call__", racing)
    created = staff_api.post(
        "/api/v1/people/", {"name": "Ada", "external_id": "EMP-1", "legal_basis": "explicit_consent"}, format="json"
    )
    assert created.status_code == 400, created.content
    assert created.json()["error"]["fields"] == {"external_id": ["person with this external id already exists."]}
    ada = Person.objects.create(name="Ada", legal_basis="explicit_consent")
    renamed = staff_api.patch(f"/api/v1/people/{ada.pk}/", {"external_id": "EMP-2"}, format="json")
    assert renamed.status_code == 400 and "external_id" in renamed.json()["error"]["fields"]
    assert Person.objects.get(external_id="EMP-1").name == Person.objects.get(external_id="EMP-2").name == "Other request"
    ada.refresh_from_db()
    assert ada.external_id is None


# The photo inline's management form, as the admin page posts it (no photos on these people).
NO_PHOTOS = {"faces-TOTAL_FORMS": "0", "faces-INITIAL_FORMS": "0", "faces-MIN_NUM_FORMS": "0", "faces-MAX_NUM_FORMS": "1000"}


def unique_check_passes_once(monkeypatch, before_the_save=lambda: None):
    """The admin form's first unique check finds nothing (it ran before the other person was
    stored; ``before_the_save`` stores them, if not already there); later checks are real."""
    from people.forms import PersonAdminForm

    real_check, calls = PersonAdminForm.validate_unique, []

    def raced(form):
        calls.append(form.cleaned_data.get("external_id"))
        if len(calls) == 1:
            before_the_save()
        else:
            real_check(form)

    monkeypatch.setattr(PersonAdminForm, "validate_unique", raced)
    return calls


def test_two_staff_saving_one_external_id_in_the_admin_get_a_form_error_not_a_500(client, staff_user, monkeypatch):
    """The add form's unique check passes, another staff member's person with the same external_id
    is stored, then this one is written: the form comes back with the error on external_id and the
    staff member's input, and nothing of this person is saved; the same on the change form."""
    Person.objects.create(name="Other staff member's", external_id="BADGE-7", legal_basis="employment")
    calls = unique_check_passes_once(monkeypatch)
    client.force_login(staff_user)
    fields = {"name": "Grace", "external_id": "BADGE-7", "is_active": "on", "legal_basis": "employment", **NO_PHOTOS}

    added = client.post("/admin/people/person/add/", fields)

    assert added.status_code == 200 and len(calls) == 2  # answered again, with a real check
    assert added.context["adminform"].form.errors == {"external_id": ["Person with this External id already exists."]}
    assert b'value="Grace"' in added.content
    assert not Person.objects.filter(name="Grace").exists()
    assert Person.objects.get(external_id="BADGE-7").name == "Other staff member's"

    grace = Person.objects.create(name="Grace", legal_basis="employment")
    calls.clear()
    changed = client.post(f"/admin/people/person/{grace.pk}/change/", {**fields, "notes": "renamed badge"})
    assert changed.status_code == 200 and "external_id" in changed.context["adminform"].form.errors
    grace.refresh_from_db()
    assert grace.external_id is None and grace.notes == ""


def test_a_real_concurrent_commit_of_the_same_external_id_is_a_form_error_in_the_admin(client, staff_user, monkeypatch):
    """Two transactions on PostgreSQL: another connection commits a person with the external_id
    after this request's unique check and before its insert, which then collides in the database."""
    import threading

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("a second connection committing while the test's transaction is open needs PostgreSQL")

    def in_another_connection(work):
        def run():
            from django.db import connection as own

            try:
                work()
            finally:
                own.close()

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=30)

    def other_staff_member_saves():
        in_another_connection(
            lambda: Person.objects.create(name="Committed elsewhere", external_id="BADGE-8", legal_basis="employment")
        )

    unique_check_passes_once(monkeypatch, before_the_save=other_staff_member_saves)
    client.force_login(staff_user)
    try:
        added = client.post(
            "/admin/people/person/add/",
            {"name": "Grace", "external_id": "BADGE-8", "is_active": "on", "legal_basis": "employment", **NO_PHOTOS},
        )
        assert added.status_code == 200
        assert "external_id" in added.context["adminform"].form.errors
        assert list(Person.objects.filter(external_id="BADGE-8").values_list("name", flat=True)) == ["Committed elsewhere"]
    finally:  # committed outside the test's transaction: removed the same way
        in_another_connection(lambda: Person.objects.filter(external_id="BADGE-8").delete())
