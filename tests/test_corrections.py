"""Corrections: staff say a check-in was "not this person", and review the gallery faces behind it.

The story on real faces: Joe Biden is not enrolled (his person is inactive), but one of his photos
was filed under Barack Obama and approved. Biden walks up to the kiosk and is checked in as Obama,
on that photo. Staff reject the check-in: it leaves the feed, the list and the attendance report,
the wrong pair is kept, and the photo is listed in Obama's outlier review with the rejection.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from checkin.models import CheckIn, RejectedMatch
from people.models import FaceImage, Person

from .conftest import PEOPLE, person_named, read, token_client
from .test_checkin_feed import feed_for, stream_until_checked_in
from .test_erasure import session_files_restored  # noqa: F401  (erasure deletes the session gallery's files)
from .test_live_stream import camera_frame, communicator_for, open_with_consent, receive

pytestmark = pytest.mark.django_db

BIDEN_AT_THE_DOOR = camera_frame(PEOPLE / "joe_biden" / "biden2.jpg")


@pytest.fixture
def in_process(settings, monkeypatch):
    settings.CHECKIN_STABLE_FRAMES = 4
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


def file_under(person: Person, photo, staff_api, capture) -> FaceImage:
    """Enroll ``photo`` (a real photo of someone else) under ``person`` as staff would, approving it
    if the mislabel check held it for review: a mislabelled gallery face."""
    from people import services

    with capture(execute=True):
        response = staff_api.post(
            f"/api/v1/people/{person.pk}/faces/", {"image": SimpleUploadedFile(photo.name, read(photo))}, format="multipart"
        )
    assert response.status_code == 201, response.content
    face = FaceImage.objects.get(pk=response.json()["id"])
    if face.status == FaceImage.Status.REVIEW:
        with capture(execute=True):
            services.approve(face)
    face.refresh_from_db()
    assert face.status == FaceImage.Status.ACCEPTED, face.reason
    return face


def biden_not_enrolled() -> None:
    """Deactivated as staff would (a save, which writes the gallery's change log; a queryset update would not)."""
    biden = Person.objects.get(name="Joe Biden")
    biden.is_active = False
    biden.save(update_fields=["is_active", "updated_at"])


def check_in(person: Person, faces=(), **fields) -> CheckIn:
    values = {"similarity": 0.8, "threshold": 0.55, "frames": 4, **fields}
    return CheckIn.objects.create(person=person, matched_faces=[f.pk for f in faces], **values)


def reject(api, checkin_id: int, capture):
    with capture(execute=True):
        return api.post(f"/api/v1/checkins/{checkin_id}/reject/")


def scan_gallery(api, capture):
    """Ask for a site-wide outlier scan as staff would; its task runs (django-q sync) once the
    request's transaction commits."""
    with capture(execute=True):
        response = api.post("/api/v1/outliers/")
    assert response.status_code == 202, response.content
    return response


# ---- the whole story ---------------------------------------------------------------------------------


def test_a_rejected_check_in_leaves_the_feed_list_and_report_and_its_face_is_listed_for_review(
    in_process, staff_api, staff_user, kiosk, django_capture_on_commit_callbacks, monkeypatch
):
    from integrations.models import Delivery, Webhook

    capture = django_capture_on_commit_callbacks
    monkeypatch.setattr("integrations.events._queue", lambda *args, **kwargs: None)  # no delivery over the network
    Webhook.objects.create(url="https://hooks.example.com/facesite", events=["checkin.rejected"], secret="s" * 32)
    obama = person_named("Barack Obama")
    biden_not_enrolled()
    misfiled = file_under(obama, PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture)

    def reject_over_the_api():
        checkin = CheckIn.objects.get()
        return checkin, reject(staff_api, checkin.pk, capture)

    async def scenario():
        feed = feed_for(staff_user)
        await feed.connect()
        assert (await receive(feed))["type"] == "ready"
        stream = communicator_for(kiosk=kiosk)
        await open_with_consent(stream)
        greeting = await stream_until_checked_in(stream, BIDEN_AT_THE_DOOR)
        shown = await receive(feed, timeout=10)
        await stream.disconnect()
        checkin, response = await database_sync_to_async(reject_over_the_api)()
        removed = await receive(feed, timeout=10)
        await feed.disconnect()
        return greeting, shown, checkin, response, removed

    greeting, shown, checkin, response, removed = async_to_sync(scenario)()

    # Biden was taken for Obama, on the misfiled photo of Biden
    assert greeting["name"] == "Barack Obama" and shown["id"] == checkin.pk
    assert checkin.matched_faces == [misfiled.pk]

    # the rejection: the open feed drops the row; the check-in is gone from the list and the report
    assert response.status_code == 200, response.content
    assert removed == {"type": "removed", "id": checkin.pk}
    assert not CheckIn.objects.filter(pk=checkin.pk).exists()
    listed = staff_api.get("/api/v1/checkins/?date=all").json()
    assert checkin.pk not in [row["id"] for row in listed["results"]]
    today = timezone.localdate().isoformat()
    report = staff_api.get(f"/api/v1/reports/attendance/?from={today}&to={today}").json()
    assert obama.pk not in [p["person_id"] for p in report["days"][0]["present"]]
    assert obama.pk in [p["person_id"] for p in report["days"][0]["absent"]]

    # the negative is kept, with the face the match was made on
    match = RejectedMatch.objects.get()
    assert (match.person, match.checkin_id, match.kiosk, match.rejected_by) == (obama, checkin.pk, kiosk, staff_user)
    assert list(match.faces.all()) == [misfiled] and match.similarity == pytest.approx(checkin.similarity)
    body = response.json()
    assert body["rejected"]["id"] == match.pk and body["rejected"]["faces"] == [misfiled.pk]
    assert [f["face_id"] for f in body["flagged_faces"]] == [misfiled.pk]
    assert body["flagged_faces"][0]["far_from_own"] and body["flagged_faces"][0]["own_best"] < 0.55

    # the outlier review lists that face, with the rejection as evidence, and nothing else of his
    review = staff_api.get(f"/api/v1/people/{obama.pk}/outliers/").json()
    assert [o["evidence"]["face_id"] for o in review["outliers"]] == [misfiled.pk]
    assert [r["id"] for r in review["outliers"][0]["rejections"]] == [match.pk]
    assert [r["id"] for r in review["rejections"]] == [match.pk]
    scan_gallery(staff_api, capture)
    sitewide = staff_api.get("/api/v1/outliers/").json()
    assert misfiled.pk in [o["evidence"]["face_id"] for o in sitewide["results"]]

    # webhooks hear of it, without any biometric data
    delivery = Delivery.objects.get(event="checkin.rejected")
    assert delivery.payload["data"]["checkin_id"] == checkin.pk and delivery.payload["data"]["rejected_by"] == "staff"
    assert "embedding" not in json.dumps(delivery.payload)

    # rejecting it again: the check-in is gone
    again = reject(staff_api, checkin.pk, capture)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    assert RejectedMatch.objects.count() == 1


# ---- the outlier review ------------------------------------------------------------------------------


def test_a_face_of_another_enrolled_person_is_listed_as_closer_to_them_and_a_clean_person_lists_none(
    staff_api, django_capture_on_commit_callbacks
):
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    assert staff_api.get(f"/api/v1/people/{obama.pk}/outliers/").json()["outliers"] == []
    clean = staff_api.get(f"/api/v1/people/{biden.pk}/outliers/").json()
    assert clean["outliers"] == [] and clean["rejections"] == [] and clean["bound"] == pytest.approx(0.55)

    misfiled = file_under(obama, PEOPLE / "joe_biden" / "biden.jpg", staff_api, django_capture_on_commit_callbacks)
    review = staff_api.get(f"/api/v1/people/{obama.pk}/outliers/").json()
    assert [o["evidence"]["face_id"] for o in review["outliers"]] == [misfiled.pk]
    evidence = review["outliers"][0]["evidence"]
    assert evidence["reasons"] == ["far_from_own", "closer_to_other"]
    assert evidence["own_faces"] == 3 and evidence["own_best"] < 0.55
    assert evidence["nearest_other_name"] == "Joe Biden" and evidence["nearest_other_similarity"] > 0.9
    assert review["outliers"][0]["rejections"] == []
    # Biden's own faces stay his: his review is still clean
    assert staff_api.get(f"/api/v1/people/{biden.pk}/outliers/").json()["outliers"] == []


def test_the_outlier_review_is_staff_only(staff_user, plain_user, django_user_model):
    from security.models import ApiKey, Role

    obama = person_named("Barack Obama")
    _, client_key = ApiKey.issue(staff_user, "reporting tool", Role.CLIENT)
    reader = django_user_model.objects.create_user("reader", password="reader-pass-123")
    _, staff_role_key = ApiKey.issue(reader, "a non-staff account's staff key", Role.STAFF)
    for path in (f"/api/v1/people/{obama.pk}/outliers/", "/api/v1/outliers/"):
        assert token_client(plain_user).get(path).status_code == 403
        for key in (client_key, staff_role_key):
            from rest_framework.test import APIClient

            keyed = APIClient()
            keyed.credentials(HTTP_AUTHORIZATION=f"Token {key}")
            assert keyed.get(path).status_code == 403, (path, key)
        from rest_framework.test import APIClient

        assert APIClient().get(path).status_code == 401
    assert token_client(staff_user).get("/api/v1/people/999999/outliers/").status_code == 404


# ---- the API's bad paths --------------------------------------------------------------------------


def test_reject_refuses_non_staff_read_keys_and_bad_ids_and_leaves_the_check_in(
    staff_user, plain_user, django_user_model, django_capture_on_commit_callbacks
):
    from rest_framework.test import APIClient

    from security.models import ApiKey, Role

    capture = django_capture_on_commit_callbacks
    checkin = check_in(person_named("Barack Obama"))
    _, client_key = ApiKey.issue(staff_user, "reporting tool", Role.CLIENT)
    reader = django_user_model.objects.create_user("reader", password="reader-pass-123")
    _, staff_role_key = ApiKey.issue(reader, "a non-staff account's staff key", Role.STAFF)

    assert reject(APIClient(), checkin.pk, capture).status_code == 401
    assert reject(token_client(plain_user), checkin.pk, capture).status_code == 403
    for key in (client_key, staff_role_key):
        keyed = APIClient()
        keyed.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        assert reject(keyed, checkin.pk, capture).status_code == 403
    assert CheckIn.objects.filter(pk=checkin.pk).exists() and not RejectedMatch.objects.exists()

    staff = token_client(staff_user)
    missing = reject(staff, 999999, capture)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert staff.get(f"/api/v1/checkins/{checkin.pk}/reject/").status_code == 405
    assert staff.post("/api/v1/checkins/abc/reject/").status_code == 404

    anonymous = check_in(None)  # an erased person's check-in, kept anonymised
    refused = reject(staff, anonymous.pk, capture)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_person"
    assert CheckIn.objects.filter(pk=anonymous.pk).exists()

    # a staff session from a browser: CSRF is required
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(staff_user)
    assert browser.post(f"/api/v1/checkins/{checkin.pk}/reject/").status_code == 403
    assert CheckIn.objects.filter(pk=checkin.pk).exists()


def test_a_face_deleted_since_the_check_in_is_left_out_of_the_rejection(staff_api, django_capture_on_commit_callbacks):
    obama = person_named("Barack Obama")
    first, second = obama.faces.order_by("id")[:2]
    checkin = check_in(obama, faces=[first, second])
    second.delete()
    response = reject(staff_api, checkin.pk, django_capture_on_commit_callbacks)
    assert response.status_code == 200, response.content
    assert response.json()["rejected"]["faces"] == [first.pk]
    assert response.json()["flagged_faces"] == []  # his own good photo is no outlier


# ---- the admin ---------------------------------------------------------------------------------------


def test_the_admin_action_rejects_and_the_review_page_lists_and_removes_the_outlier(
    client, staff_user, staff_api, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    obama = person_named("Barack Obama")
    biden_not_enrolled()
    misfiled = file_under(obama, PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture)
    checkin = check_in(obama, faces=[misfiled])
    other = check_in(person_named("Rose Leslie"))
    client.force_login(staff_user)

    with capture(execute=True):
        response = client.post(
            "/admin/checkin/checkin/?when=all",
            {"action": "not_this_person", "_selected_action": [checkin.pk]},
            follow=True,
        )
    assert response.status_code == 200
    page = response.content.decode()
    assert "1 check-in(s) removed" in page and "review them" in page
    assert not CheckIn.objects.filter(pk=checkin.pk).exists() and CheckIn.objects.filter(pk=other.pk).exists()
    assert list(RejectedMatch.objects.get().faces.all()) == [misfiled]

    # the review: linked from the admin index and the person's page
    assert "/admin/checkin/outlierface/" in client.get("/admin/").content.decode()
    review_url = f"/admin/checkin/outlierface/person/{obama.pk}/"
    assert review_url in client.get(f"/admin/people/person/{obama.pk}/change/").content.decode()
    page = client.get(review_url).content.decode()
    assert f'data-face="{misfiled.pk}"' in page and "far from their other faces" in page
    assert page.count('class="outlier"') == 1 and "Check-ins rejected as not Barack Obama" in page
    scan_gallery(staff_api, capture)
    assert f'data-face="{misfiled.pk}"' in client.get("/admin/checkin/outlierface/").content.decode()
    assert (
        "No outlier faces" in client.get(f"/admin/checkin/outlierface/person/{person_named('Rose Leslie').pk}/").content.decode()
    )

    # removing it goes through the normal face deletion: out of the gallery at once
    with capture(execute=True):
        removed = client.post(review_url, {"remove_face": misfiled.pk}, follow=True)
    assert removed.status_code == 200 and f"Face {misfiled.pk} removed" in removed.content.decode(), [
        str(m) for m in removed.context["messages"]
    ]
    assert not FaceImage.objects.filter(pk=misfiled.pk).exists()
    assert staff_api.get(f"/api/v1/people/{obama.pk}/outliers/").json()["outliers"] == []
    # a face of someone else cannot be removed through this person's page
    rose_face = person_named("Rose Leslie").faces.first()
    client.post(review_url, {"remove_face": rose_face.pk})
    assert FaceImage.objects.filter(pk=rose_face.pk).exists()


def test_the_review_pages_are_for_staff_with_the_face_permissions(client, plain_user, django_user_model):
    obama = person_named("Barack Obama")
    client.force_login(plain_user)
    assert client.get("/admin/checkin/outlierface/").status_code == 302  # not staff: to the login page
    helper = django_user_model.objects.create_user("desk", password="desk-pass-123", is_staff=True)
    client.force_login(helper)
    assert client.get("/admin/checkin/outlierface/").status_code == 403
    assert client.get(f"/admin/checkin/outlierface/person/{obama.pk}/").status_code == 403
    face = obama.faces.first()
    assert client.post(f"/admin/checkin/outlierface/person/{obama.pk}/", {"remove_face": face.pk}).status_code == 403
    assert FaceImage.objects.filter(pk=face.pk).exists()


@pytest.mark.parametrize("wanted", ["\u00b2", "\u0663", "x", ""])
def test_a_face_id_that_is_no_number_removes_nothing_and_says_so(client, staff_user, wanted):
    """'²' and Arabic-Indic digits pass str.isdigit() but are no database id: a message, not a 500."""
    obama = person_named("Barack Obama")
    client.force_login(staff_user)
    response = client.post(f"/admin/checkin/outlierface/person/{obama.pk}/", {"remove_face": wanted}, follow=True)
    assert response.status_code == 200
    assert "not in the gallery any more" in response.content.decode()
    assert obama.faces.count() == FaceImage.objects.filter(person=obama).count() > 0


# ---- erasure, export, retention -------------------------------------------------------------------


def test_erasure_removes_the_rejected_matches_and_export_lists_them(
    staff_api,
    settings,
    django_capture_on_commit_callbacks,
    session_files_restored,  # noqa: F811
):
    from io import StringIO

    from django.core.management import call_command

    from privacy import services as privacy

    capture = django_capture_on_commit_callbacks
    settings.ERASE_CHECKINS_WITH_PERSON = False  # his other check-ins are kept anonymised
    obama = person_named("Barack Obama")
    pid = obama.pk
    faces = list(obama.faces.order_by("id"))
    assert reject(staff_api, check_in(obama, faces=faces[:1]).pk, capture).status_code == 200
    kept = check_in(obama, faces=faces[1:2])

    exported = privacy.person_data(obama)["rejected_matches"]
    assert len(exported) == 1 and exported[0]["face_images"] == [faces[0].pk]

    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{pid}/").status_code == 204
    assert not RejectedMatch.objects.exists() and not RejectedMatch.faces.through.objects.exists()
    kept.refresh_from_db()
    assert kept.person_id is None and kept.matched_faces == []
    from security.models import AuditEvent

    assert AuditEvent.objects.get(action="erase").result["rejected_matches_deleted"] == 1
    dump = StringIO()
    call_command("dumpdata", "checkin", stdout=dump)
    for row in json.loads(dump.getvalue()):
        assert row["fields"].get("person") != pid, row
        assert not set(row["fields"].get("matched_faces") or []) & {f.pk for f in faces}, row


def test_rejected_matches_expire_with_the_check_ins(settings, staff_api, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from privacy import services as privacy

    settings.CHECKIN_RETENTION_DAYS = 30
    obama = person_named("Barack Obama")
    old = check_in(obama, checked_in_at=timezone.now() - timedelta(days=40))
    recent = check_in(obama)
    for checkin in (old, recent):
        assert reject(staff_api, checkin.pk, django_capture_on_commit_callbacks).status_code == 200
    report = privacy.apply_retention(days=0)
    assert report.rejected_matches_deleted == 1
    assert list(RejectedMatch.objects.values_list("checkin_id", flat=True)) == [recent.pk]


# ---- the engine keeps the face a match was made on --------------------------------------------------


def test_a_match_names_the_gallery_face_it_was_made_on():
    import numpy as np

    from recognition.engine.matching import Gallery
    from recognition.engine.tracking import Track

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(3, 128)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    gallery = Gallery()
    gallery.replace(embeddings, np.array([1, 1, 2]), np.array([10, 11, 12]))
    result = gallery.search(embeddings[1:2], top_k=2, threshold=0.5)[0]
    assert (result.match.person_id, result.match.face_key) == (1, 11)
    assert result.candidates[1].face_key == 12
    gallery.set_person(3, embeddings[2:3] * -1, np.array([13]))  # a face added since: past the base slots
    added = gallery.search(embeddings[2:3] * -1, top_k=1, threshold=0.5)[0]
    assert (added.match.person_id, added.match.face_key) == (3, 13)

    track = Track(id=1, box=(0, 0, 10, 10), landmarks=np.zeros((5, 2), np.float32))
    for key in (11, 10, 11):
        track.record_match(1, 0.9, key)
    assert track.agreeing_faces == [11, 10]
    track.record_match(2, 0.9, 12)  # another identity starts a new streak, with its own faces
    assert track.agreeing_faces == [12]


def test_a_rejected_check_in_leaves_its_audit_row_naming_nobody(staff_api, django_capture_on_commit_callbacks):
    from security.audit import record_stream_event
    from security.models import AuditEvent

    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    wrong, right = check_in(obama), check_in(biden)
    for checkin in (wrong, right):  # as /ws/identify/ writes them
        result = {"checkin_id": checkin.pk, "already": False, "person_id": checkin.person_id, "similarity": 0.61}
        record_stream_event("checkin", result=result, person_ids=[checkin.person_id])
    record_stream_event("checkin", result={"checkin_id": wrong.pk, "already": True})  # a repeat: no name
    assert reject(staff_api, wrong.pk, django_capture_on_commit_callbacks).status_code == 200
    assert not AuditEvent.objects.about(obama.pk).exists()
    made, kept, repeat = AuditEvent.objects.order_by("id")
    assert made.person_ids == "" and made.result == {
        "checkin_id": wrong.pk,
        "already": False,
        "person_id": None,
        "similarity": 0.61,
        "rejected": True,
    }
    assert kept.person_ids == f",{biden.pk}," and kept.result["person_id"] == biden.pk  # another check-in: untouched
    assert repeat.result == {"checkin_id": wrong.pk, "already": True, "rejected": True}
    assert RejectedMatch.objects.get().person == obama  # the wrong pair is kept where the notice says


# ---- the site-wide scan: a background task, its stored result read by the review -----------------------


def outlier_ids(page: dict) -> list[int]:
    return [o["evidence"]["face_id"] for o in page["results"]]


def test_the_site_wide_review_shows_the_last_finished_scan_and_never_scans_in_the_request(
    staff_api, django_capture_on_commit_callbacks, monkeypatch
):
    capture = django_capture_on_commit_callbacks
    obama = person_named("Barack Obama")
    before = staff_api.get("/api/v1/outliers/").json()
    assert before["scan"] is None and before["running"] is None and before["count"] == 0 and before["results"] == []

    misfiled = file_under(obama, PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture)
    asked = scan_gallery(staff_api, capture).json()
    assert asked["status"] == "running" and asked["requested_by"] == "staff" and asked["finished_at"] is None

    page = staff_api.get("/api/v1/outliers/").json()
    scan = page["scan"]
    assert scan["id"] == asked["id"] and scan["status"] == "finished" and page["running"] is None
    assert scan["gallery_faces"] == FaceImage.objects.in_gallery().count() > 10
    assert scan["flagged"] == page["count"] >= 1 and 0 <= scan["age_seconds"] < 60 and scan["bound"] == pytest.approx(0.55)
    assert misfiled.pk in outlier_ids(page)
    # the stored evidence is what the person's own review computes now
    stored = next(o["evidence"] for o in page["results"] if o["evidence"]["face_id"] == misfiled.pk)
    assert stored == staff_api.get(f"/api/v1/people/{obama.pk}/outliers/").json()["outliers"][0]["evidence"]
    assert stored["nearest_other_name"] == "Joe Biden" and stored["reasons"] == ["far_from_own", "closer_to_other"]

    # the request reads the stored result: no scan runs in it
    monkeypatch.setattr("recognition.outliers.site_scan", lambda *a, **k: pytest.fail("the request scanned the gallery"))
    assert outlier_ids(staff_api.get("/api/v1/outliers/").json()) == outlier_ids(page)


def test_the_scan_result_comes_a_page_at_a_time(staff_api, django_capture_on_commit_callbacks, monkeypatch):
    from rest_framework.pagination import PageNumberPagination

    capture = django_capture_on_commit_callbacks
    biden_not_enrolled()
    misfiled = [
        file_under(person_named("Barack Obama"), PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture),
        file_under(person_named("Rose Leslie"), PEOPLE / "joe_biden" / "biden2.jpg", staff_api, capture),
    ]
    scan_gallery(staff_api, capture)
    monkeypatch.setattr(PageNumberPagination, "page_size", 1)
    first = staff_api.get("/api/v1/outliers/").json()
    assert first["count"] >= 2 and len(first["results"]) == 1 and first["previous"] is None
    seen = outlier_ids(first)
    following = first["next"]
    while following:
        page = staff_api.get(following).json()
        assert page["scan"]["id"] == first["scan"]["id"] and len(page["results"]) == 1
        seen += outlier_ids(page)
        following = page["next"]
    assert len(seen) == first["count"] == len(set(seen)) and {f.pk for f in misfiled} <= set(seen)


def test_a_second_scan_while_one_runs_is_refused_and_a_dead_one_does_not_block_the_next(
    staff_api, settings, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.db import IntegrityError, transaction

    from checkin import outlier_scan
    from checkin.models import FlaggedFace, OutlierScan

    first = staff_api.post("/api/v1/outliers/")  # its task waits for the commit: it stays "running"
    assert first.status_code == 202
    again = staff_api.post("/api/v1/outliers/")
    assert again.status_code == 409 and again.json()["error"]["code"] == "scan_running"
    assert OutlierScan.objects.count() == 1
    page = staff_api.get("/api/v1/outliers/").json()
    assert page["scan"] is None and page["running"]["id"] == first.json()["id"]
    with pytest.raises(IntegrityError), transaction.atomic():  # two workers asking at once: the database refuses
        OutlierScan.objects.create()

    # its worker died: past OUTLIER_SCAN_STALE_SECONDS it is failed and a new scan may run
    settings.OUTLIER_SCAN_STALE_SECONDS = 60
    OutlierScan.objects.update(requested_at=timezone.now() - timedelta(minutes=2))
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.post("/api/v1/outliers/").status_code == 202
        dead = OutlierScan.objects.get(pk=first.json()["id"])
        assert dead.status == "failed" and "OUTLIER_SCAN_STALE_SECONDS" in dead.error
    assert staff_api.get("/api/v1/outliers/").json()["scan"]["status"] == "finished"
    # the dead scan's task, run late, does nothing
    assert "not waiting" in outlier_scan.run_scan(first.json()["id"])
    assert not FlaggedFace.objects.exclude(scan=OutlierScan.objects.finished().get()).exists()


def test_asking_for_a_scan_is_for_staff_only(staff_user, plain_user, django_user_model, client):
    from rest_framework.test import APIClient

    from checkin.models import OutlierScan
    from security.models import ApiKey, Role

    _, client_key = ApiKey.issue(staff_user, "reporting tool", Role.CLIENT)
    reader = django_user_model.objects.create_user("reader", password="reader-pass-123")
    _, staff_role_key = ApiKey.issue(reader, "a non-staff account's staff key", Role.STAFF)
    assert APIClient().post("/api/v1/outliers/").status_code == 401
    assert token_client(plain_user).post("/api/v1/outliers/").status_code == 403
    for key in (client_key, staff_role_key):
        keyed = APIClient()
        keyed.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        assert keyed.post("/api/v1/outliers/").status_code == 403
    browser = APIClient(enforce_csrf_checks=True)  # a staff session from a browser needs its CSRF token
    browser.force_login(staff_user)
    assert browser.post("/api/v1/outliers/").status_code == 403
    # the admin's button takes the review's own permission
    helper = django_user_model.objects.create_user("desk", password="desk-pass-123", is_staff=True)
    client.force_login(helper)
    assert client.post("/admin/checkin/outlierface/", {"scan": "1"}).status_code == 403
    assert not OutlierScan.objects.exists()


def test_a_scan_of_an_empty_gallery_finishes_with_nothing_flagged(staff_api, django_capture_on_commit_callbacks):
    Person.objects.update(is_active=False)  # nobody is matched against: the gallery is empty
    scan_gallery(staff_api, django_capture_on_commit_callbacks)
    page = staff_api.get("/api/v1/outliers/").json()
    assert page["scan"]["status"] == "finished" and page["scan"]["gallery_faces"] == 0 and page["scan"]["flagged"] == 0
    assert page["count"] == 0 and page["results"] == []


def test_the_daily_schedule_scans_only_when_the_gallery_changed_since_the_last_scan(settings, django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    from checkin.models import OutlierScan
    from checkin.tasks import scheduled_outlier_scan

    assert Schedule.objects.get(name="checkin: outlier scan").func == "checkin.tasks.scheduled_outlier_scan"
    with django_capture_on_commit_callbacks(execute=True):
        first = scheduled_outlier_scan()  # never scanned: a scan (its task runs once this commits)
    assert first.startswith("outlier scan ") and OutlierScan.objects.finished().count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert scheduled_outlier_scan() == "no outlier scan needed"  # nothing changed since
    face = FaceImage.objects.in_gallery().first()
    face.save()  # re-processed, approved...: changed since the scan
    settings.OUTLIER_SCAN_DAILY = False
    assert scheduled_outlier_scan() == "no outlier scan needed"  # turned off
    settings.OUTLIER_SCAN_DAILY = True
    with django_capture_on_commit_callbacks(execute=True):
        assert scheduled_outlier_scan().startswith("outlier scan ")
    assert OutlierScan.objects.finished().count() == 1  # the newest kept, the older deleted


def test_a_face_deactivated_or_deleted_after_the_scan_is_not_shown(staff_api, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    obama, rose = person_named("Barack Obama"), person_named("Rose Leslie")
    biden_not_enrolled()
    on_obama = file_under(obama, PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture)
    on_rose = file_under(rose, PEOPLE / "joe_biden" / "biden2.jpg", staff_api, capture)
    scan_gallery(staff_api, capture)
    assert {on_obama.pk, on_rose.pk} <= set(outlier_ids(staff_api.get("/api/v1/outliers/").json()))
    obama.is_active = False
    obama.save(update_fields=["is_active", "updated_at"])
    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{rose.pk}/faces/{on_rose.pk}/").status_code == 204
    shown = staff_api.get("/api/v1/outliers/").json()
    assert not {on_obama.pk, on_rose.pk} & set(outlier_ids(shown))
    assert all(o["evidence"]["person_id"] != obama.pk for o in shown["results"])


# ---- the scan's rows are the person's data: erasure ------------------------------------------------------


def test_erasure_deletes_the_scans_rows_about_the_person_and_forgets_them_as_the_nearest_other(
    staff_api, django_capture_on_commit_callbacks
):
    from io import StringIO

    from django.core.management import call_command

    from checkin.models import FlaggedFace
    from security.models import AuditEvent

    capture = django_capture_on_commit_callbacks
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    misfiled = file_under(obama, PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture)
    scan_gallery(staff_api, capture)
    row = FlaggedFace.objects.get(face=misfiled)
    assert row.nearest_other == biden

    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{biden.pk}/").status_code == 204
    row.refresh_from_db()
    assert row.nearest_other is None and row.closer_to_other  # the evidence stays, the erased name goes
    shown = next(o for o in staff_api.get("/api/v1/outliers/").json()["results"] if o["evidence"]["face_id"] == misfiled.pk)
    assert shown["evidence"]["nearest_other_id"] is None and shown["evidence"]["nearest_other_name"] is None

    flagged = FlaggedFace.objects.filter(person=obama).count()
    with capture(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
    assert not FlaggedFace.objects.filter(person_id=obama.pk).exists()
    assert AuditEvent.objects.filter(action="erase").order_by("id").last().result["outlier_flags_deleted"] == flagged >= 1
    dump = StringIO()
    call_command("dumpdata", "checkin.flaggedface", stdout=dump)
    for stored in json.loads(dump.getvalue()):
        assert {stored["fields"]["person"], stored["fields"]["nearest_other"]}.isdisjoint({obama.pk, biden.pk}), stored


@pytest.mark.parametrize("erased", ["Barack Obama", "Joe Biden"])
def test_a_person_erased_while_the_scan_runs_gets_no_row_from_it(
    erased, staff_api, django_capture_on_commit_callbacks, monkeypatch
):
    """The scan computed its result with the person in it; they are erased before it writes: it
    writes nothing about them (Obama: the misfiled face's owner; Biden: its nearest other person)."""
    from checkin.models import FlaggedFace
    from privacy.services import erase_person
    from recognition import outliers

    capture = django_capture_on_commit_callbacks
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    misfiled = file_under(obama, PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture)
    gone = person_named(erased).pk
    computed = []

    def scan_then_erasure(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        computed.extend(result[1])
        erase_person(person_named(erased))  # another request's erasure, between the scan and its writing
        return result

    real_scan = outliers.site_scan
    monkeypatch.setattr(outliers, "site_scan", scan_then_erasure)
    scan_gallery(staff_api, capture)

    assert any(e.face_id == misfiled.pk and {e.person_id, e.nearest_other_id} == {obama.pk, biden.pk} for e in computed)
    page = staff_api.get("/api/v1/outliers/").json()
    assert page["scan"]["status"] == "finished"
    assert not FlaggedFace.objects.filter(person_id=gone).exists()
    assert not FlaggedFace.objects.filter(nearest_other_id=gone).exists()
    if erased == "Joe Biden":  # the face stays flagged, without his name
        kept = FlaggedFace.objects.get(face=misfiled)
        assert kept.nearest_other is None and kept.closer_to_other


# ---- the admin's list and button ---------------------------------------------------------------------


def test_the_admin_review_shows_the_last_scan_and_staff_scan_again_from_it(
    client, staff_user, staff_api, django_capture_on_commit_callbacks
):
    from checkin.models import OutlierScan

    capture = django_capture_on_commit_callbacks
    biden_not_enrolled()
    misfiled = file_under(person_named("Barack Obama"), PEOPLE / "joe_biden" / "biden.jpg", staff_api, capture)
    client.force_login(staff_user)
    page = client.get("/admin/checkin/outlierface/").content.decode()
    assert "No scan of the whole gallery has finished yet" in page and 'name="scan"' in page
    assert f'data-face="{misfiled.pk}"' not in page

    with capture(execute=True):
        asked = client.post("/admin/checkin/outlierface/", {"scan": "1"}, follow=True)
    assert "A new scan of the whole gallery was queued" in asked.content.decode()
    scan = OutlierScan.objects.finished().get()
    page = client.get("/admin/checkin/outlierface/").content.decode()
    assert f"From the scan of {scan.gallery_faces} gallery faces" in page and f'data-face="{misfiled.pk}"' in page
    assert "scan-running" not in page

    running = OutlierScan.objects.create(requested_by=staff_user)  # another scan, still running
    page = client.get("/admin/checkin/outlierface/").content.decode()
    assert 'id="scan-running"' in page and 'name="scan"' not in page and f'data-face="{misfiled.pk}"' in page
    refused = client.post("/admin/checkin/outlierface/", {"scan": "1"}, follow=True).content.decode()
    assert "A scan is already running" in refused
    assert list(OutlierScan.objects.running()) == [running]
