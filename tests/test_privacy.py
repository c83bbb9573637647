"""Erasure, photo retention and export of a person's data, on the real enrolled gallery."""

import base64
import io
import json
import os
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from people.models import FaceImage
from privacy import services as privacy
from security.models import ApiKey, AuditEvent, Role

from .conftest import PEOPLE, PROBES, person_named, read, token_client

pytestmark = pytest.mark.django_db

OBAMA = read(PROBES / "obama1.jpg")


def recognize(api, data: bytes = OBAMA) -> dict:
    response = api.post("/api/v1/recognize/", {"image": SimpleUploadedFile("p.jpg", data)}, format="multipart")
    assert response.status_code == 200, response.content
    return response.json()


def file_paths(faces) -> list[Path]:
    return [Path(f.path) for face in faces for f in (face.image, face.crop, face.region) if f]


def with_own_files(person):
    """Point the person's rows at copies of their files: these tests delete files, and the files
    (unlike the rows, rolled back after each test) are shared by the whole session."""
    for face in person.faces.all():
        for field in (face.image, face.crop, face.region):
            if field:
                copy = field.storage.save(field.name, field.open("rb"))
                field.close()
                field.name = copy
        FaceImage.objects.filter(pk=face.pk).update(image=face.image.name, crop=face.crop.name, region=face.region.name)
    return person


def test_erasure_deletes_files_embeddings_and_is_used_at_once(staff_api, django_capture_on_commit_callbacks):
    obama = with_own_files(person_named("Barack Obama"))
    assert recognize(staff_api)["faces"][0]["match"]["person_id"] == obama.pk
    faces = list(obama.faces.all())
    paths = file_paths(faces)
    assert paths and all(p.exists() for p in paths)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
    assert not FaceImage.objects.filter(pk__in=[f.pk for f in faces]).exists()
    assert not any(p.exists() for p in paths)
    # the very next recognition no longer knows him
    face = recognize(staff_api)["faces"][0]
    assert face["match"] is None
    assert all(c["person_id"] != obama.pk for c in face["candidates"])


def test_erasure_removes_the_person_from_the_audit_log(staff_api, django_capture_on_commit_callbacks):
    obama = with_own_files(person_named("Barack Obama"))
    recognize(staff_api)
    event = AuditEvent.objects.about(obama.pk).get()
    with django_capture_on_commit_callbacks(execute=True):
        staff_api.delete(f"/api/v1/people/{obama.pk}/")
    event.refresh_from_db()
    assert event.person_ids == "" and event.result["matches"] == [] and event.result["erased_people"] == 1
    assert event.result["faces"] == 1  # the call itself stays on record


def test_retention_deletes_old_photos_but_keeps_embeddings(user_api, staff_api, django_capture_on_commit_callbacks):
    obama = with_own_files(person_named("Barack Obama"))
    old = list(obama.faces.accepted())
    FaceImage.objects.filter(pk__in=[f.pk for f in old]).update(created_at=timezone.now() - timedelta(days=40))
    recent = FaceImage.objects.exclude(person=obama).first()
    originals = [Path(f.image.path) for f in old]
    crops = [Path(f.crop.path) for f in old]
    vectors = {f.pk: f.vector.copy() for f in old}

    with django_capture_on_commit_callbacks(execute=True):
        report = privacy.apply_retention(days=30)

    assert report.photos_deleted == len(old) and report.crops_deleted == 0
    assert not any(p.exists() for p in originals)
    assert all(p.exists() for p in crops)  # FACE_RETENTION_KEEP_CROPS is on by default
    for face in FaceImage.objects.filter(pk__in=vectors):
        assert not face.image and face.status == FaceImage.Status.ACCEPTED
        np.testing.assert_array_equal(face.vector, vectors[face.pk])
    assert Path(FaceImage.objects.get(pk=recent.pk).image.path).exists()
    # recognition still works from the kept embeddings
    assert recognize(user_api)["faces"][0]["match"]["name"] == "Barack Obama"
    # and the API shows the photo as gone rather than failing (face metadata: staff or a read role)
    listing = staff_api.get(f"/api/v1/people/{obama.pk}/faces/").json()["results"]
    assert {f["image_url"] for f in listing if f["id"] in vectors} == {None}
    gone = next(iter(vectors))
    assert staff_api.get(f"/api/v1/people/{obama.pk}/faces/{gone}/image/").status_code == 404
    assert staff_api.get(f"/api/v1/people/{obama.pk}/faces/{gone}/crop/").status_code == 200


