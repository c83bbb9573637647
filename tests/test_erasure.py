"""Erasing a person reaches everything held about them: rows, files, model artifacts, API answers.

The big test trains two real model versions on the session gallery (one serving a softmax head),
erases one person over the API, then searches every file under MEDIA_ROOT, every API answer and a
full database dump for their name, their id-linked rows and their embeddings.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile

from .conftest import PEOPLE, PROBES, person_named, read


@pytest.fixture
def training_settings(settings):
    settings.TRAINING_EXPORT_TFLITE = False  # person-free, and slow; test_edge_export.py covers it
    settings.TRAINING_UNKNOWN_FACES_DIR = None
    settings.TRAINING_TARGET_FAR = 0.05
    settings.TRAINING_APPROACHES = ["nearest_neighbour", "softmax_head"]
    return settings


@pytest.fixture(autouse=True)
def session_files_restored(db):
    """Erasures here delete real files (their on-commit callbacks run) while the database rows
    come back with the test's rollback: put the session gallery's files back for later tests."""
    root = media_root()
    kept = {name: (root / name).read_bytes() for name in referenced_media() if (root / name).is_file()}
    yield
    for name, data in kept.items():
        if not (root / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)


@pytest.fixture
def clean_queue(db):
    from django_q.models import Schedule

    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()


def train(capture, recognizer: str, settings):
    from training import services
    from training.models import ModelVersion

    settings.TRAINING_RECOGNIZER = recognizer
    with capture(execute=True):
        version, _ = services.request_training("api", force_activate=True)
    version = ModelVersion.objects.get(pk=version.pk)
    assert version.status == "active", version.error
    return version


def file_a_lookalike(api, capture, photo: Path, as_name: str) -> int:
    """Enroll ``photo`` under a new person: the real mislabel check holds it for review, naming the
    person it looks like in its reason."""
    from people.models import FaceImage, Person

    other = Person.objects.create(name=as_name)
    with capture(execute=True):
        response = api.post(
            f"/api/v1/people/{other.pk}/faces/", {"image": SimpleUploadedFile(photo.name, read(photo))}, format="multipart"
        )
    assert response.status_code == 201, response.content
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.status == "review", face.reason
    return face.pk


def check_in(person, n: int = 1) -> None:
    from checkin.models import CheckIn

    for _ in range(n):
        CheckIn.objects.create(person=person, similarity=0.9, threshold=0.5, frames=4)


def recognize(api, photo: Path) -> list[str]:
    response = api.post("/api/v1/recognize/", {"image": SimpleUploadedFile(photo.name, read(photo))}, format="multipart")
    assert response.status_code == 200, response.content
    return [face["match"]["name"] for face in response.json()["faces"] if face["match"]]


def media_root() -> Path:
    from django.conf import settings

    return Path(settings.MEDIA_ROOT)


def referenced_media() -> set[str]:
    """Every file a database row points to."""
    from django.apps import apps
    from django.db.models import FileField

    names = set()
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, FileField):
                names |= set(model.objects.exclude(**{field.name: ""}).values_list(field.name, flat=True))
    return names


def files_to_scan(orphans: set[str]) -> list[Path]:
    """Every file under MEDIA_ROOT except those other tests left unreferenced (their rows were
    rolled back) before this test began, and every file of the gallery snapshot directory."""
    from django.conf import settings

    root = media_root()
    media = [p for p in root.rglob("*") if p.is_file() and str(p.relative_to(root)) not in orphans]
    return media + [p for p in Path(settings.GALLERY_SNAPSHOT_DIR).rglob("*") if p.is_file()]


def artifact(field) -> bytes:
    with field.storage.open(field.name, "rb") as fh:
        return fh.read()


def walk(value):
    yield value
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def names_person(value, pid: int) -> bool:
    """Whether JSON data links to person ``pid`` (a "person_id"/"person" field, or a people map key)."""
    for item in walk(value):
        if isinstance(item, dict):
            if item.get("person_id") == pid or item.get("person") == pid:
                return True
            if "people_names" in item and str(pid) in item["people_names"]:
                return True
    return False


@pytest.mark.django_db
def test_an_erased_person_is_nowhere_in_files_api_answers_or_the_database(
    staff_api, staff_user, client, training_settings, clean_queue, django_capture_on_commit_callbacks
):
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command

    from checkin.corrections import reject_checkin
    from checkin.models import CheckIn, RejectedMatch
    from people.models import FaceImage, Person
    from security.models import AuditEvent
    from training.models import ModelVersion

    capture = django_capture_on_commit_callbacks
    obama = person_named("Barack Obama")
    pid, name = obama.pk, obama.name
    orphans = {str(p.relative_to(media_root())) for p in media_root().rglob("*") if p.is_file()} - referenced_media()

    # what a running system holds about him besides his photos
    lookalike = file_a_lookalike(staff_api, capture, PROBES / "obama1.jpg", "Filed Under Someone Else")
    check_in(obama, 2)
    rejected = CheckIn.objects.create(
        person=obama, similarity=0.6, threshold=0.55, frames=4, matched_faces=[obama.faces.first().pk]
    )
    with capture(execute=True):
        reject_checkin(rejected.pk, by=staff_user)  # a check-in staff said was not him: kept as a rejected match
    assert RejectedMatch.objects.filter(person_id=pid).exists()
    assert name in recognize(staff_api, PROBES / "obama1.jpg")  # an audit event naming him
    assert AuditEvent.objects.about(pid).exists()
    LogEntry.objects.create(
        user=staff_user,
        content_type=ContentType.objects.get_for_model(Person),
        object_id=str(pid),
        object_repr=str(obama),
        action_flag=CHANGE,
        change_message="[]",
    )

    nearest = train(capture, "nearest_neighbour", training_settings)
    headed = train(capture, "softmax_head", training_settings)
    assert headed.recognizer == "softmax_head" and headed.head
    for version in (nearest, headed):  # both versions carry him before the erasure
        assert names_person(version.metrics, pid) and name.encode() in artifact(version.labels)

    faces = list(FaceImage.objects.filter(person=obama))
    embeddings = [bytes(f.embedding) for f in faces if f.embedding is not None]
    files = [f.image.name for f in faces] + [f.crop.name for f in faces if f.crop]
    assert len(embeddings) == 3 and all(faces[0].image.storage.exists(n) for n in files)
    old_artifacts = [
        field.name for v in (nearest, headed) for field in (v.labels, v.head, v.confusion_plot) if field and field.name
    ]
    # the gallery snapshot every process maps at start holds his raw embeddings too
    from django.conf import settings

    from recognition import services as recognition_services

    assert recognition_services.write_snapshot(force=True).written
    snapshot = b"".join(p.read_bytes() for p in Path(settings.GALLERY_SNAPSHOT_DIR).rglob("*.faiss"))
    assert all(e in snapshot for e in embeddings)

    with capture(execute=True):
        response = staff_api.delete(f"/api/v1/people/{pid}/")
    assert response.status_code == 204, response.content

    # ---- files: every file under MEDIA_ROOT, as bytes -------------------------------------------
    needles = [name.encode()] + embeddings
    for path in files_to_scan(orphans):
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path} still holds {'the name' if needle == needles[0] else 'an embedding'}"
    storage = faces[0].image.storage
    assert not any(storage.exists(n) for n in files + old_artifacts)
    theirs = np.frombuffer(b"".join(embeddings), np.float32).reshape(-1, 128)
    finished = ModelVersion.objects.finished()  # the retrain the erasure asked for is only queued
    assert finished.count() == 2
    for version in finished:
        labels = json.loads(artifact(version.labels))
        assert version.labels_sha256 == hashlib.sha256(artifact(version.labels)).hexdigest()
        kept = np.asarray(labels["gallery"]["embeddings"], np.float32)
        assert np.abs(kept[:, None, :] - theirs[None]).max(axis=2).min() > 1e-3  # no rounded copy either
        assert not names_person(labels, pid) and len(labels["people"]) == version.people_count - 1
        if version.head:
            with np.load(io.BytesIO(artifact(version.head))) as head:
                assert pid not in head["classes"] and head["kernel"].shape[1] == len(head["classes"])
                assert len(labels["head"]["people"]) == len(head["classes"])

    # ---- API answers ------------------------------------------------------------------------------
    answers = [staff_api.get("/api/v1/models/"), staff_api.get("/api/v1/people/")]
    for version in finished:
        answers += [staff_api.get(f"/api/v1/models/{version.pk}/"), staff_api.get(f"/api/v1/models/{version.pk}/labels/")]
    for person in Person.objects.all():
        answers.append(staff_api.get(f"/api/v1/people/{person.pk}/faces/"))
    client.force_login(staff_user)
    answers += [client.get("/admin/security/auditevent/"), client.get("/admin/people/faceimage/?status=review")]
    for answer in answers:
        body = b"".join(answer.streaming_content) if answer.streaming else answer.content
        assert answer.status_code == 200, (answer.status_code, body[:300])
        assert name.encode() not in body and not any(base64.b64encode(e) in body for e in embeddings)
        if body.lstrip()[:1] in (b"{", b"["):
            assert not names_person(json.loads(body), pid)
    assert staff_api.get(f"/api/v1/people/{pid}/").status_code == 404
    assert staff_api.get(f"/api/v1/people/{pid}/faces/").status_code == 404
    reason = FaceImage.objects.get(pk=lookalike).reason
    assert reason.startswith("Looks more like another enrolled person (erased)"), reason

    # ---- the database, every row ----------------------------------------------------------------
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    text = dump.getvalue()
    assert name not in text
    assert not any(base64.b64encode(e).decode() in text for e in embeddings)
    for row in json.loads(text):
        fields = row["fields"]
        assert not (row["model"] == "people.person" and row["pk"] == pid)
        assert fields.get("person") != pid or row["model"] not in (
            "people.faceimage",
            "checkin.checkin",
            "checkin.rejectedmatch",
        ), row
        assert f",{pid}," not in str(fields.get("person_ids", "")), row
        assert not names_person(fields.get("result"), pid) and not names_person(fields.get("metrics"), pid), row

    # ---- the receipt, and the versions still serve the others --------------------------------------
    assert not RejectedMatch.objects.filter(person_id=pid).exists()
    receipt = AuditEvent.objects.get(action="erase")
    assert receipt.user == staff_user and receipt.person_ids == ""
    assert receipt.result["rejected_matches_deleted"] == 1
    assert receipt.result["faces_deleted"] == 3 and receipt.result["files_deleted"] == 9  # photos, crops, regions
    assert receipt.result["model_versions_redacted"] == 2 and receipt.result["heads_rewritten"] == 1
    assert receipt.result["label_maps_rewritten"] == 2 and receipt.result["plots_redrawn"] == 2
    from recognition import services as recognition

    served = recognition.recognizer()  # the rewritten head (new sha256) is loaded, not the gallery fallback
    assert type(served).__name__ == "HeadRecognizer" and pid not in served.head.classes
    assert "Joe Biden" in recognize(staff_api, PEOPLE / "joe_biden" / "biden2.jpg")
    assert name not in recognize(staff_api, PROBES / "obama1.jpg")


@pytest.mark.django_db
def test_the_erasure_report_counts_what_was_removed_and_the_receipt_is_anonymous(
    staff_api, staff_user, settings, clean_queue, django_capture_on_commit_callbacks
):
    from dataclasses import asdict

    from checkin.models import CheckIn
    from privacy.services import erase_person
    from security.models import AuditEvent

    settings.ERASE_CHECKINS_WITH_PERSON = False  # kept, anonymised
    capture = django_capture_on_commit_callbacks
    biden = person_named("Joe Biden")
    pid = biden.pk
    file_a_lookalike(staff_api, capture, PEOPLE / "joe_biden" / "biden2.jpg", "Another Filer")
    check_in(biden, 3)
    assert "Joe Biden" in recognize(staff_api, PEOPLE / "joe_biden" / "biden.jpg")
    assert "Joe Biden" in recognize(staff_api, PROBES / "obama_and_biden.jpg")
    events = AuditEvent.objects.about(pid).count()
    assert events == 2

    with capture(execute=True):
        report = erase_person(biden, by=staff_user)
    assert report.faces_deleted == 2 and report.files_deleted == 6  # photos, crops, regions
    assert report.checkins_anonymised == 3 and report.checkins_deleted == 0
    assert CheckIn.objects.filter(person__isnull=True).count() >= 3
    assert report.audit_events_redacted == 2 and report.review_reasons_rewritten == 1
    assert report.model_versions_redacted == 0  # nothing trained in this test

    receipt = AuditEvent.objects.get(action="erase")
    assert receipt.result["checkins_anonymised"] == 3 and receipt.result["faces_deleted"] == 2
    assert receipt.actor == staff_user.username and receipt.person_ids == ""
    assert "Joe Biden" not in json.dumps(receipt.result) and set(receipt.result) == set(asdict(report))
    both = AuditEvent.objects.filter(action="recognize").order_by("id").last()
    assert both.result["erased_people"] == 1 and all(m["person_id"] != pid for m in both.result["matches"])
    assert both.result["matches"], "Obama's match in the same call is kept"


@pytest.mark.django_db
def test_the_admin_delete_and_bulk_delete_erase_through_the_service(staff_user, client, clean_queue):
    from django.contrib.admin.models import LogEntry

    from people.models import Person
    from security.models import AuditEvent

    client.force_login(staff_user)
    rudd, rose = person_named("Paul Rudd"), person_named("Rose Leslie")
    check_in(rudd)
    response = client.post(f"/admin/people/person/{rudd.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    response = client.post("/admin/people/person/", {"action": "delete_selected", "_selected_action": [rose.pk], "post": "yes"})
    assert response.status_code == 302
    assert not Person.objects.filter(pk__in=[rudd.pk, rose.pk]).exists()
    receipts = AuditEvent.objects.filter(action="erase", user=staff_user)
    assert receipts.count() == 2 and receipts.filter(result__checkins_deleted=1).count() == 1
    # the admin's own deletion history named them; erasure removes it
    assert not LogEntry.objects.filter(object_repr__in=["Paul Rudd", "Rose Leslie"]).exists()


@pytest.mark.django_db
def test_only_changes_to_the_gallery_queue_a_retrain(clean_queue, django_capture_on_commit_callbacks):
    from people import services
    from people.models import FaceImage
    from recognition import enrollment
    from training.models import ModelVersion

    capture = django_capture_on_commit_callbacks
    kit = person_named("Kit Harington")
    with capture(execute=True):
        kit.notes = "Edited notes"
        kit.name = "Kit Harington (actor)"
        kit.save()
    assert not ModelVersion.objects.exists(), "a notes or name edit queued a retrain"

    face = FaceImage.objects.filter(person=kit, status="accepted").first()
    with capture(execute=True):
        enrollment.process_face_image(face)  # re-processed and accepted again: the gallery changed
    assert ModelVersion.objects.queued().get().trigger == "enrollment"

    for change in (  # a face of an active person deleted; the person deactivated
        lambda: services.delete_face(face),
        lambda: setattr(kit, "is_active", False) or kit.save(),
    ):
        ModelVersion.objects.all().delete()
        with capture(execute=True):
            change()
        assert ModelVersion.objects.queued().count() == 1


@pytest.mark.django_db
def test_photos_are_stored_without_captions_that_name_other_people():
    """biden.jpg's XMP/IPTC caption names Barack Obama: erasing him could never reach it there."""
    from people.models import FaceImage
    from recognition import services as recognition

    original = read(PEOPLE / "joe_biden" / "biden.jpg")
    assert b"Barack Obama" in original
    stored = [f for f in FaceImage.objects.filter(person=person_named("Joe Biden")) if f.original_name == "biden.jpg"]
    assert len(stored) == 1
    with stored[0].image.open("rb") as fh:
        kept = fh.read()
    assert b"Barack Obama" not in kept and b"Pete Souza" not in kept
    assert (recognition.read_upload(kept) == recognition.read_upload(original)).all()  # the same pixels


