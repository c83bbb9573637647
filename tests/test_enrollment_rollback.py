"""A photo upload that fails, or whose transaction rolls back, leaves no file behind; one racing the
erasure of its person answers 404 and stores nothing (the erased person's photo would otherwise stay
in MEDIA_ROOT with no row pointing to it, out of reach of erasure, retention and export)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from people import services
from people.admin import PersonAdmin
from people.models import FaceImage, Person
from privacy import services as privacy

from .conftest import PEOPLE, read
from .test_enrollment_race import media_files

pytestmark = pytest.mark.django_db

PHOTOS = [PEOPLE / "paul_rudd" / "1.jpg", PEOPLE / "kit_harington" / "john1.jpeg"]


def new_person(name: str = "Upload Subject") -> Person:
    return Person.objects.create(name=name, legal_basis="explicit_consent")


def upload(path=PHOTOS[0]) -> SimpleUploadedFile:
    return SimpleUploadedFile(path.name, read(path), content_type="image/jpeg")


@pytest.fixture
def admin_client(client, staff_user):
    client.force_login(staff_user)
    return client


def erase_while_checking_the_photo(monkeypatch, staff_api, seen: dict):
    """Another staff member erases the person over the API after the upload's view loaded them,
    while it runs face detection on the photo (chosen_face_box), before the row is inserted."""
    real = services.chosen_face_box

    def detect_then_erase(image, face_index=None, box=None):
        chosen = real(image, face_index, box)
        person_pk = int(seen["url"].split("/")[-3])
        seen["erase_status"] = staff_api.delete(f"/api/v1/people/{person_pk}/").status_code
        return chosen

    monkeypatch.setattr(services, "chosen_face_box", detect_then_erase)


def test_an_upload_racing_the_erasure_of_its_person_answers_404_and_stores_nothing(
    monkeypatch, staff_api, django_capture_on_commit_callbacks
):
    person = new_person()
    seen = {"url": f"/api/v1/people/{person.pk}/faces/"}
    erase_while_checking_the_photo(monkeypatch, staff_api, seen)
    before = media_files()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(seen["url"], {"image": upload(), "face_index": 0}, format="multipart")
    assert seen["erase_status"] == 204
    assert response.status_code == 404, response.content
    error = response.json()["error"]
    assert error["code"] == "not_found" and "erased" in error["message"]
    assert not Person.objects.filter(pk=person.pk).exists()
    assert not FaceImage.objects.filter(person_id=person.pk).exists()
    assert media_files() == before  # no photo, and no note of one


def test_an_insert_that_fails_because_the_person_was_erased_deletes_the_photo_it_wrote(
    monkeypatch, staff_api, django_capture_on_commit_callbacks
):
    """On a database without row locks (SQLite) the person can be erased between the check and the
    insert: the foreign key then fails when the upload commits. Here the erasure commits first and
    the check is made to pass; the insert runs the deferred foreign-key check at once."""
    person = new_person()
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{person.pk}/").status_code == 204
    monkeypatch.setattr(services, "lock_person", lambda person_id: True)
    real_save = FaceImage.save

    def save_and_check_the_foreign_key(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        connection.check_constraints(table_names=[FaceImage._meta.db_table])  # what the commit checks

    monkeypatch.setattr(FaceImage, "save", save_and_check_the_foreign_key)
    before = media_files()
    # the view found the person before the erasure
    monkeypatch.setattr("people.views.FaceImageViewSet.person", lambda view: person)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(f"/api/v1/people/{person.pk}/faces/", {"image": upload()}, format="multipart")
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"
    assert media_files() == before


def test_a_photo_outlives_no_failed_admin_request(monkeypatch, admin_client, django_capture_on_commit_callbacks):
    """The admin's person page stores the new photos, then its request fails (here: writing the
    change to the admin history): the photos' rows roll back with the request, and so do the files."""
    person = new_person()
    data = {
        "name": person.name,
        "external_id": "",
        "notes": "",
        "is_active": "on",
        "new_photos": [upload(path) for path in PHOTOS],
        "faces-TOTAL_FORMS": "0",
        "faces-INITIAL_FORMS": "0",
        "faces-MIN_NUM_FORMS": "0",
        "faces-MAX_NUM_FORMS": "1000",
    }
    stored = {}

    def history_fails(self, request, obj, message):
        stored["photos"] = list(FaceImage.objects.filter(person=obj).values_list("image", flat=True))
        raise DatabaseError("disk I/O error")

    monkeypatch.setattr(PersonAdmin, "log_change", history_fails)
    before = media_files()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(DatabaseError):
        admin_client.post(f"/admin/people/person/{person.pk}/change/", data)
    assert len(stored["photos"]) == 2  # both were on disk when the request failed
    assert not person.faces.exists()
    assert media_files() == before