def test_retention_can_delete_crops_too(settings, django_capture_on_commit_callbacks):
    settings.FACE_RETENTION_KEEP_CROPS = False
    face = with_own_files(person_named("Joe Biden")).faces.accepted().first()
    FaceImage.objects.filter(pk=face.pk).update(created_at=timezone.now() - timedelta(days=400))
    crop = Path(face.crop.path)
    with django_capture_on_commit_callbacks(execute=True):
        report = privacy.apply_retention(days=365)
    assert report.photos_deleted == 1 and report.crops_deleted == 1 and not crop.exists()
    assert FaceImage.objects.get(pk=face.pk).embedding is not None


def test_turning_keep_crops_off_deletes_the_crops_and_regions_of_photos_that_already_expired(
    settings, django_capture_on_commit_callbacks
):
    faces = list(with_own_files(person_named("Joe Biden")).faces.accepted())
    FaceImage.objects.filter(pk__in=[f.pk for f in faces]).update(created_at=timezone.now() - timedelta(days=400))
    photos = [Path(f.image.path) for f in faces]
    kept = [Path(f.path) for face in faces for f in (face.crop, face.region)]
    assert faces and all(face.crop and face.region for face in faces)

    with django_capture_on_commit_callbacks(execute=True):
        report = privacy.apply_retention(days=365)  # FACE_RETENTION_KEEP_CROPS is on by default
    assert (report.photos_deleted, report.crops_deleted) == (len(faces), 0)
    assert not any(p.exists() for p in photos) and all(p.exists() for p in kept)

    settings.FACE_RETENTION_KEEP_CROPS = False
    with django_capture_on_commit_callbacks(execute=True):
        report = privacy.apply_retention(days=365)
    # no photo was left to delete: only the crops and regions the setting no longer keeps
    assert (report.photos_deleted, report.crops_deleted) == (0, len(faces))
    assert not any(p.exists() for p in kept)
    for face in FaceImage.objects.filter(pk__in=[f.pk for f in faces]):
        assert not face.image and not face.crop and not face.region
        assert face.embedding is not None and face.status == FaceImage.Status.ACCEPTED  # still recognised

    with django_capture_on_commit_callbacks(execute=True):
        report = privacy.apply_retention(days=365)
    assert (report.photos_deleted, report.crops_deleted) == (0, 0)  # nothing left to delete


def test_retention_zero_keeps_photos_and_old_audit_events_go():
    AuditEvent.objects.create(action="recognize", actor="x", status_code=200, created_at=timezone.now() - timedelta(days=800))
    report = privacy.apply_retention(days=0)
    assert report.photos_deleted == 0 and report.audit_events_deleted == 1


def test_old_check_ins_and_webhook_deliveries_go_and_the_notice_states_the_period(settings, client, kiosk):
    from checkin.models import CheckIn
    from integrations.models import Delivery, Webhook

    settings.CHECKIN_RETENTION_DAYS, settings.WEBHOOK_LOG_RETENTION_DAYS = 90, 30
    old, recent = timezone.now() - timedelta(days=91), timezone.now() - timedelta(days=89)
    obama = person_named("Barack Obama")
    for when in (old, recent):
        CheckIn.objects.create(person=obama, similarity=0.8, threshold=0.55, frames=4, kiosk=kiosk, checked_in_at=when)
    hook = Webhook.objects.create(url="https://example.org/hook", events=["checkin.created"], secret="s" * 32)
    for age in (31, 29):
        delivery = Delivery.objects.create(webhook=hook, event="checkin.created", payload={"person": {"name": "Barack Obama"}})
        Delivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - timedelta(days=age))
    report = privacy.apply_retention()
    assert (report.checkins_deleted, report.webhook_deliveries_deleted) == (1, 1)
    assert list(CheckIn.objects.values_list("checked_in_at", flat=True)) == [recent]
    assert Delivery.objects.count() == 1
    client.force_login(get_user_model().objects.create_user("walk-in", password="x" * 12))
    assert "A check-in record is kept (for 90 days, then deleted)" in client.get("/checkin/").content.decode()
    settings.CHECKIN_RETENTION_DAYS = 0
    assert privacy.apply_retention().checkins_deleted == 0 and CheckIn.objects.count() == 1