@pytest.mark.django_db
def test_a_deleted_model_version_takes_its_label_map_and_plots_with_it(clean_queue, django_capture_on_commit_callbacks):
    from django.core.files.base import ContentFile

    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=ModelVersion.next_number(), status="ready")
    version.labels.save("labels.json", ContentFile(b'{"people": [{"name": "Someone"}]}'), save=False)
    version.confusion_plot.save("confusion.png", ContentFile(b"png"), save=True)
    names = [version.labels.name, version.confusion_plot.name]
    assert all(version.labels.storage.exists(n) for n in names)
    with django_capture_on_commit_callbacks(execute=True):
        version.delete()
    assert not any(version.labels.storage.exists(n) for n in names)


@pytest.mark.django_db
def test_a_version_deleted_from_a_stale_copy_takes_the_label_map_a_redaction_wrote_since(
    clean_queue, settings, django_capture_on_commit_callbacks
):
    from people.models import FaceImage
    from training import redaction
    from training.models import ModelVersion

    version = train(django_capture_on_commit_callbacks, "nearest_neighbour", settings)
    stale = ModelVersion.objects.get(pk=version.pk)  # e.g. the admin's delete page, loaded before
    with django_capture_on_commit_callbacks(execute=True):
        FaceImage.objects.in_gallery().filter(person=person_named("Joe Biden")).first().delete()
    rewritten = ModelVersion.objects.get(pk=version.pk).labels.name
    assert rewritten != stale.labels.name and stale.labels.storage.exists(rewritten)  # the redaction's new map
    with django_capture_on_commit_callbacks(execute=True):
        stale.delete()
    assert not stale.labels.storage.exists(rewritten) and not stale.labels.storage.exists(stale.labels.name)
    assert redaction.forget_deleted_faces() == {}  # nothing left that holds it


