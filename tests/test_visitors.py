"""Unknown visitors (visitors/): clustering of real strangers' faces, merging, consent, retention,
crops, erasure and export, and every /api/v1/visitors/ endpoint with its bad input and permissions.

The strangers are fixture people made inactive for the test (inactive people are never recognized):
Joe Biden (two different photos) and Paul Rudd. The real detector and embedder run on their photos.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.utils import timezone

from checkin.models import Consent
from people.models import FaceImage, Person
from recognition import services as recognition
from recognition.pipelines import main_face, read_upload
from security.models import ApiKey, Role
from visitors import services
from visitors.live import UnknownFace
from visitors.models import Sighting, Visitor, VisitorEnrollment

from .conftest import PEOPLE, person_named
from .test_authorization_matrix import ACTORS, http_client, world  # noqa: F401 (world is a fixture)

pytestmark = pytest.mark.django_db

BIDEN_1 = PEOPLE / "joe_biden" / "biden.jpg"
BIDEN_2 = PEOPLE / "joe_biden" / "biden2.jpg"
RUDD = PEOPLE / "paul_rudd" / "1.jpg"
_EMBEDDINGS: dict[Path, np.ndarray] = {}


def embedding_of(path: Path) -> np.ndarray:
    """The served pipeline's embedding of the photo's main face (cached per test session)."""
    if path not in _EMBEDDINGS:
        face, _ = main_face(read_upload(path.read_bytes()))
        _EMBEDDINGS[path] = face.embedding
    return _EMBEDDINGS[path]


def make_stranger(name: str) -> Person:
    """A fixture person made inactive: no longer recognized, so their face is a stranger's."""
    person = person_named(name)
    person.is_active = False
    person.save()
    return person


def consent_for(kiosk=None, user=None) -> Consent:
    return Consent.objects.create(
        purpose=Consent.Purpose.CHECKIN,
        kiosk=kiosk,
        user=user,
        notice_version=settings.CONSENT_NOTICE_VERSION,
        age_confirmed=True,
    )


def sight(path: Path, kiosk=None, consent=None, crop: bytes | None = None) -> Sighting:
    face = UnknownFace(frames=4, embeddings=[embedding_of(path)], crop=crop)
    sighting = services.record_sighting(face, consent or consent_for(kiosk), kiosk=kiosk)
    assert sighting is not None
    return sighting


@pytest.fixture(autouse=True)
def _no_crop_files_from_earlier_tests():
    """Files outlive the rolled-back rows of earlier tests: each test starts with no crop on disk."""
    import shutil

    shutil.rmtree(Path(settings.MEDIA_ROOT) / "visitors", ignore_errors=True)


def crop_files() -> list[Path]:
    folder = Path(settings.MEDIA_ROOT) / "visitors"
    return sorted(folder.rglob("*")) if folder.exists() else []


def small_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 90, 60)).save(buf, format="JPEG")
    return buf.getvalue()


# ---- clustering ------------------------------------------------------------------------------------


def test_two_photos_of_one_stranger_are_one_visitor_and_another_stranger_is_another(kiosk):
    make_stranger("Joe Biden")
    make_stranger("Paul Rudd")
    threshold = services.match_threshold()
    assert threshold == recognition.match_threshold()  # no VISITOR_MATCH_THRESHOLD: recognition's line
    assert float(embedding_of(BIDEN_1) @ embedding_of(BIDEN_2)) >= threshold
    assert float(embedding_of(BIDEN_1) @ embedding_of(RUDD)) < threshold

    first = sight(BIDEN_1, kiosk)
    second = sight(BIDEN_2, kiosk)
    other = sight(RUDD, kiosk)

    assert first.visitor_id == second.visitor_id != other.visitor_id
    assert Visitor.objects.count() == 2
    biden = Visitor.objects.with_counts().get(pk=first.visitor_id)
    assert biden.sighting_count == 2 and first.similarity is None and second.similarity >= threshold
    assert biden.first_seen_at <= biden.last_seen_at
    assert all(s.vector is not None and s.vector.shape == (128,) for s in biden.sightings.all())