def test_the_live_check_ins_audit_rows_that_name_someone_go_with_the_check_ins_as_the_notice_says(settings, kiosk):
    from checkin.edge_api import checkin_notice
    from security.audit import record_stream_event

    settings.CHECKIN_RETENTION_DAYS, settings.AUDIT_LOG_RETENTION_DAYS = 30, 365
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    record_stream_event("checkin", kiosk=kiosk, result={"checkin_id": 1, "person_id": obama.pk}, person_ids=[obama.pk])
    record_stream_event("stream_identify", kiosk=kiosk, result={"person_id": biden.pk}, person_ids=[biden.pk])  # older rows
    record_stream_event("stream", kiosk=kiosk, result={"frames": 40, "identified": 2, "checkins": 1})  # names nobody
    record_stream_event("checkin", kiosk=kiosk, result={"checkin_id": 1, "already": True})  # a repeat names nobody
    AuditEvent.objects.create(action="recognize", actor="x", status_code=200, person_ids=f",{obama.pk},")
    AuditEvent.objects.update(created_at=timezone.now() - timedelta(days=31))
    named_recently = AuditEvent.objects.create(action="checkin", actor="y", status_code=200, person_ids=f",{obama.pk},")

    assert privacy.apply_retention(days=0).audit_events_deleted == 2
    assert not AuditEvent.objects.filter(action="stream_identify").exists()
    assert sorted(AuditEvent.objects.values_list("action", flat=True)) == ["checkin", "checkin", "recognize", "stream"]
    assert set(AuditEvent.objects.about(obama.pk)) == {named_recently, AuditEvent.objects.get(action="recognize")}
    kept = checkin_notice()["kept"]
    assert "A check-in record is kept (for 30 days, then deleted)" in kept
    assert "security log notes the same check-in with this device's network address (for 30 days, then deleted)" in kept
    settings.AUDIT_LOG_RETENTION_DAYS = 10  # the shorter period applies
    assert "network address (for 10 days, then deleted)" in checkin_notice()["kept"]
    settings.CHECKIN_RETENTION_DAYS = settings.AUDIT_LOG_RETENTION_DAYS = 0
    assert "network address (until staff delete it)" in checkin_notice()["kept"]
    assert privacy.apply_retention(days=0).audit_events_deleted == 0


def test_retention_deletes_old_consents_nothing_refers_to_and_keeps_the_rest(settings, plain_user):
    from checkin.models import CheckIn, Consent
    from visitors.models import Sighting, Visitor, VisitorEnrollment

    settings.CHECKIN_RETENTION_DAYS = 30
    now = timezone.now()
    old, recent = now - timedelta(days=31), now - timedelta(days=29)

    def consent(given_at, purpose="checkin", **fields) -> Consent:
        return Consent.objects.create(purpose=purpose, user=plain_user, notice_version="v", given_at=given_at, **fields)

    unused, withdrawn, verify = consent(old), consent(old, withdrawn_at=old), consent(old, purpose="verify")
    young = consent(recent)
    # kept by what refers to them: a check-in (itself within its period), a visitor's sighting, an enrollment
    under_checkin, under_sighting, under_enrollment = consent(old), consent(old), consent(old)
    withdrawn_under_checkin = consent(old, withdrawn_at=old)
    for c in (under_checkin, withdrawn_under_checkin):
        CheckIn.objects.create(person=person_named("Barack Obama"), similarity=0.9, threshold=0.5, frames=4, consent=c)
    visitor = Visitor.objects.create(first_seen_at=recent, last_seen_at=recent)
    Sighting.objects.create(visitor=visitor, seen_at=recent, last_seen_at=recent, consent=under_sighting)
    VisitorEnrollment.objects.create(person=person_named("Barack Obama"), consent=under_enrollment)
    # an old check-in expires in the same run, and then its consent goes too
    with_old_checkin = consent(old)
    CheckIn.objects.create(similarity=0.9, threshold=0.5, frames=4, consent=with_old_checkin, checked_in_at=old)

    report = privacy.apply_retention(now=now)

    assert report.consents_deleted == 4
    kept = set(Consent.objects.values_list("pk", flat=True))
    assert kept == {young.pk, under_checkin.pk, withdrawn_under_checkin.pk, under_sighting.pk, under_enrollment.pk}
    assert not kept & {unused.pk, withdrawn.pk, verify.pk, with_old_checkin.pk}
    settings.CHECKIN_RETENTION_DAYS = 0  # keep for ever: consents too
    consent(old)
    assert privacy.apply_retention(now=now).consents_deleted == 0