def test_an_admin_edit_of_a_person_erased_meanwhile_answers_404_and_does_not_bring_them_back(
    monkeypatch, admin_client, django_capture_on_commit_callbacks
):
    from privacy.services import erase_person

    person = new_person("Edited While Erased")
    # the admin loaded the person, then another staff member's erasure committed (the request's own
    # transaction, which holds the load, cannot hold the erasure: its 404 would roll that back)
    monkeypatch.setattr(PersonAdmin, "get_object", lambda self, request, object_id, from_field=None: person)
    erase_person(Person.objects.get(pk=person.pk))
    data = {
        "name": "Edited While Erased",
        "external_id": "",
        "notes": "a new note",
        "is_active": "on",
        "new_photos": [upload()],
        "faces-TOTAL_FORMS": "0",
        "faces-INITIAL_FORMS": "0",
        "faces-MIN_NUM_FORMS": "0",
        "faces-MAX_NUM_FORMS": "1000",
    }
    before = media_files()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/people/person/{person.pk}/change/", data)
    assert response.status_code == 404
    assert not Person.objects.filter(pk=person.pk).exists()  # saving would have inserted them again
    assert not FaceImage.objects.filter(person_id=person.pk).exists()
    assert media_files() == before


def test_a_photo_whose_enclosing_transaction_rolled_back_is_deleted_by_the_daily_retention():
    """Django has no hook on rollback: a photo stored inside a transaction that later rolls back
    is on disk until the retention's sweep finds its note; a photo whose row exists is kept."""
    person = new_person()
    before = media_files()
    with pytest.raises(RuntimeError), transaction.atomic():
        lost = services.enroll(person, upload(PHOTOS[0]), process=False)
        raise RuntimeError("the request failed after the photo was stored")
    kept = services.enroll(person, upload(PHOTOS[1]), process=False)  # its commit hook never runs in a test
    assert {lost.image.name, kept.image.name} <= media_files()

    privacy.apply_retention(now=timezone.now())  # within the grace period: its transaction may be open
    assert lost.image.name in media_files()

    report = privacy.apply_retention(now=timezone.now() + services.UNCOMMITTED_GRACE + timedelta(minutes=1))
    assert report.uncommitted_photos_deleted >= 1
    assert lost.image.name not in media_files()
    assert kept.image.name in media_files() and FaceImage.objects.get(pk=kept.pk).image.name == kept.image.name
    assert not {n for n in media_files() - before if n.startswith(services.UNCOMMITTED_NOTES)}  # notes gone too


def test_an_upload_that_commits_leaves_no_note(staff_api, django_capture_on_commit_callbacks):
    person = new_person()
    before = media_files()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(f"/api/v1/people/{person.pk}/faces/", {"image": upload()}, format="multipart")
    assert response.status_code == 201, response.content
    face = FaceImage.objects.get(pk=response.json()["id"])
    added = media_files() - before
    assert face.image.name in added
    assert not {n for n in added if n.startswith(services.UNCOMMITTED_NOTES)}