def test_a_sighting_that_matches_two_visitors_merges_them(kiosk, settings):
    make_stranger("Joe Biden")
    settings.VISITOR_MATCH_THRESHOLD = 0.999  # so strict that the two photos start as two visitors
    a, b = sight(BIDEN_1, kiosk), sight(BIDEN_2, kiosk)
    assert a.visitor_id != b.visitor_id
    settings.VISITOR_MATCH_THRESHOLD = None  # the threshold in force: both photos are one face

    third = sight(BIDEN_1, kiosk)

    assert Visitor.objects.count() == 1
    merged = Visitor.objects.get()
    assert merged.pk == min(a.visitor_id, b.visitor_id) == third.visitor_id  # the oldest id is kept
    assert merged.sightings.count() == 3


def test_one_visit_is_one_sighting_however_many_tracks(kiosk):
    make_stranger("Joe Biden")
    consent = consent_for(kiosk)
    first = sight(BIDEN_1, kiosk, consent)
    again = sight(BIDEN_2, kiosk, consent)  # the face lost and found again on the same page load
    assert first.pk == again.pk and Sighting.objects.count() == 1
    assert Sighting.objects.get().frames == 8


def test_nothing_is_kept_without_active_consent(kiosk):
    make_stranger("Joe Biden")
    consent = consent_for(kiosk)
    consent.withdraw()
    face = UnknownFace(frames=4, embeddings=[embedding_of(BIDEN_1)])
    assert services.record_sighting(face, consent, kiosk=kiosk) is None
    assert services.record_sighting(face, None, kiosk=kiosk) is None
    assert not Visitor.objects.exists() and not Sighting.objects.exists()


def test_withdrawn_consent_takes_its_sightings_and_crop_with_it(kiosk, settings, django_capture_on_commit_callbacks):
    make_stranger("Joe Biden")
    kept, withdrawn = consent_for(kiosk), consent_for(kiosk)
    with django_capture_on_commit_callbacks(execute=True):
        sight(BIDEN_1, kiosk, withdrawn, crop=small_jpeg())
        sight(BIDEN_2, kiosk, kept)
    assert len(crop_files()) == 1
    with django_capture_on_commit_callbacks(execute=True):
        withdrawn.withdraw()
        assert services.forget_consent(withdrawn) == 1
    assert list(Sighting.objects.values_list("consent_id", flat=True)) == [kept.pk]
    assert crop_files() == []
    # and a visitor whose only visit was withdrawn is gone altogether
    with django_capture_on_commit_callbacks(execute=True):
        services.forget_consent(kept)
    assert not Visitor.objects.exists()


def test_visitor_created_event_carries_no_biometric_data(kiosk, django_capture_on_commit_callbacks):
    from integrations.models import Delivery, Webhook

    make_stranger("Joe Biden")
    Webhook.objects.create(url="https://hooks.example.com/in", events=["visitor.created"], secret="s3cret")
    with django_capture_on_commit_callbacks(execute=True):
        sight(BIDEN_1, kiosk)
        sight(BIDEN_2, kiosk)  # joins the same visitor: no second event
    deliveries = list(Delivery.objects.filter(event="visitor.created"))
    assert len(deliveries) == 1
    data = deliveries[0].payload["data"]
    assert set(data) == {"visitor_id", "first_seen_at", "kiosk"} and data["kiosk"]["name"] == "Front door"


# ---- retention -------------------------------------------------------------------------------------