def test_retention_deletes_edge_check_ins_dated_in_the_future_which_would_never_expire(settings):
    from checkin.models import CheckIn, RejectedMatch

    settings.CHECKIN_RETENTION_DAYS, settings.EDGE_CLOCK_SKEW_SECONDS = 30, 300
    now = timezone.now()
    obama = person_named("Barack Obama")

    def checkin(at, source="device") -> CheckIn:
        return CheckIn.objects.create(person=obama, similarity=0.9, threshold=0.5, frames=4, checked_in_at=at, time_source=source)

    # stored before the server refused them (a device clock at year 9999, or a day ahead)
    far, ahead = checkin(now.replace(year=9999)), checkin(now + timedelta(days=1))
    RejectedMatch.objects.create(person=obama, checkin_id=far.pk, checked_in_at=far.checked_in_at, similarity=0.7, threshold=0.55)
    within_skew, today = checkin(now + timedelta(seconds=200)), checkin(now - timedelta(hours=1))
    report = privacy.apply_retention(now=now)
    assert report.future_checkins_deleted == 2 and not RejectedMatch.objects.filter(checkin_id=far.pk).exists()
    assert set(CheckIn.objects.filter(person=obama).values_list("pk", flat=True)) >= {within_skew.pk, today.pk}
    assert not CheckIn.objects.filter(pk__in=[far.pk, ahead.pk]).exists()
    settings.CHECKIN_RETENTION_DAYS = 0  # check-ins kept until staff delete them: nothing expires, these neither
    checkin(now + timedelta(days=2))
    assert privacy.apply_retention(now=now).future_checkins_deleted == 0


def refer_to(consent, model):
    """A row of ``model`` (a table with a foreign key to Consent) referring to ``consent`` (None: to none)."""
    from checkin.models import CheckIn
    from visitors.models import Sighting, Visitor, VisitorEnrollment

    at = timezone.now() - timedelta(days=1)
    if model is CheckIn:
        return CheckIn.objects.create(similarity=0.9, threshold=0.5, frames=4, consent=consent)
    if model is Sighting:
        visitor = Visitor.objects.create(first_seen_at=at, last_seen_at=at)
        return Sighting.objects.create(visitor=visitor, seen_at=at, last_seen_at=at, consent=consent)
    if model is VisitorEnrollment:
        return VisitorEnrollment.objects.create(person=person_named("Barack Obama"), consent=consent)
    raise AssertionError(f"{model.__name__} now refers to consents: add it to refer_to()")