def test_a_retrain_asked_for_while_the_broker_is_down_is_kept_as_a_schedule(
    clean_queue, monkeypatch, django_capture_on_commit_callbacks
):
    """Approving or deleting a face while Redis is down: the retrain request waits in the database."""
    from django_q.models import Schedule

    from people import services

    def broker_down(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(services, "async_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        services.gallery_changed()
    (waiting,) = Schedule.objects.filter(func=services.RETRAIN_TASK)
    assert waiting.schedule_type == Schedule.ONCE and waiting.name.startswith("enrollment-changed-")


@pytest.mark.django_db
def test_a_deleted_photo_leaves_every_model_versions_label_map(
    staff_api, clean_queue, settings, django_capture_on_commit_callbacks
):
    from people.models import FaceImage
    from training.models import ModelVersion

    capture = django_capture_on_commit_callbacks
    older = train(capture, "nearest_neighbour", settings)
    # a label map written before they recorded each row's photo: the same map without "faces"
    labels = json.loads(artifact(older.labels))
    assert len(labels["gallery"]["faces"]) == len(labels["gallery"]["embeddings"])
    del labels["gallery"]["faces"]
    older.labels.save("labels.json", ContentFile(json.dumps(labels).encode()), save=True)
    newer = train(capture, "nearest_neighbour", settings)

    obama = person_named("Barack Obama")
    kept, deleted = FaceImage.objects.in_gallery().filter(person=obama).order_by("pk")[:2]
    gone = np.frombuffer(bytes(deleted.embedding), np.float32)
    stays = np.frombuffer(bytes(kept.embedding), np.float32)

    def closest(version, embedding) -> float:
        rows = np.asarray(json.loads(artifact(version.labels))["gallery"]["embeddings"], np.float32)
        return float(np.abs(rows - embedding).max(axis=1).min())

    for version in (older, newer):
        assert closest(version, gone) < 1e-5 and closest(version, stays) < 1e-5
    deleted_pk = deleted.pk
    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{deleted_pk}/").status_code == 204
    for version in (older, newer):
        version = ModelVersion.objects.get(pk=version.pk)
        data = artifact(version.labels)
        assert version.labels_sha256 == hashlib.sha256(data).hexdigest()  # edge kiosks fetch the new map
        labels = json.loads(data)
        assert closest(version, gone) > 1e-3, "a rounded copy of the deleted photo's embedding is still there"
        assert closest(version, stays) < 1e-5  # only that photo
        assert deleted_pk not in labels["gallery"]["faces"] and len(labels["gallery"]["faces"]) == len(
            labels["gallery"]["labels"]
        )
        assert names_person(labels, obama.pk)
    # the server still names Obama from his other photos, and an older map can serve an edge kiosk
    assert recognize(staff_api, PROBES / "obama1.jpg") == ["Barack Obama"]


@pytest.mark.django_db
def test_a_deleted_photo_is_not_looked_for_in_versions_finished_before_it_was_added(
    staff_api, clean_queue, settings, django_capture_on_commit_callbacks, monkeypatch
):
    """A label map is tens of MB at a large gallery: a photo's deletion reads only the maps of
    versions that can hold it (finished after it was added, less the clocks' skew), and still
    redacts every one of those."""
    from datetime import timedelta

    from django.utils import timezone

    from people.models import FaceImage
    from training import redaction
    from training.models import ModelVersion

    capture = django_capture_on_commit_callbacks
    # the gallery's photos were added two hours ago, the older version finished an hour ago
    FaceImage.objects.update(created_at=timezone.now() - 2 * redaction.CLOCK_SKEW - timedelta(hours=2))
    older = train(capture, "nearest_neighbour", settings)
    ModelVersion.objects.filter(pk=older.pk).update(finished_at=timezone.now() - redaction.CLOCK_SKEW - timedelta(hours=1))
    obama = person_named("Barack Obama")
    with capture(execute=True):
        response = staff_api.post(
            f"/api/v1/people/{obama.pk}/faces/", {"image": SimpleUploadedFile("obama1.jpg", read(PROBES / "obama1.jpg"))}
        )
    assert response.status_code == 201, response.content
    ModelVersion.objects.queued().delete()  # the debounced retrain it asked for: trained at once below
    added = FaceImage.objects.get(pk=response.json()["id"])
    assert added.status == "accepted", added.reason
    newer = train(capture, "nearest_neighbour", settings)
    assert added.pk in json.loads(artifact(newer.labels))["gallery"]["faces"]
    assert added.pk not in json.loads(artifact(older.labels))["gallery"]["faces"]

    read_versions = []
    redact = redaction.redact_deleted_faces

    def spy(version, face_ids=None):
        read_versions.append(version.pk)
        return redact(version, face_ids)

    monkeypatch.setattr(redaction, "redact_deleted_faces", spy)
    older_map = artifact(ModelVersion.objects.get(pk=older.pk).labels)
    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{added.pk}/").status_code == 204
    assert read_versions == [newer.pk]
    assert added.pk not in json.loads(artifact(ModelVersion.objects.get(pk=newer.pk).labels))["gallery"]["faces"]
    assert artifact(ModelVersion.objects.get(pk=older.pk).labels) == older_map

    # a photo both versions were trained on is looked for, and taken out, in both
    read_versions.clear()
    both = FaceImage.objects.in_gallery().filter(person=obama).exclude(pk=added.pk).first()
    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{both.pk}/").status_code == 204
    assert sorted(read_versions) == sorted([older.pk, newer.pk])
    for version in (older, newer):
        assert both.pk not in json.loads(artifact(ModelVersion.objects.get(pk=version.pk).labels))["gallery"]["faces"]


@pytest.mark.django_db
def test_a_photo_deleted_while_a_run_trains_is_not_in_its_label_map(
    clean_queue, settings, django_capture_on_commit_callbacks, monkeypatch
):
    from people import services as people_services
    from people.models import FaceImage
    from training import runs

    victim = FaceImage.objects.in_gallery().filter(person=person_named("Joe Biden")).first()
    gone = np.frombuffer(bytes(victim.embedding), np.float32)
    finish = runs.TrainingRun.finish

    def delete_then_finish(self, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            people_services.delete_face(victim)  # the run's snapshot still has it
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(runs.TrainingRun, "finish", delete_then_finish)
    version = train(django_capture_on_commit_callbacks, "nearest_neighbour", settings)
    rows = np.asarray(json.loads(artifact(version.labels))["gallery"]["embeddings"], np.float32)
    assert np.abs(rows - gone).max(axis=1).min() > 1e-3


@pytest.mark.django_db
def test_an_erasure_deletes_the_task_records_and_queued_tasks_that_name_the_person(
    staff_api, clean_queue, django_capture_on_commit_callbacks
):
    """django-q keeps a failed task's arguments (pickled: no text search of the database finds a
    name in them), and its broker (the ORM's table, or Redis's list in the PostgreSQL/Redis pass)
    the tasks still queued; an event message names its person."""
    from django.utils import timezone
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis
    from django_q.models import OrmQ, Task
    from django_q.signing import SignedPackage

    from integrations.events import message
    from security.models import AuditEvent

    broker = get_broker()

    def queued_args() -> list:
        items = (
            broker.connection.lrange(broker.list_key, 0, -1)
            if isinstance(broker, Redis)
            else [q.payload for q in OrmQ.objects.all()]
        )
        return [SignedPackage.loads(item)["args"] for item in items]

    def event_about(person) -> dict:
        return message(
            "checkin.created", {"person": {"id": person.pk, "name": person.name}}, uuid.uuid4(), timezone.now().isoformat()
        )

    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    try:
        for person in (obama, biden):
            # a publish that failed: django-q's monitor keeps a failure's arguments (as saved here)
            now = timezone.now()
            Task.objects.create(
                id=uuid.uuid4().hex,
                name=f"failed-{person.pk}",
                func="integrations.tasks.publish",
                group="integrations",
                args=("checkin.created", event_about(person)),
                kwargs={},
                result="OSError: broker gone",
                started=now,
                stopped=now,
                success=False,
            )
            # and one still queued, as the site's broker holds it
            task = {"id": uuid.uuid4().hex, "name": "queued", "func": "integrations.tasks.publish"}
            broker.enqueue(SignedPackage.dumps({**task, "args": ("checkin.created", event_about(person)), "kwargs": {}}))
        failed = Task.objects.filter(func="integrations.tasks.publish", success=False)
        assert sorted(t.args[1]["data"]["person"]["name"] for t in failed) == ["Barack Obama", "Joe Biden"]
        assert len(queued_args()) == 2

        with django_capture_on_commit_callbacks(execute=True):
            assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
        left = [t.args for t in Task.objects.all()] + queued_args()
        assert not any("Barack Obama" in repr(args) for args in left), left
        assert sum("Joe Biden" in repr(args) for args in left) == 2  # only what names him
        # the receipt counts the database's rows (Redis is cleaned after the commit)
        counted = 1 if isinstance(broker, Redis) else 2
        assert AuditEvent.objects.get(action="erase").result["task_records_deleted"] == counted
    finally:
        if isinstance(broker, Redis):
            broker.delete_queue()


@pytest.mark.django_db
def test_a_deleted_photo_is_nowhere_in_files_or_the_database(
    staff_api, staff_user, client, settings, clean_queue, django_capture_on_commit_callbacks
):
    """One photo deleted by staff (not an erasure): its embedding leaves every file (media, model
    versions' label maps, the gallery snapshot, the training cache) and every row, as raw bytes, as
    base64 and as the label maps' rounded numbers; the person keeps their other photos."""
    from django.conf import settings as django_settings
    from django.core.management import call_command

    from people.models import FaceImage
    from recognition import services as recognition_services

    capture = django_capture_on_commit_callbacks
    orphans = {str(p.relative_to(media_root())) for p in media_root().rglob("*") if p.is_file()} - referenced_media()
    train(capture, "nearest_neighbour", settings)
    train(capture, "softmax_head", settings)
    assert recognition_services.write_snapshot(force=True).written
    obama = person_named("Barack Obama")
    photo = FaceImage.objects.in_gallery().filter(person=obama).order_by("pk").first()
    raw = bytes(photo.embedding)
    vector = np.frombuffer(raw, np.float32)
    files = [photo.image.name, photo.crop.name]

    def holds(data: bytes) -> bool:
        """The embedding as raw bytes, as base64, or as a list of numbers in JSON (the label maps round them)."""
        if raw in data or base64.b64encode(raw) in data:
            return True
        try:
            parsed = json.loads(data)
        except ValueError:
            return False
        return any(
            isinstance(item, list)
            and len(item) == len(vector)
            and all(isinstance(x, float) for x in item)
            and np.abs(np.asarray(item, np.float32) - vector).max() < 1e-5
            for item in walk(parsed)
        )

    scanned = files_to_scan(orphans) + [p for p in Path(django_settings.TRAINING_CACHE_DIR).rglob("*") if p.is_file()]
    assert any(raw in p.read_bytes() for p in scanned)  # before: the snapshot holds it ...
    from training.models import ModelVersion

    versions = ModelVersion.objects.finished()
    assert versions.count() == 2 and all(holds(artifact(v.labels)) for v in versions)  # ... and both label maps, rounded
    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{photo.pk}/").status_code == 204
    scanned = files_to_scan(orphans) + [p for p in Path(django_settings.TRAINING_CACHE_DIR).rglob("*") if p.is_file()]
    for path in scanned:
        assert not holds(path.read_bytes()), path
    assert not any(photo.image.storage.exists(n) for n in files)
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert not holds(dump.getvalue().encode())
    assert FaceImage.objects.in_gallery().filter(person=obama).exists()
    assert recognize(staff_api, PROBES / "obama1.jpg") == ["Barack Obama"]


def stored_version(status: str, names: str = "Someone"):
    """A model version row with a label map file, as a finished run leaves it (no run needed)."""
    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=ModelVersion.next_number(), status=status)
    version.labels.save("labels.json", ContentFile(json.dumps({"people": [{"name": names}]}).encode()), save=True)
    return version


@pytest.mark.django_db
def test_retention_keeps_the_newest_versions_staff_can_roll_back_to_and_deletes_the_rest_with_their_files(
    clean_queue, settings, django_capture_on_commit_callbacks
):
    from privacy import services as privacy
    from training.models import ModelVersion

    settings.TRAINING_KEEP_VERSIONS = 2
    statuses = ["retired", "ready", "active", "retired", "ready", "failed", "failed", "failed", "training", "queued"]
    versions = [stored_version(status) for status in statuses]
    files = {v.pk: v.labels.name for v in versions}
    storage = versions[0].labels.storage
    with django_capture_on_commit_callbacks(execute=True):
        report = privacy.apply_retention(days=0)
    assert report.model_versions_deleted == 3
    left = dict(ModelVersion.objects.values_list("pk", "status"))
    # the two oldest rollback candidates and the oldest failure go; active, queued and training stay
    assert sorted(left) == sorted(v.pk for v in versions[2:3] + versions[3:5] + versions[6:])
    for v in versions:
        assert storage.exists(files[v.pk]) == (v.pk in left), v.status
    with django_capture_on_commit_callbacks(execute=True):
        assert privacy.apply_retention(days=0).model_versions_deleted == 0  # nothing more to take

    settings.TRAINING_KEEP_VERSIONS = 0  # keep them all
    stored_version("retired")
    with django_capture_on_commit_callbacks(execute=True):
        assert privacy.apply_retention(days=0).model_versions_deleted == 0


@pytest.mark.django_db
def test_a_version_deleted_by_retention_cannot_be_activated_from_a_stale_copy(clean_queue, staff_api):
    from training.models import ModelVersion

    active = stored_version("active")
    old = stored_version("retired")
    stale = ModelVersion.objects.get(pk=old.pk)  # e.g. a rollback asked for just before retention ran
    ModelVersion.objects.filter(pk=old.pk).delete()
    with pytest.raises(ModelVersion.DoesNotExist):
        stale.activate()
    assert ModelVersion.objects.get(pk=active.pk).status == "active"  # the active one was not retired
    response = staff_api.post(f"/api/v1/models/{old.pk}/activate/")
    assert response.status_code == 404 and "error" in response.json()


@pytest.mark.django_db
def test_a_finished_run_deletes_the_versions_past_the_newest_kept(clean_queue, settings, django_capture_on_commit_callbacks):
    """A site retrains after every enrollment (debounced): the versions would pile up between two
    daily retentions, each with a label map holding every photo's embedding."""
    from training.models import ModelVersion

    settings.TRAINING_KEEP_VERSIONS = 1
    older, newer = stored_version("retired"), stored_version("retired")
    version = train(django_capture_on_commit_callbacks, "nearest_neighbour", settings)
    left = set(ModelVersion.objects.values_list("pk", flat=True))
    assert left == {newer.pk, version.pk}, "the older rollback candidate was kept"
    assert not older.labels.storage.exists(older.labels.name)


def in_label_map(version, face_pk: int) -> bool:
    from training.models import ModelVersion

    return face_pk in json.loads(artifact(ModelVersion.objects.get(pk=version.pk).labels))["gallery"]["faces"]


@pytest.mark.django_db
def test_photos_deleted_one_request_at_a_time_are_redacted_in_one_pass(
    staff_api, clean_queue, settings, django_capture_on_commit_callbacks, monkeypatch
):
    """The API deletes one photo per request; at 100k faces a pass over the label maps costs ~28 s
    a version: every photo deleted before a task runs is redacted by it, and the others find
    nothing left to do."""
    from people.models import FaceImage
    from training import redaction
    from training.models import PendingRedaction

    capture = django_capture_on_commit_callbacks
    version = train(capture, "nearest_neighbour", settings)
    obama = person_named("Barack Obama")
    first, second = FaceImage.objects.in_gallery().filter(person=obama).order_by("pk")[:2]
    passes = []
    redact = redaction.redact_deleted_faces

    def spy(v, face_ids=None):
        passes.append((v.pk, sorted(face_ids)))
        return redact(v, face_ids)

    monkeypatch.setattr(redaction, "redact_deleted_faces", spy)
    with capture(execute=False):  # its task waits behind a busy worker
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{first.pk}/").status_code == 204
    assert list(PendingRedaction.objects.values_list("face_id", flat=True)) == [first.pk]
    assert in_label_map(version, first.pk) and passes == []
    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{second.pk}/").status_code == 204
    assert passes == [(version.pk, sorted([first.pk, second.pk]))]  # one pass for both
    assert not in_label_map(version, first.pk) and not in_label_map(version, second.pk)
    assert not PendingRedaction.objects.exists()
    passes.clear()
    assert redaction.redact_pending() == {} and passes == []  # the first deletion's task, run late


@pytest.mark.django_db
def test_a_deletion_rolled_back_notes_nothing_and_a_failed_pass_is_retried_by_the_daily_retention(
    clean_queue, settings, django_capture_on_commit_callbacks, monkeypatch
):
    from django.db import transaction

    from people.models import FaceImage
    from privacy import services as privacy
    from training import redaction
    from training.models import PendingRedaction

    capture = django_capture_on_commit_callbacks
    version = train(capture, "nearest_neighbour", settings)
    kept, deleted = FaceImage.objects.in_gallery().filter(person=person_named("Joe Biden")).order_by("pk")[:2]
    with pytest.raises(RuntimeError), transaction.atomic():
        FaceImage.objects.get(pk=kept.pk).delete()
        raise RuntimeError("the request failed after the delete")
    assert not PendingRedaction.objects.exists() and FaceImage.objects.filter(pk=kept.pk).exists()

    with capture(execute=False):
        FaceImage.objects.get(pk=deleted.pk).delete()
    forget = redaction.forget_deleted_faces

    def worker_dies(*args, **kwargs):
        raise MemoryError("the worker ran out of memory")

    monkeypatch.setattr(redaction, "forget_deleted_faces", worker_dies)
    with pytest.raises(MemoryError):
        redaction.redact_pending()
    assert list(PendingRedaction.objects.values_list("face_id", flat=True)) == [deleted.pk]  # kept for the next pass
    monkeypatch.setattr(redaction, "forget_deleted_faces", forget)
    with capture(execute=True):
        privacy.apply_retention(days=0)
    assert not in_label_map(version, deleted.pk) and in_label_map(version, kept.pk)
    assert not PendingRedaction.objects.exists()