def test_retention_purge_deletes_expired_sightings_crops_and_empty_visitors(kiosk, django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    from visitors.tasks import purge_expired

    assert Schedule.objects.filter(func="visitors.tasks.purge_expired", schedule_type="D").exists()
    make_stranger("Joe Biden")
    make_stranger("Paul Rudd")
    with django_capture_on_commit_callbacks(execute=True):
        old_rudd = sight(RUDD, kiosk, crop=small_jpeg())
        old_biden, new_biden = sight(BIDEN_1, kiosk), sight(BIDEN_2, kiosk)
    days_ago = timezone.now() - timedelta(days=settings.VISITOR_RETENTION_DAYS, hours=1)
    Sighting.objects.filter(pk__in=[old_rudd.pk, old_biden.pk]).update(seen_at=days_ago, last_seen_at=days_ago)
    assert len(crop_files()) == 1

    with django_capture_on_commit_callbacks(execute=True):
        assert purge_expired() == "2 visitor sightings and 1 visitors deleted"

    assert list(Sighting.objects.values_list("pk", flat=True)) == [new_biden.pk]
    assert list(Visitor.objects.values_list("pk", flat=True)) == [new_biden.visitor_id]
    biden = Visitor.objects.get()
    assert biden.first_seen_at == Sighting.objects.get().seen_at  # re-dated from what is kept
    assert crop_files() == []


# ---- crops: only with VISITOR_KEEP_CROP --------------------------------------------------------------


def test_no_crop_is_kept_when_the_setting_is_off(kiosk, settings):
    settings.VISITOR_KEEP_CROP = False
    track = _unknown_track(BIDEN_1)
    from visitors import live

    live.observe(track, _rgb(BIDEN_1))
    assert track.state[live.STATE_KEY].crop is None
    make_stranger("Joe Biden")
    sight(BIDEN_1, kiosk)
    assert crop_files() == [] and not Sighting.objects.exclude(crop="").exists()


def test_one_small_crop_is_kept_when_the_setting_is_on_and_served_to_staff_only(kiosk, settings, staff_api, user_api):
    settings.VISITOR_KEEP_CROP = True
    from PIL import Image

    from visitors import live

    track = _unknown_track(BIDEN_1)
    live.observe(track, _rgb(BIDEN_1))
    crop = track.state[live.STATE_KEY].crop
    assert Image.open(io.BytesIO(crop)).size == (settings.VISITOR_CROP_PX, settings.VISITOR_CROP_PX)
    make_stranger("Joe Biden")
    first = sight(BIDEN_1, kiosk, crop=crop)
    sight(BIDEN_2, kiosk, crop=crop)  # the visitor has one already: no second file
    assert len(crop_files()) == 1

    url = f"/api/v1/visitors/{first.visitor_id}/crop/"
    served = staff_api.get(url)
    assert served.status_code == 200 and served["Content-Type"] == "image/jpeg"
    assert served["Cache-Control"] == "private, no-store"
    assert user_api.get(url).status_code == 403
    from rest_framework.test import APIClient

    assert APIClient().get(url).status_code == 401
    assert staff_api.get(f"/api/v1/visitors/{first.visitor_id + 1000}/crop/").status_code == 404
    assert staff_api.get(f"/api/v1/visitors/{first.visitor_id}/").json()["crop_url"] == url


def _rgb(path: Path) -> np.ndarray:
    return read_upload(path.read_bytes())


def _unknown_track(path: Path):
    from recognition.engine.tracking import Track

    face, _ = main_face(_rgb(path))
    track = Track(id=1, box=face.face.box, landmarks=face.face.landmarks)
    track.record_match(None, 0.1, embedding=face.embedding)
    return track


# ---- the API ---------------------------------------------------------------------------------------


def test_staff_list_and_inspect_visitors(kiosk, staff_api):
    make_stranger("Joe Biden")
    make_stranger("Paul Rudd")
    biden = sight(BIDEN_1, kiosk)
    sight(BIDEN_2, kiosk)
    sight(RUDD, kiosk)

    listed = staff_api.get("/api/v1/visitors/")
    assert listed.status_code == 200
    rows = listed.json()["results"] if isinstance(listed.json(), dict) else listed.json()
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == 2
    row = by_id[biden.visitor_id]
    assert row["sighting_count"] == 2 and row["kiosks"] == [{"id": kiosk.pk, "name": "Front door"}]
    assert row["crop_url"] is None and row["first_seen_at"] and row["last_seen_at"]
    assert "embedding" not in json.dumps(row)

    detail = staff_api.get(f"/api/v1/visitors/{biden.visitor_id}/").json()
    assert len(detail["sightings"]) == 2 and all(s["has_embedding"] and not s["has_crop"] for s in detail["sightings"])
    assert staff_api.get("/api/v1/visitors/999999/").status_code == 404


def test_enroll_a_visitor_as_a_new_person_and_recognize_them(kiosk, staff_api, staff_user, django_capture_on_commit_callbacks):
    make_stranger("Joe Biden")
    first = sight(BIDEN_1, kiosk)
    latest = sight(BIDEN_2, kiosk)
    visitor_id = first.visitor_id

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(f"/api/v1/visitors/{visitor_id}/enroll/", {"name": "  Joseph R. Biden  "}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["person"]["name"] == "Joseph R. Biden" and body["accepted"] == 2
    person = Person.objects.get(pk=body["person"]["id"])
    assert person.legal_basis == "explicit_consent" and person.consent_recorded_by == staff_user
    assert person.consent_notice_version == first.consent.notice_version
    faces = list(person.faces.all())
    assert len(faces) == 2 and all(f.status == FaceImage.Status.ACCEPTED and not f.image and f.embedding for f in faces)
    link = VisitorEnrollment.objects.get(person=person)
    assert link.consent_id == latest.consent_id and link.sightings == 2  # the latest visit's consent and not link.assigned
    assert not Visitor.objects.filter(pk=visitor_id).exists() and not Sighting.objects.exists()

    # the gallery sees the new faces: another photo of him is now recognized by name
    answer = recognition.recognize(read_upload((PEOPLE.parent / "probes" / "obama_and_biden.jpg").read_bytes()))
    assert "Joseph R. Biden" in [f.match.name for f in answer.faces if f.match]


@pytest.mark.parametrize(
    "body, code",
    [
        ({}, "invalid"),
        ({"name": ""}, "invalid"),
        ({"name": "   "}, "invalid"),
        ({"name": "x" * 201}, "invalid"),
        ({"name": 12345}, "invalid"),
        ({"name": ["Joe"]}, "invalid"),
        ({"name": None}, "invalid"),
    ],
)
def test_enroll_refuses_bad_input(kiosk, staff_api, body, code):
    make_stranger("Joe Biden")
    visitor_id = sight(BIDEN_1, kiosk).visitor_id
    response = staff_api.post(f"/api/v1/visitors/{visitor_id}/enroll/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == code and "name" in response.json()["error"]["fields"]
    assert Visitor.objects.filter(pk=visitor_id).exists()


def test_enroll_and_assign_an_unknown_visitor_is_404(staff_api):
    for action, body in (("enroll", {"name": "A"}), ("assign", {"person_id": person_named("Joe Biden").pk})):
        response = staff_api.post(f"/api/v1/visitors/424242/{action}/", body, format="json")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert staff_api.post("/api/v1/visitors/424242/enroll/", "{not json", content_type="application/json").status_code == 404


def test_enroll_a_visitor_without_a_usable_embedding_is_409(kiosk, staff_api):
    make_stranger("Joe Biden")
    visitor_id = sight(BIDEN_1, kiosk).visitor_id
    Sighting.objects.update(embedder="another-embedder")
    response = staff_api.post(f"/api/v1/visitors/{visitor_id}/enroll/", {"name": "Joe"}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_embeddings"
    assert not Person.objects.filter(name="Joe").exists()


def test_assign_a_visitor_to_the_right_person_adds_their_faces(kiosk, staff_api, django_capture_on_commit_callbacks):
    biden = make_stranger("Joe Biden")
    visitor_id = sight(BIDEN_1, kiosk).visitor_id
    biden.is_active = True
    biden.save()
    before = biden.faces.count()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(f"/api/v1/visitors/{visitor_id}/assign/", {"person_id": biden.pk}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["accepted"] == 1 and biden.faces.count() == before + 1
    assert VisitorEnrollment.objects.get(person=biden).assigned
    assert not Visitor.objects.exists()


def test_assign_to_the_wrong_person_is_held_for_mislabel_review(kiosk, staff_api):
    make_stranger("Paul Rudd")
    # Joe Biden stays enrolled: his face given to Barack Obama looks more like Biden than Obama
    face = UnknownFace(frames=4, embeddings=[embedding_of(BIDEN_1)])
    visitor_id = services.record_sighting(face, consent_for(kiosk), kiosk=kiosk).visitor_id
    obama = person_named("Barack Obama")
    response = staff_api.post(f"/api/v1/visitors/{visitor_id}/assign/", {"person_id": obama.pk}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 0 and body["faces"][0]["status"] == "review"
    assert body["faces"][0]["reason_code"] == "possible_mislabel" and "Joe Biden" in body["faces"][0]["reason"]
    assert not FaceImage.objects.in_gallery().filter(person=obama, pk=body["faces"][0]["id"]).exists()


@pytest.mark.parametrize(
    "body, code",
    [
        ({}, "invalid"),
        ({"person_id": "abc"}, "invalid"),
        ({"person_id": True}, "invalid"),
        ({"person_id": 1.5}, "invalid"),
        ({"person_id": [1]}, "invalid"),
        ({"person_id": 0}, "invalid"),
        ({"person_id": 99999999}, "unknown_person"),
        ("inactive", "inactive_person"),
    ],
)
def test_assign_refuses_bad_input(kiosk, staff_api, body, code):
    rudd = make_stranger("Paul Rudd")
    visitor_id = sight(RUDD, kiosk).visitor_id
    if body == "inactive":
        body = {"person_id": rudd.pk}
    response = staff_api.post(f"/api/v1/visitors/{visitor_id}/assign/", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == code and "person_id" in error["fields"]
    assert Visitor.objects.filter(pk=visitor_id).exists()


def test_discard_deletes_the_visitor_its_sightings_and_crop(kiosk, staff_api, django_capture_on_commit_callbacks):
    make_stranger("Joe Biden")
    with django_capture_on_commit_callbacks(execute=True):
        visitor_id = sight(BIDEN_1, kiosk, crop=small_jpeg()).visitor_id
    assert len(crop_files()) == 1
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.delete(f"/api/v1/visitors/{visitor_id}/")
    assert response.status_code == 204
    assert not Visitor.objects.exists() and not Sighting.objects.exists() and crop_files() == []
    assert staff_api.delete(f"/api/v1/visitors/{visitor_id}/").status_code == 404


# ---- who may ---------------------------------------------------------------------------------------

# anonymous, user token, user session, client key (read role), kiosk key, staff token, staff session
EXPECTED = {
    "list": [401, 403, 403, 403, 403, 200, 200],
    "detail": [401, 403, 403, 403, 403, 200, 200],
    "enroll": [401, 403, 403, 403, 403, 400, 400],
    "assign": [401, 403, 403, 403, 403, 400, 400],
    "delete": [401, 403, 403, 403, 403, 204, 204],
    "export": [401, 403, 403, 403, 403, 200, 200],
}


@pytest.mark.parametrize("actor", ACTORS)
def test_only_staff_may_see_or_act_on_visitors(actor, world, kiosk):  # noqa: F811
    make_stranger("Joe Biden")
    visitor_id = sight(BIDEN_1, kiosk).visitor_id
    client = http_client(actor, world)
    base = f"/api/v1/visitors/{visitor_id}/"
    answers = {
        "list": client.get("/api/v1/visitors/").status_code,
        "detail": client.get(base).status_code,
        "export": client.get(base + "export/").status_code,
        "enroll": client.post(base + "enroll/", {}, format="json").status_code,
        "assign": client.post(base + "assign/", {}, format="json").status_code,
        "delete": client.delete(base).status_code,
    }
    index = ACTORS.index(actor)
    assert answers == {name: row[index] for name, row in EXPECTED.items()}


def test_a_staff_role_api_key_may_and_a_client_key_may_not(kiosk, staff_user):
    from rest_framework.test import APIClient

    make_stranger("Joe Biden")
    sight(BIDEN_1, kiosk)
    _, staff_key = ApiKey.issue(staff_user, "ops", Role.STAFF)
    _, client_key = ApiKey.issue(staff_user, "reports", Role.CLIENT)
    for key, expected in ((staff_key, 200), (client_key, 403)):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        assert client.get("/api/v1/visitors/").status_code == expected


# ---- erasure and export ----------------------------------------------------------------------------


def test_erasing_a_person_enrolled_from_a_visitor_leaves_nothing_of_the_visitor(
    kiosk, staff_api, settings, django_capture_on_commit_callbacks
):
    settings.VISITOR_KEEP_CROP = True
    make_stranger("Joe Biden")
    with django_capture_on_commit_callbacks(execute=True):
        first = sight(BIDEN_1, kiosk, crop=small_jpeg())
        latest = sight(BIDEN_2, kiosk)
        enrolled = staff_api.post(f"/api/v1/visitors/{first.visitor_id}/enroll/", {"name": "Visitor Joe"}, format="json")
    person_id = enrolled.json()["person"]["id"]
    assert crop_files() == []  # the crop went with the visitor; the person's faces have no photo

    export = staff_api.get(f"/api/v1/people/{person_id}/export/")
    data = json.loads(zipfile.ZipFile(io.BytesIO(export.getvalue())).read("person.json"))
    assert data["enrolled_from_visitors"][0]["consent_id"] == latest.consent_id
    assert data["enrolled_from_visitors"][0]["sightings"] == 2 and len(data["face_images"]) == 2

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{person_id}/").status_code == 204
    assert not Person.objects.filter(pk=person_id).exists()
    assert not VisitorEnrollment.objects.exists() and not Visitor.objects.exists() and not Sighting.objects.exists()
    assert not FaceImage.objects.filter(person_id=person_id).exists() and crop_files() == []


def test_a_visitor_export_holds_its_sightings_embeddings_and_crop(kiosk, staff_api, settings, django_capture_on_commit_callbacks):
    make_stranger("Joe Biden")
    with django_capture_on_commit_callbacks(execute=True):
        first = sight(BIDEN_1, kiosk, crop=small_jpeg())
        sight(BIDEN_2, kiosk)
    response = staff_api.get(f"/api/v1/visitors/{first.visitor_id}/export/")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response.streaming  # from a temporary file (privacy.views.archive_response), not built in memory
    archive = zipfile.ZipFile(io.BytesIO(response.getvalue()))
    data = json.loads(archive.read("visitor.json"))
    assert data["visitor"]["id"] == first.visitor_id and data["visitor"]["retention_days"] == settings.VISITOR_RETENTION_DAYS
    assert len(data["sightings"]) == 2 and all(s["embedding_float32_base64"] for s in data["sightings"])
    assert data["sightings"][0]["kiosk"] == "Front door"
    assert f"crops/{first.pk}.jpg" in archive.namelist()
    assert staff_api.get("/api/v1/visitors/999999/export/").status_code == 404


# ---- the notice ------------------------------------------------------------------------------------


def test_the_check_in_notice_says_what_is_kept_for_unknown_faces_and_for_how_long(client, plain_user, settings):
    client.force_login(plain_user)
    settings.VISITOR_RETENTION_DAYS = 7
    settings.VISITOR_KEEP_CROP = False
    page = client.get("/checkin/").content.decode()
    assert "matches nobody enrolled here" in page and "for 7 days" in page and "never a picture" in page
    assert settings.CONSENT_NOTICE_VERSION in page
    settings.VISITOR_KEEP_CROP = True
    assert "one small picture of the face" in client.get("/checkin/").content.decode()
    settings.VISITORS_ENABLED = False
    assert "matches nobody enrolled here" not in client.get("/checkin/").content.decode()


# ---- the admin -------------------------------------------------------------------------------------


def test_staff_enroll_a_visitor_from_the_admin_page(kiosk, client, staff_user, plain_user, django_capture_on_commit_callbacks):
    make_stranger("Joe Biden")
    first = sight(BIDEN_1, kiosk)
    sight(BIDEN_2, kiosk)
    page = f"/admin/visitors/visitor/{first.visitor_id}/change/"

    client.force_login(plain_user)
    assert client.get("/admin/visitors/visitor/").status_code == 302  # to the admin's sign-in
    assert client.post(page, {"_enroll": "1", "enroll-name": "Nope"}).status_code == 302
    assert not Person.objects.filter(name="Nope").exists()

    client.force_login(staff_user)
    listing = client.get("/admin/visitors/visitor/").content.decode()
    assert "Visitor #" in listing and "Front door" in listing
    shown = client.get(page).content.decode()
    assert "Enroll as a new person" in shown and 'id="sighting-count">2<' in shown
    assert client.post(page, {"_enroll": "1", "enroll-name": ""}).status_code == 200  # form error, nothing done
    assert Visitor.objects.filter(pk=first.visitor_id).exists()
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(page, {"_enroll": "1", "enroll-name": "Admin Joe"})
    person = Person.objects.get(name="Admin Joe")
    assert done.status_code == 302 and done["Location"] == f"/admin/people/person/{person.pk}/change/"
    assert person.faces.accepted().count() == 2 and not Visitor.objects.exists()


# ---- the live path: /ws/identify/ -------------------------------------------------------------------


@pytest.fixture
def _keep_the_test_transaction(monkeypatch):
    """As in test_live_stream: the consumer's ORM calls run inside the test's transaction."""
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


def test_a_stranger_on_the_check_in_socket_becomes_one_sighting_per_visit(kiosk, settings, _keep_the_test_transaction):
    from .test_live_stream import answers_until, camera_frame, communicator_for, open_with_consent, run

    settings.VISITOR_KEEP_CROP = False
    make_stranger("Joe Biden")
    frames = {path: camera_frame(path) for path in (BIDEN_1, BIDEN_2)}

    async def visit(path: Path, withdraw: bool = False) -> list[dict]:
        communicator = communicator_for(kiosk=kiosk)
        await open_with_consent(communicator)
        replies = []
        for _ in range(settings.CHECKIN_STABLE_FRAMES + 3):
            await communicator.send_to(bytes_data=frames[path])
            replies.extend(await answers_until(communicator, "faces"))
        if withdraw:
            await communicator.send_json_to({"type": "withdraw"})
            replies.extend(await answers_until(communicator, "consent_withdrawn"))
        await communicator.disconnect()
        return replies

    first = run(visit, BIDEN_1)
    assert all(f["state"] == "unknown" for m in first if m["type"] == "faces" for f in m["faces"])
    assert not any("visitor" in json.dumps(m) for m in first)  # the page is told nothing about visitors
    assert Visitor.objects.count() == 1 and Sighting.objects.count() == 1  # one per visit, not per frame
    sighting = Sighting.objects.get()
    assert sighting.kiosk == kiosk and sighting.frames >= settings.CHECKIN_STABLE_FRAMES and sighting.consent.is_active

    run(visit, BIDEN_2)  # another page load, another photo: the same visitor
    visitor = Visitor.objects.with_counts().get()
    assert visitor.sighting_count == 2
    assert crop_files() == []  # VISITOR_KEEP_CROP is off: no picture of the face anywhere

    run(visit, BIDEN_1, True)  # a third visit, withdrawn: what it kept goes with it
    assert Visitor.objects.with_counts().get().sighting_count == 2


def test_a_failing_visitor_store_never_breaks_check_in(kiosk, settings, monkeypatch, caplog, _keep_the_test_transaction):
    from .test_live_stream import answers_until, camera_frame, communicator_for, open_with_consent, run

    make_stranger("Joe Biden")
    frame = camera_frame(BIDEN_1)

    def broken(*args, **kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(services, "record_sighting", broken)

    async def visit() -> list[dict]:
        communicator = communicator_for(kiosk=kiosk)
        await open_with_consent(communicator)
        replies = []
        for _ in range(settings.CHECKIN_STABLE_FRAMES + 2):
            await communicator.send_to(bytes_data=frame)
            replies.extend(await answers_until(communicator, "faces"))
        await communicator.disconnect()
        return replies

    replies = run(visit)
    assert not any(m["type"] == "error" for m in replies)
    assert sum(m["type"] == "faces" for m in replies) == settings.CHECKIN_STABLE_FRAMES + 2
    assert "could not record an unknown visitor" in caplog.text
    assert caplog.text.count("could not record an unknown visitor") == 1  # one attempt per track