def test_retention_keeps_an_old_consent_any_table_refers_to_and_rows_referring_to_none_keep_nothing(settings, plain_user):
    from checkin.models import Consent

    settings.CHECKIN_RETENTION_DAYS = 30
    now = timezone.now()

    def old_consent() -> Consent:
        return Consent.objects.create(purpose="checkin", user=plain_user, notice_version="v", given_at=now - timedelta(days=31))

    tables = {r.related_model for r in Consent._meta.get_fields(include_hidden=True) if r.auto_created and not r.concrete}
    referred = {model: old_consent() for model in tables}
    rows = [refer_to(consent, model) for model, consent in referred.items()]
    # rows whose consent column is empty, in every table that allows it: they neither keep a
    # consent nor, as one NULL in a NOT IN list would, keep every consent
    empty = [refer_to(None, model) for model in tables if model._meta.get_field("consent").null]
    unreferenced = [old_consent(), old_consent()]

    report = privacy.apply_retention(now=now)

    assert len(tables) == 3 and len(empty) == 2
    assert report.consents_deleted == 2
    assert set(Consent.objects.values_list("pk", flat=True)) == {c.pk for c in referred.values()}
    assert not Consent.objects.filter(pk__in=[c.pk for c in unreferenced]).exists()
    for row in rows:  # still referring to their consent (not set to NULL, not deleted with it)
        row.refresh_from_db()
        assert row.consent_id == referred[type(row)].pk
    for row in empty:
        row.refresh_from_db()
        assert row.consent_id is None


def test_retention_finds_unreferenced_consents_with_not_exists_rather_than_a_not_in_list(settings, plain_user):
    """NOT IN (subquery) over a million check-ins is not hashed by PostgreSQL past work_mem: each
    consent is compared with every check-in (bench/consent_purge.py measures both)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from checkin.models import Consent

    settings.CHECKIN_RETENTION_DAYS = 30
    Consent.objects.create(purpose="checkin", user=plain_user, notice_version="v", given_at=timezone.now() - timedelta(days=31))
    with CaptureQueriesContext(connection) as queries:
        assert privacy.apply_retention(now=timezone.now()).consents_deleted == 1
    reads = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and 'FROM "recognition_consent"' in q["sql"]]
    assert reads and all(sql.count("NOT EXISTS") == 3 and " IN (SELECT" not in sql for sql in reads), reads


def test_retention_command_and_daily_schedule_exist(capsys):
    call_command("apply_retention", "--days", "3650")
    out = capsys.readouterr().out
    assert "Deleted 0 original photos" in out and "0 photos of uploads that were rolled back" in out
    assert "0 consent records nothing referred to" in out
    schedule = Schedule.objects.get(name="privacy: apply retention")
    assert schedule.func == "privacy.tasks.apply_retention" and schedule.schedule_type == Schedule.DAILY


def test_staff_export_a_persons_data_as_a_zip(staff_api, user_api):
    obama = person_named("Barack Obama")
    recognize(user_api)
    response = staff_api.get(f"/api/v1/people/{obama.pk}/export/")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.getvalue()))
    data = json.loads(archive.read("person.json"))
    assert data["person"]["name"] == "Barack Obama"
    faces = data["face_images"]
    assert len(faces) == obama.faces.count()
    accepted = [f for f in faces if f["status"] == "accepted"]
    vector = np.frombuffer(base64.b64decode(accepted[0]["embedding_float32_base64"]), np.float32)
    assert vector.shape == (128,) and abs(np.linalg.norm(vector) - 1) < 1e-3
    names = set(archive.namelist())
    assert {f["photo"] for f in faces} <= names and {f["crop"] for f in accepted} <= names
    assert archive.read(faces[0]["photo"]) == Path(obama.faces.get(pk=faces[0]["id"]).image.path).read_bytes()
    assert data["recognitions"][0]["action"] == "recognize"


def test_only_staff_export(user_api, staff_user):
    obama = person_named("Barack Obama")
    assert user_api.get(f"/api/v1/people/{obama.pk}/export/").status_code == 403
    key, raw = ApiKey.issue(staff_user, "client", Role.CLIENT)
    client = token_client(staff_user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert client.get(f"/api/v1/people/{obama.pk}/export/").status_code == 403
    assert token_client(staff_user).get("/api/v1/people/999999/export/").status_code == 404


def test_export_from_the_admin(client, staff_user):
    client.force_login(staff_user)
    obama = person_named("Barack Obama")
    response = client.post("/admin/people/person/", {"action": "export_data", "_selected_action": [obama.pk]})
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert json.loads(zipfile.ZipFile(io.BytesIO(response.getvalue())).read("person.json"))["person"]["id"] == obama.pk


def files_open_in(folder: Path) -> list[str]:
    """This process's open files in ``folder``: an anonymous temporary file (it has no name on disk)
    shows as '<folder>/#<inode> (deleted)'."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(f"{folder}/"):
            found.append(target)
    return found


