"""A photo deleted while its enrollment task runs stays deleted: the task never writes it back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from .conftest import PEOPLE, person_named, read
from .test_erasure import session_files_restored  # noqa: F401  (re-processing deletes real crops)


def media_files() -> set[str]:
    from django.conf import settings

    root = Path(settings.MEDIA_ROOT)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def stranger_photo_subject():
    """A new person whose photo is of Paul Rudd, deactivated so that nobody else matches the face."""
    from people.models import Person

    rudd = person_named("Paul Rudd")
    rudd.is_active = False
    rudd.save()
    return Person.objects.create(name="Race Subject"), PEOPLE / "paul_rudd" / "1.jpg"


def delete_through_the_api_mid_processing(monkeypatch, staff_api, seen: dict):
    """After detection, alignment and embedding (the crop is on disk), before the results are
    written, staff delete the photo over the API, as a concurrent request would."""
    from recognition import enrollment

    real_check = enrollment._mislabel_check

    def check_then_delete(face, embedding):
        verdict = real_check(face, embedding)
        seen["crop"] = face.crop.name
        seen["crop_on_disk"] = face.crop.storage.exists(face.crop.name)
        response = staff_api.delete(f"/api/v1/people/{face.person_id}/faces/{face.pk}/")
        seen["delete_status"] = response.status_code
        return verdict

    monkeypatch.setattr(enrollment, "_mislabel_check", check_then_delete)


def assert_gone_everywhere(staff_api, face_pk: int, photo: Path, seen: dict, before: set[str]):
    from people.models import FaceImage
    from recognition import services as recognition

    assert seen["delete_status"] == 204 and seen["crop_on_disk"], seen
    assert not FaceImage.objects.filter(pk=face_pk).exists()  # not re-inserted
    assert not FaceImage._meta.get_field("crop").storage.exists(seen["crop"])
    assert media_files() == before  # neither the photo nor the crop is left behind
    assert face_pk not in set(FaceImage.objects.in_gallery().values_list("id", flat=True))
    recognition.invalidate_gallery()
    assert "Race Subject" not in {c for c in _matched_names(staff_api, photo)}


def _matched_names(api, photo: Path) -> list[str]:
    response = api.post("/api/v1/recognize/", {"image": SimpleUploadedFile(photo.name, read(photo))}, format="multipart")
    assert response.status_code == 200, response.content
    return [face["match"]["name"] for face in response.json()["faces"] if face["match"]]


@pytest.mark.django_db
def test_a_photo_deleted_while_it_is_processed_is_not_written_back(staff_api, monkeypatch, django_capture_on_commit_callbacks):
    from people import services
    from recognition import tasks

    subject, photo = stranger_photo_subject()
    before = media_files()
    with django_capture_on_commit_callbacks(execute=True):  # committed, as outside a test
        face = services.enroll(subject, SimpleUploadedFile(photo.name, read(photo)), process=False)
    seen: dict = {}
    delete_through_the_api_mid_processing(monkeypatch, staff_api, seen)
    with django_capture_on_commit_callbacks(execute=True):
        outcome = tasks.process_face_image(face.pk)
    assert outcome == "deleted"
    assert_gone_everywhere(staff_api, face.pk, photo, seen, before)


@pytest.mark.django_db
def test_on_the_worker_path_a_photo_deleted_mid_task_stays_deleted(staff_api, monkeypatch, django_capture_on_commit_callbacks):
    """The upload API queues the task after commit; django-q (synchronous in tests) runs it."""
    from django_q.models import Task

    subject, photo = stranger_photo_subject()
    before = media_files()
    seen: dict = {}
    delete_through_the_api_mid_processing(monkeypatch, staff_api, seen)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(
            f"/api/v1/people/{subject.pk}/faces/",
            {"image": SimpleUploadedFile(photo.name, read(photo))},
            format="multipart",
        )
    assert response.status_code == 201, response.content
    face_pk = response.json()["id"]
    task = Task.objects.filter(name=f"face-{face_pk}").get()
    assert task.success and task.result == "deleted"
    assert_gone_everywhere(staff_api, face_pk, photo, seen, before)


@pytest.mark.django_db
def test_reprocessing_replaces_the_crop_and_crop_names_are_not_guessable(django_capture_on_commit_callbacks):
    from people.models import FaceImage
    from recognition import enrollment

    face = FaceImage.objects.filter(person=person_named("Barack Obama"), status="accepted").first()
    storage = face.crop.storage
    first = face.crop.name
    assert storage.exists(first)
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            enrollment.process_face_image(face)
        face.refresh_from_db()
        assert face.status == "accepted" and storage.exists(face.crop.name)
        assert not storage.exists(first), "the previous crop stays on disk"
        assert re.fullmatch(r"crops/[0-9a-f]{32}\.jpg", face.crop.name), face.crop.name
        first = face.crop.name