@pytest.fixture
def export_spool(settings, tmp_path):
    """Exports spill to a folder of the test's own past 1 kB: a person's photos are far more."""
    settings.EXPORT_TEMP_DIR, settings.EXPORT_SPOOL_MAX_BYTES = str(tmp_path), 1024
    return tmp_path


def test_an_export_is_streamed_from_a_temporary_file_that_is_gone_once_sent(staff_api, client, staff_user, export_spool):
    obama = person_named("Barack Obama")
    response = staff_api.get(f"/api/v1/people/{obama.pk}/export/")
    assert response.status_code == 200 and response.streaming and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="person-{obama.pk}.zip"'
    assert len(files_open_in(export_spool)) == 1  # the archive is on disk, not in the worker's memory
    body = b"".join(response.streaming_content)
    assert len(body) == int(response["Content-Length"]) > 1024
    assert json.loads(zipfile.ZipFile(io.BytesIO(body)).read("person.json"))["person"]["id"] == obama.pk
    # sent: the response was closed (the test client closes it once its content is read, as a server does)
    assert files_open_in(export_spool) == [] and list(export_spool.iterdir()) == []

    # the admin's export action answers the same way
    client.force_login(staff_user)
    response = client.post("/admin/people/person/", {"action": "export_data", "_selected_action": [obama.pk]})
    assert response.status_code == 200 and response.streaming and len(files_open_in(export_spool)) == 1
    assert zipfile.ZipFile(io.BytesIO(response.getvalue())).read("person.json")
    assert files_open_in(export_spool) == [] and list(export_spool.iterdir()) == []


def test_an_export_that_fails_midway_leaves_no_file_behind(staff_api, export_spool, monkeypatch):
    from django.db.models.fields.files import FieldFile

    obama = person_named("Barack Obama")
    real_open, opened, on_disk = FieldFile.open, [], []

    def storage_fails_on_the_third_file(self, mode="rb"):
        opened.append(self.name)
        if len(opened) == 3:
            on_disk.extend(files_open_in(export_spool))
            raise RuntimeError("the storage went away")
        return real_open(self, mode)

    monkeypatch.setattr(FieldFile, "open", storage_fails_on_the_third_file)
    staff_api.raise_request_exception = False
    response = staff_api.get(f"/api/v1/people/{obama.pk}/export/")
    assert response.status_code == 500
    assert len(on_disk) == 1  # the archive had reached the disk when it failed
    assert files_open_in(export_spool) == [] and list(export_spool.iterdir()) == []


def checkin_of(person):
    from checkin.models import CheckIn

    return CheckIn.objects.create(person=person, similarity=0.8, threshold=0.55, frames=5)


def test_erasure_deletes_check_ins_by_default(staff_api, django_capture_on_commit_callbacks):
    from checkin.models import CheckIn

    person = with_own_files(person_named("Joe Biden"))
    checkin = checkin_of(person)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{person.pk}/").status_code == 204
    assert not CheckIn.objects.filter(pk=checkin.pk).exists()


def test_erasure_can_keep_check_ins_anonymised(staff_api, settings, django_capture_on_commit_callbacks):
    from checkin.models import CheckIn

    settings.ERASE_CHECKINS_WITH_PERSON = False
    person = with_own_files(person_named("Joe Biden"))
    checkin = checkin_of(person)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{person.pk}/").status_code == 204
    assert CheckIn.objects.get(pk=checkin.pk).person is None


def test_export_includes_check_ins(staff_api):
    person = person_named("Joe Biden")
    checkin_of(person)
    data = json.loads(
        zipfile.ZipFile(io.BytesIO(staff_api.get(f"/api/v1/people/{person.pk}/export/").getvalue())).read("person.json")
    )
    assert len(data["checkins"]) == 1 and data["checkins"][0]["similarity"] == 0.8


def jpeg_with_a_caption(source: Path) -> bytes:
    """A real photo carrying what cameras and photo desks write: a caption naming someone else, the
    camera owner, a comment, and the EXIF orientation (6: rotate to display)."""
    from PIL import Image

    with Image.open(source) as img:
        exif = Image.Exif()
        exif[0x010E] = "Barack Obama with Vice President Joe Biden"  # ImageDescription
        exif[0x013B] = "Pete Souza"  # Artist
        exif[0x0112] = 6
        buf = io.BytesIO()
        img.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(
            buf, format="JPEG", exif=exif.tobytes(), comment=b"Biden at the door", quality=92
        )
    return buf.getvalue()


@pytest.mark.parametrize("path", ["api", "admin"])
def test_a_photo_is_stored_without_its_caption_but_keeps_its_orientation(
    path, staff_api, admin_client, django_capture_on_commit_callbacks
):
    from PIL import Image

    person = person_named("Barack Obama")
    data = jpeg_with_a_caption(PEOPLE / "barack_obama" / "obama2.jpg")
    assert b"Biden" in data and b"Souza" in data
    upload = SimpleUploadedFile("captioned.jpg", data, content_type="image/jpeg")
    with django_capture_on_commit_callbacks(execute=True):
        if path == "api":
            response = staff_api.post(f"/api/v1/people/{person.pk}/faces/", {"image": upload}, format="multipart")
            assert response.status_code == 201, response.content
        else:
            response = admin_client.post("/admin/people/faceimage/add/", {"person": person.pk, "image": upload})
            assert response.status_code == 302, response.content.decode()[:2000]
    face = FaceImage.objects.get(person=person, original_name="captioned.jpg")
    with face.image.open("rb") as fh:
        stored = fh.read()
    assert b"Biden" not in stored and b"Souza" not in stored
    with Image.open(io.BytesIO(stored)) as img:
        assert img.getexif().get(0x0112) == 6  # decoding still turns it upright
    face.refresh_from_db()
    assert face.status == FaceImage.Status.ACCEPTED, face.reason  # found upright, embedded


def review_reason(looks_like: str, own: str) -> str:
    """A possible_mislabel reason as recognition.enrollment words it."""
    return (
        f"Looks more like {looks_like} (similarity 0.71) than {own} (0.40 to {own}'s other photos). "
        "Check the photo is filed under the right person, then approve it."
    )


def held_for_review(person, reason: str, looks_like=None) -> FaceImage:
    return FaceImage.objects.create(
        person=person,
        image="",
        status="review",
        reason_code="possible_mislabel",
        reason=reason,
        reason_person_id=None if looks_like is None else looks_like.pk,
    )


def test_erasure_rewrites_only_the_reasons_about_the_person_not_names_that_contain_theirs_nor_the_advice(
    django_capture_on_commit_callbacks,
):
    from people.models import Person

    ann, ann_smith, bob, check = (
        Person.objects.create(name=n, legal_basis="explicit_consent") for n in ("Ann", "Ann Smith", "Bob", "Check")
    )
    about_bob = held_for_review(ann_smith, review_reason("Bob", "Ann Smith"), looks_like=bob)
    about_ann = held_for_review(bob, review_reason("Ann Jones", "Bob"), looks_like=ann)  # she was renamed since
    about_another_ann = held_for_review(bob, review_reason("Ann", "Bob"), looks_like=Person.objects.create(name="Ann"))
    # written before photos recorded whom their reason names: judged by the reason's wording alone
    old_about_ann = held_for_review(bob, review_reason("Ann", "Bob"))
    old_about_ann_smith = held_for_review(bob, review_reason("Ann Smith", "Bob"))

    with django_capture_on_commit_callbacks(execute=True):
        assert privacy.erase_person(ann).review_reasons_rewritten == 2
        assert privacy.erase_person(check).review_reasons_rewritten == 0
    erased = review_reason("another enrolled person (erased)", "Bob")
    for face, reason in (
        (about_bob, review_reason("Bob", "Ann Smith")),
        (about_ann, erased),
        (about_another_ann, review_reason("Ann", "Bob")),
        (old_about_ann, erased),
        (old_about_ann_smith, review_reason("Ann Smith", "Bob")),
    ):
        face.refresh_from_db()
        assert face.reason == reason
    assert about_ann.reason_person_id is None and about_bob.reason_person_id == bob.pk


def test_the_real_mislabel_check_records_whom_the_photo_looks_like(staff_api, django_capture_on_commit_callbacks):
    from people.models import Person

    obama = with_own_files(person_named("Barack Obama"))  # his erasure below deletes the files its rows name
    other = Person.objects.create(name="Filed Under Someone Else", legal_basis="explicit_consent")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(
            f"/api/v1/people/{other.pk}/faces/", {"image": SimpleUploadedFile("p.jpg", OBAMA)}, format="multipart"
        )
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.status == "review" and face.reason.startswith("Looks more like Barack Obama ("), face.reason
    assert face.reason_person_id == obama.pk
    with django_capture_on_commit_callbacks(execute=True):
        privacy.erase_person(obama)
    face.refresh_from_db()
    assert "Obama" not in face.reason and "Filed Under Someone Else" in face.reason and face.reason_person_id is None


def test_a_person_erased_while_a_photo_is_judged_is_not_named_in_its_review_reason(
    staff_api, monkeypatch, django_capture_on_commit_callbacks
):
    """The mislabel check names the person a photo looks like; that person is erased before the
    verdict is written (their erasure rewrote the reasons it found then, not this one): the verdict
    written says "another enrolled person (erased)" and records nobody."""
    from people.models import Person
    from recognition import enrollment

    obama = with_own_files(person_named("Barack Obama"))
    other = Person.objects.create(name="Filed Under Someone Else", legal_basis="explicit_consent")
    check = enrollment._mislabel_check

    def erased_meanwhile(face, embedding):
        verdict = check(face, embedding)
        assert verdict.reason_person_id == obama.pk, verdict.reason  # the check named him
        privacy.erase_person(obama)
        return verdict

    monkeypatch.setattr(enrollment, "_mislabel_check", erased_meanwhile)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(
            f"/api/v1/people/{other.pk}/faces/", {"image": SimpleUploadedFile("p.jpg", OBAMA)}, format="multipart"
        )
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.status == "review" and face.reason_person_id is None
    assert "Obama" not in face.reason and face.reason.startswith("Looks more like another enrolled person (erased)")


def test_erasure_removes_the_admin_history_of_rejected_matches_deleted_before_and_keeps_a_longer_names(
    client, staff_user, django_capture_on_commit_callbacks
):
    from django.contrib.admin.models import CHANGE, LogEntry

    from checkin.models import RejectedMatch
    from people.models import Person

    staff_user.is_superuser = True  # deleting rejected matches in the admin
    staff_user.save()
    client.force_login(staff_user)
    grace, grace_hopper = (Person.objects.create(name=n, legal_basis="explicit_consent") for n in ("Grace", "Grace Hopper"))

    def rejected(person) -> RejectedMatch:
        return RejectedMatch.objects.create(
            person=person, checkin_id=999, checked_in_at=timezone.now(), similarity=0.7, threshold=0.55
        )

    gone, kept, hers = rejected(grace), rejected(grace_hopper), rejected(grace)
    for match in (gone, kept):
        assert client.post(f"/admin/checkin/rejectedmatch/{match.pk}/delete/", {"post": "yes"}).status_code == 302
    LogEntry.objects.log_actions(staff_user.pk, [hers], CHANGE, change_message="[]", single_object=True)  # a row of hers
    assert LogEntry.objects.filter(object_repr__startswith="not Grace at ").count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        privacy.erase_person(grace)
    left = list(LogEntry.objects.values_list("object_repr", flat=True))
    assert not [r for r in left if r.startswith("not Grace at ")], left
    assert any(r.startswith("not Grace Hopper at ") for r in left), left
