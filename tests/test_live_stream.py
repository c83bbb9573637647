"""Live check-in over /ws/identify/: consent, identities, backpressure, limits and auth, on real face frames.

Frames are real fixture photographs letterboxed into a 640x480 camera picture and JPEG-encoded as a
browser would send them; the real detector and embedder run on them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from PIL import Image

from checkin.consumers import CLOSE_NOT_AUTHENTICATED, KIOSK_SESSION_KEY, KIOSK_TOKEN_SESSION_KEY
from checkin.models import CheckIn, Consent, Kiosk
from checkin.routing import websocket_urlpatterns
from recognition.engine.liveness import HeadTurnChallenge, yaw_cue
from recognition.engine.tracking import FaceTracker

from .conftest import PROBES, person_named

TIMEOUT = 120  # seconds for one frame's answer: the machine is shared and slow under load


def camera_frame(path: Path, size=(640, 480), quality: int = 85) -> bytes:
    """A photo fitted into a camera-sized picture (black bars), as JPEG bytes."""
    image = Image.open(path).convert("RGB")
    image.thumbnail(size)
    canvas = Image.new("RGB", size)
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


OBAMA = camera_frame(PROBES / "obama1.jpg")
STRANGERS = camera_frame(PROBES / "multiface.jpg")


def communicator_for(user=None, kiosk=None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/identify/")
    communicator.scope["user"] = user
    communicator.scope["session"] = {KIOSK_SESSION_KEY: kiosk.pk, KIOSK_TOKEN_SESSION_KEY: kiosk.token_hash} if kiosk else {}
    return communicator


async def receive(communicator, timeout: float = TIMEOUT) -> dict:
    return json.loads(await communicator.receive_from(timeout=timeout))


async def open_with_consent(communicator) -> dict:
    connected, _ = await communicator.connect()
    assert connected
    ready = await receive(communicator)
    assert ready["type"] == "ready"
    await communicator.send_json_to({"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True})
    recorded = await receive(communicator)
    assert recorded["type"] == "consent_recorded", recorded
    return ready


async def answers_until(communicator, kind: str, limit: int = 20) -> list[dict]:
    """Messages received up to and including the first of type ``kind``."""
    seen = []
    for _ in range(limit):
        message = await receive(communicator)
        seen.append(message)
        if message["type"] == kind:
            return seen
    raise AssertionError(f"no {kind!r} among {seen}")


async def four_frames_until_checked_in(user, frame: bytes) -> list[dict]:
    """A consented stream of four identical frames; every message up to the check-in greeting."""
    communicator = communicator_for(user)
    await open_with_consent(communicator)
    replies = []
    for _ in range(4):
        await communicator.send_to(bytes_data=frame)
        replies.extend(await answers_until(communicator, "faces"))
    if not any(m["type"] == "checked_in" for m in replies):
        replies.extend(await answers_until(communicator, "checked_in"))
    await communicator.disconnect()
    return replies


def run(coroutine_function, *args):
    return async_to_sync(coroutine_function)(*args)


@pytest.fixture(autouse=True)
def _keep_the_test_transaction(monkeypatch):
    """The consumer's ORM calls run inside the test's transaction (rolled back afterwards). Outside
    tests, database_sync_to_async closes stale connections around each call; here that would close
    the connection holding the test transaction (PostgreSQL; SQLite's in-memory one is never
    closed), so that housekeeping, and only it, is switched off."""
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


# ---- authentication and consent ------------------------------------------------------------------


@pytest.mark.django_db
def test_unauthenticated_connection_is_refused_with_a_reason():
    from django.contrib.auth.models import AnonymousUser

    async def scenario():
        communicator = communicator_for(AnonymousUser())
        connected, _ = await communicator.connect()
        assert connected  # accepted only to say why, then closed
        error = await receive(communicator)
        assert error == {"type": "error", "code": "not_authenticated", "message": error["message"]}
        assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}

    run(scenario)


@pytest.mark.django_db
def test_full_stack_refuses_a_foreign_origin_and_an_anonymous_browser():
    from facesite.asgi import application

    async def scenario():
        foreign = WebsocketCommunicator(application, "/ws/identify/", headers=[(b"origin", b"https://evil.example")])
        connected, _ = await foreign.connect()
        assert not connected
        anonymous = WebsocketCommunicator(application, "/ws/identify/", headers=[(b"origin", b"http://testserver")])
        connected, _ = await anonymous.connect()
        assert connected
        assert (await receive(anonymous))["code"] == "not_authenticated"
        await anonymous.disconnect()

    run(scenario)


@pytest.mark.django_db
def test_non_browser_client_connects_with_a_kiosk_api_key_but_not_a_client_key(plain_user, kiosk):
    from facesite.asgi import application
    from security.models import ApiKey, Role

    _, kiosk_key = ApiKey.issue(plain_user, "raspberry pi at the door", role=Role.KIOSK, kiosk=kiosk)
    _, client_key = ApiKey.issue(plain_user, "reporting tool", role=Role.CLIENT)

    async def connect(key: str) -> dict:
        headers = [(b"origin", b"http://testserver"), (b"authorization", f"Token {key}".encode())]
        communicator = WebsocketCommunicator(application, "/ws/identify/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        first = await receive(communicator)
        await communicator.disconnect()
        return first

    ready = async_to_sync(connect)(kiosk_key)
    # The key acts as its kiosk; its owner's username is not told to the device.
    assert ready["type"] == "ready" and ready["device"] == "kiosk: Front door"
    assert plain_user.username not in json.dumps(ready)
    assert async_to_sync(connect)(client_key)["code"] == "not_authenticated"
    assert async_to_sync(connect)("made-up-key")["code"] == "not_authenticated"


@pytest.mark.django_db
def test_frames_are_refused_until_consent_is_given(plain_user):
    async def scenario():
        communicator = communicator_for(plain_user)
        connected, _ = await communicator.connect()
        assert connected
        ready = await receive(communicator)
        await communicator.send_to(bytes_data=OBAMA)
        assert (await receive(communicator))["code"] == "consent_required"
        await communicator.send_json_to({"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": False})
        assert (await receive(communicator))["code"] == "age_not_confirmed"
        await communicator.send_json_to({"type": "consent", "notice_version": "1999-1", "age_confirmed": True})
        assert (await receive(communicator))["code"] == "stale_notice"
        await communicator.send_to(bytes_data=OBAMA)
        assert (await receive(communicator))["code"] == "consent_required"
        assert await communicator.receive_nothing(timeout=1)
        await communicator.disconnect()

    run(scenario)
    assert not Consent.objects.exists()
    assert not CheckIn.objects.exists()


@pytest.mark.django_db
def test_withdrawn_consent_stops_frames_and_is_recorded(plain_user):
    async def scenario():
        communicator = communicator_for(plain_user)
        await open_with_consent(communicator)
        await communicator.send_json_to({"type": "withdraw"})
        assert (await receive(communicator))["type"] == "consent_withdrawn"
        await communicator.send_to(bytes_data=OBAMA)
        assert (await receive(communicator))["code"] == "consent_required"
        await communicator.disconnect()

    run(scenario)
    consent = Consent.objects.get()
    assert consent.user == plain_user and consent.withdrawn_at is not None and consent.age_confirmed


# ---- identities and check-ins --------------------------------------------------------------------


@pytest.mark.django_db
def test_enrolled_person_is_named_then_checked_in_once(plain_user, settings):
    settings.CHECKIN_STABLE_FRAMES = 4
    settings.CHECKIN_REEMBED_EVERY = 3
    obama = person_named("Barack Obama")

    replies = run(four_frames_until_checked_in, plain_user, OBAMA)
    faces = [m for m in replies if m["type"] == "faces"]
    assert len(faces) == 4 and all(len(m["faces"]) == 1 for m in faces)
    names = {m["faces"][0]["name"] for m in faces}
    assert names == {"Barack Obama"}
    # each description carries the threshold in force and what it is expected to let through
    from recognition import services

    served = services.served_now()
    assert faces[0]["threshold"] == round(served.threshold, 4) and faces[0]["gallery_size"] == len(served.gallery)
    assert 0 < faces[0]["expected_false_accepts_per_search"] <= settings.OPEN_SET_FAR_PER_SEARCH
    # The tracker carries the identity: 4 frames of one face need only 2 embeddings (frames 1 and 4).
    assert [m["embedded"] for m in faces] == [1, 0, 0, 1]
    greeting = next(m for m in replies if m["type"] == "checked_in")
    assert greeting["name"] == "Barack Obama" and not greeting["already"]
    checkin = CheckIn.objects.get()
    assert checkin.person == obama and checkin.user == plain_user and checkin.kiosk is None
    assert checkin.similarity >= checkin.threshold and checkin.frames >= 4
    assert checkin.consent.user == plain_user and checkin.embedder

    # A second check-in within the window is not duplicated; the greeting says so.
    replies = run(four_frames_until_checked_in, plain_user, OBAMA)
    assert next(m for m in replies if m["type"] == "checked_in")["already"]
    assert CheckIn.objects.count() == 1


@pytest.mark.django_db
def test_a_person_named_but_not_checked_in_is_counted_in_the_audit_log_never_named(kiosk, settings):
    from security.models import AuditEvent

    settings.CHECKIN_STABLE_FRAMES = 10  # more frames than are sent: named on every frame, never checked in
    obama = person_named("Barack Obama")

    async def scenario():
        communicator = communicator_for(kiosk=kiosk)
        await open_with_consent(communicator)
        replies = []
        for _ in range(2):
            await communicator.send_to(bytes_data=OBAMA)
            replies.extend(await answers_until(communicator, "faces"))
        await communicator.disconnect()
        return replies

    replies = run(scenario)
    assert {f["name"] for m in replies if m["type"] == "faces" for f in m["faces"]} == {"Barack Obama"}
    assert not CheckIn.objects.exists()
    summary = AuditEvent.objects.get()  # the socket's summary only: no row per person seen
    assert summary.action == "stream" and summary.actor == "kiosk 'Front door'"
    assert summary.person_ids == "" and not AuditEvent.objects.about(obama.pk).exists()
    assert summary.result["identified"] == 1 and summary.result["checkins"] == 0 and summary.result["frames"] == 2
    assert not {"matched", "person_id"} & set(summary.result)


@pytest.mark.django_db
def test_people_not_enrolled_show_as_unknown_and_are_not_checked_in(kiosk, settings):
    settings.CHECKIN_STABLE_FRAMES = 2
    settings.CHECKIN_REEMBED_EVERY = 1

    async def scenario():
        communicator = communicator_for(kiosk=kiosk)
        ready = await open_with_consent(communicator)
        assert ready["device"] == "kiosk: Front door"
        replies = []
        for _ in range(3):
            await communicator.send_to(bytes_data=STRANGERS)
            replies.extend(await answers_until(communicator, "faces"))
        await communicator.disconnect()
        return replies

    replies = run(scenario)
    faces = [f for m in replies if m["type"] == "faces" for f in m["faces"]]
    assert len(faces) >= 6  # several strangers in each of the 3 frames
    assert all(f["person_id"] is None and f["name"] is None and f["state"] == "unknown" for f in faces)
    assert not [m for m in replies if m["type"] == "checked_in"]
    assert not CheckIn.objects.exists()
    assert Consent.objects.get().kiosk == kiosk


@pytest.mark.django_db
def test_liveness_kiosk_does_not_check_in_a_still_photo(kiosk, settings):
    settings.CHECKIN_STABLE_FRAMES = 2
    kiosk.liveness_required = True
    kiosk.save()

    async def scenario():
        communicator = communicator_for(kiosk=kiosk)
        ready = await open_with_consent(communicator)
        assert ready["liveness"] is True
        replies = []
        for _ in range(5):
            await communicator.send_to(bytes_data=OBAMA)
            replies.extend(await answers_until(communicator, "faces"))
        await communicator.disconnect()
        return replies

    replies = run(scenario)
    last = [m for m in replies if m["type"] == "faces"][-1]
    assert last["faces"][0]["name"] == "Barack Obama"
    assert last["challenge"]["direction"] in ("left", "right")
    assert not last["faces"][0]["liveness"]["passed"]
    assert not CheckIn.objects.exists()


# ---- backpressure and limits ---------------------------------------------------------------------


@pytest.mark.django_db
def test_stale_frames_are_dropped_and_the_newest_is_processed(plain_user):
    async def scenario():
        communicator = communicator_for(plain_user)
        await open_with_consent(communicator)
        for _ in range(5):
            await communicator.send_to(bytes_data=OBAMA)  # faster than any frame can be analysed
        answers = []
        while not answers or answers[-1]["frame"] < 5:
            message = await receive(communicator)
            if message["type"] == "faces":
                answers.append(message)
        await communicator.disconnect()
        return answers

    answers = run(scenario)
    assert answers[-1]["frame"] == 5  # the newest frame is the one answered last
    assert len(answers) < 5
    assert len(answers) + sum(a["dropped"] for a in answers) == 5


@pytest.mark.django_db
def test_oversize_frame_is_rejected_and_the_connection_stays_usable(plain_user, settings):
    settings.CHECKIN_MAX_FRAME_BYTES = len(OBAMA) + 10

    async def scenario():
        communicator = communicator_for(plain_user)
        await open_with_consent(communicator)
        await communicator.send_to(bytes_data=b"\xff" * (len(OBAMA) + 11))
        error = await receive(communicator)
        assert error["code"] == "frame_too_large" and "limit" in error["message"]
        await communicator.send_to(bytes_data=b"not a jpeg at all")
        assert (await receive(communicator))["code"] == "invalid_image"
        await communicator.send_to(bytes_data=OBAMA)
        answer = await receive(communicator)
        assert answer["type"] == "faces" and answer["faces"][0]["name"] == "Barack Obama"
        await communicator.disconnect()

    run(scenario)


@pytest.mark.django_db
def test_frame_with_too_many_pixels_is_rejected(plain_user, settings):
    settings.CHECKIN_MAX_FRAME_PIXELS = 320 * 240

    async def scenario():
        communicator = communicator_for(plain_user)
        await open_with_consent(communicator)
        await communicator.send_to(bytes_data=OBAMA)
        error = await receive(communicator)
        assert error["code"] == "frame_too_large" and "pixels" in error["message"]
        await communicator.disconnect()

    run(scenario)


@pytest.mark.django_db
def test_frames_over_the_rate_limit_get_one_clear_error(plain_user, settings):
    settings.CHECKIN_MAX_FPS = 2

    async def scenario():
        communicator = communicator_for(plain_user)
        await open_with_consent(communicator)
        for _ in range(6):
            await communicator.send_to(bytes_data=OBAMA)
        messages = []
        while not any(m["type"] == "faces" and m["frame"] == 2 for m in messages):
            messages.append(await receive(communicator))
        await communicator.disconnect()
        return messages

    messages = run(scenario)
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["rate_limited"]  # once, not once per dropped frame
    assert "2 per second" in errors[0]["message"]


@pytest.mark.django_db
def test_bad_text_messages_get_clear_errors(plain_user):
    async def scenario():
        communicator = communicator_for(plain_user)
        connected, _ = await communicator.connect()
        await receive(communicator)
        await communicator.send_to(text_data="{not json")
        assert (await receive(communicator))["code"] == "invalid_message"
        await communicator.send_json_to({"type": "selfie"})
        assert (await receive(communicator))["code"] == "invalid_message"
        await communicator.disconnect()

    run(scenario)


# ---- staff view of check-ins ---------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_list_todays_checkins_and_others_cannot(staff_api, user_api, kiosk):
    from datetime import timedelta

    from django.utils import timezone

    obama = person_named("Barack Obama")
    CheckIn.objects.create(person=obama, similarity=0.8, threshold=0.55, frames=4, kiosk=kiosk)
    CheckIn.objects.create(
        person=obama, similarity=0.7, threshold=0.55, frames=4, checked_in_at=timezone.now() - timedelta(days=2)
    )
    response = staff_api.get("/api/v1/checkins/")
    assert response.status_code == 200, response.content
    rows = response.json()["results"]
    assert len(rows) == 1
    assert rows[0]["person"] == {"id": obama.pk, "name": "Barack Obama"}
    assert rows[0]["device"] == "kiosk: Front door" and rows[0]["similarity"] == 0.8
    assert len(staff_api.get("/api/v1/checkins/?date=all").json()["results"]) == 2
    assert staff_api.get("/api/v1/checkins/?date=yesterday").status_code == 400
    assert user_api.get("/api/v1/checkins/").status_code == 403
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/checkins/").status_code in (401, 403)


@pytest.mark.django_db
def test_admin_shows_todays_checkins_and_a_new_kiosks_token_once(client, staff_user):
    from datetime import timedelta

    from django.utils import timezone

    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    CheckIn.objects.create(person=obama, similarity=0.8, threshold=0.55, frames=4)
    CheckIn.objects.create(
        person=biden, similarity=0.7, threshold=0.55, frames=4, checked_in_at=timezone.now() - timedelta(days=3)
    )
    client.force_login(staff_user)
    today = client.get("/admin/checkin/checkin/")
    assert today.status_code == 200
    assert b"Barack Obama" in today.content and b"Joe Biden" not in today.content
    assert b"Joe Biden" in client.get("/admin/checkin/checkin/?when=all").content

    response = client.post("/admin/checkin/kiosk/add/", {"name": "Side door", "is_active": "on"}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"] if "Token for kiosk" in str(m)]
    assert len(shown) == 1
    token = shown[0].split(": ", 1)[1].split(" ")[0]
    assert Kiosk.objects.by_token(token).name == "Side door"


# ---- the engine parts, without Django ------------------------------------------------------------


def landmarks(nose_x: float, squeeze: float = 1.0) -> np.ndarray:
    """Five landmarks of a face at x=100..160; ``squeeze`` scales x about the centre (a swung photo)."""
    points = np.array([[110, 100], [150, 100], [nose_x, 125], [115, 150], [145, 150]], np.float32)
    points[:, 0] = 130 + (points[:, 0] - 130) * squeeze
    return points


def test_tracker_keeps_identity_between_embeddings():
    tracker = FaceTracker(reembed_every=3)
    box = (100.0, 80.0, 60.0, 80.0)
    embeds = []
    for step in range(6):
        tracks, to_embed = tracker.update([(box[0] + step * 3, *box[1:])], [landmarks(130)])
        embeds.append(len(to_embed))
        if to_embed:
            tracks[0].record_match(7, 0.8)
    assert embeds == [1, 0, 0, 1, 0, 0]
    assert tracks[0].id == 1 and tracks[0].person_id == 7 and tracks[0].streak == 6
    assert tracks[0].stable(4)
    # A face far away is a new track, embedded at once; the old one is forgotten after max_missed frames.
    tracks, to_embed = tracker.update([(400.0, 80.0, 60.0, 80.0)], [landmarks(130)])
    assert tracks[0].id == 2 and to_embed == [0]


def test_head_turn_passes_only_in_the_asked_direction():
    assert abs(yaw_cue(landmarks(130))) < 1e-6
    turning = HeadTurnChallenge(direction="left")
    assert not any(turning.update(landmarks(x)) for x in (130, 131, 132, 134))
    assert turning.update(landmarks(140))  # nose 10 px toward the image's right over a 40 px eye distance
    wrong_way = HeadTurnChallenge(direction="right")
    assert not any(wrong_way.update(landmarks(x)) for x in (130, 130, 135, 140, 145))


def test_head_turn_is_not_faked_by_swinging_a_photo():
    challenge = HeadTurnChallenge(direction="left")
    for squeeze in (1.0, 1.0, 0.9, 0.7, 0.5, 0.4):
        assert not challenge.update(landmarks(130, squeeze))


# ---- the pages around the stream -----------------------------------------------------------------


@pytest.mark.django_db
def test_checkin_page_asks_anonymous_visitors_to_sign_in_or_register_a_kiosk(client, kiosk):
    page = client.get("/checkin/")
    assert page.status_code == 200 and b"kiosk-form" in page.content and b"consent-start" not in page.content
    wrong = client.post("/checkin/kiosk/", {"token": "not-a-token"})
    assert wrong.status_code == 400 and b"not valid" in wrong.content


@pytest.mark.django_db
def test_kiosk_token_signs_the_device_in_and_the_socket_knows_it(client):
    from django.conf import settings

    kiosk = Kiosk(name="Lobby")
    token = kiosk.set_new_token()
    kiosk.save()
    assert Kiosk.objects.get(pk=kiosk.pk).token_hash != token  # only the hash is kept
    response = client.post("/checkin/kiosk/", {"token": token})
    assert response.status_code == 302 and response["Location"] == "/checkin/"
    page = client.get("/checkin/")
    assert b"consent-start" in page.content and b"Lobby" in page.content
    assert settings.CONSENT_NOTICE_VERSION.encode() in page.content
    assert client.session[KIOSK_SESSION_KEY] == kiosk.pk
    kiosk.is_active = False
    kiosk.save()
    assert b"kiosk-form" in client.get("/checkin/").content  # a deactivated kiosk is signed out


@pytest.mark.django_db
def test_a_new_kiosk_token_signs_out_the_devices_signed_in_with_the_old_one(client, staff_user, kiosk):
    from django.test import Client

    old = kiosk.set_new_token()
    kiosk.save()
    client.post("/checkin/kiosk/", {"token": old})
    assert client.get("/checkin/").context["kiosk"] == kiosk
    admin = Client()
    admin.force_login(staff_user)
    admin.post("/admin/checkin/kiosk/", {"action": "issue_new_token", "_selected_action": [kiosk.pk], "index": 0})
    assert Kiosk.objects.by_token(old) is None

    page = client.get("/checkin/")  # the device that signed in with the old token is no longer the kiosk
    assert page.context["kiosk"] is None and b"kiosk-form" in page.content and b"consent-start" not in page.content
    assert b"enter its token again" in page.content
    assert client.post("/checkin/kiosk/", {"token": old}).status_code == 400
    kiosk.refresh_from_db()
    current = kiosk.set_new_token()  # staff give the real device the current token: it signs in again
    kiosk.save()
    client.post("/checkin/kiosk/", {"token": current})
    assert client.get("/checkin/").context["kiosk"] == kiosk


@pytest.mark.django_db
def test_a_kiosk_session_that_kept_no_token_hash_must_enter_the_token_again(client, kiosk):
    """Sessions signed in before the token's hash was kept hold only the kiosk's id: refused."""
    session = client.session
    session[KIOSK_SESSION_KEY] = kiosk.pk
    session.save()
    page = client.get("/checkin/")
    assert page.context["kiosk"] is None and b"kiosk-form" in page.content and b"enter its token again" in page.content

    async def scenario():
        communicator = communicator_for()
        communicator.scope["session"] = {KIOSK_SESSION_KEY: kiosk.pk}
        connected, _ = await communicator.connect()
        error = await receive(communicator, timeout=10)
        closed = await communicator.receive_output(timeout=10)
        await communicator.disconnect()
        return connected, error, closed

    connected, error, closed = async_to_sync(scenario)()
    assert connected and error["code"] == "not_authenticated"
    assert closed == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}


@pytest.mark.django_db
def test_verify_page_needs_a_login_and_records_consent(client, plain_user):
    from django.conf import settings

    assert client.get("/verify/")["Location"].startswith("/accounts/login/")
    client.force_login(plain_user)
    page = client.get("/verify/")
    assert page.status_code == 200
    # the notice says what is kept, and that the result is not (recognition.answers.Verification)
    text = page.content.decode()
    assert "Nothing is kept" not in text
    assert "the result are not kept" in text
    assert f"whether it worked (for {settings.AUDIT_LOG_RETENTION_DAYS} days, then deleted)" in text
    assert f"version) is kept (for {settings.CHECKIN_RETENTION_DAYS} days, then deleted)" in text


@pytest.mark.django_db
def test_verify_consent_posted_again_reuses_the_accounts_record(client, plain_user, staff_user, settings):
    from datetime import timedelta

    from django.utils import timezone

    from checkin.pages import verify_notice_version

    settings.VERIFY_CONSENT_REUSE_HOURS = 24
    form = {"notice_version": verify_notice_version(), "age_confirmed": "yes"}
    client.force_login(plain_user)
    answers = [client.post("/verify/consent/", form) for _ in range(50)]
    assert [a.status_code for a in answers] == [201] + [200] * 49
    assert {a.json()["consent_id"] for a in answers} == {answers[0].json()["consent_id"]}
    assert Consent.objects.count() == 1
    # another account gets its own; a record older than the period is not reused
    client.force_login(staff_user)
    assert client.post("/verify/consent/", form).status_code == 201
    Consent.objects.update(given_at=timezone.now() - timedelta(hours=25))
    client.force_login(plain_user)
    assert client.post("/verify/consent/", form).status_code == 201
    assert Consent.objects.filter(user=plain_user).count() == 2


@pytest.mark.django_db
def test_a_changed_retention_period_is_a_new_verify_notice_and_consent_to_the_old_one_is_asked_again(
    client, plain_user, settings
):
    from checkin.pages import verify_notice_version

    client.force_login(plain_user)
    page = client.get("/verify/").content.decode()
    old = verify_notice_version()
    assert old.startswith(settings.CONSENT_NOTICE_VERSION + "+") and old in page
    assert client.post("/verify/consent/", {"notice_version": old, "age_confirmed": "yes"}).status_code == 201

    settings.AUDIT_LOG_RETENTION_DAYS += 30  # what the notice says is kept changes: a new version
    new = verify_notice_version()
    assert new != old and new in client.get("/verify/").content.decode()
    stale = client.post("/verify/consent/", {"notice_version": old, "age_confirmed": "yes"})
    assert stale.status_code == 400 and stale.json()["error"]["code"] == "stale_notice"
    given = client.post("/verify/consent/", {"notice_version": new, "age_confirmed": "yes"})
    assert given.status_code == 201  # not the record given to the old text
    assert Consent.objects.get(pk=given.json()["consent_id"]).notice_version == new


@pytest.mark.django_db
def test_consent_given_again_on_a_socket_keeps_its_one_record_until_withdrawn(plain_user, settings):
    settings.CHECKIN_MAX_TEXT_PER_SECOND = 1000  # the text limit is tested below

    async def scenario():
        communicator = communicator_for(plain_user)
        ready = await open_with_consent(communicator)
        again = {"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True}
        ids = set()
        for _ in range(50):
            await communicator.send_json_to(again)
            answer = await receive(communicator)
            assert answer["type"] == "consent_recorded", answer
            ids.add(answer["consent_id"])
        assert len(ids) == 1
        await communicator.send_json_to({"type": "withdraw"})
        assert (await receive(communicator))["type"] == "consent_withdrawn"
        await communicator.send_json_to(again)
        renewed = await receive(communicator)
        await communicator.disconnect()
        return ids, renewed

    ids, renewed = run(scenario)
    assert renewed["type"] == "consent_recorded" and renewed["consent_id"] not in ids
    assert Consent.objects.count() == 2 and Consent.objects.filter(withdrawn_at=None).count() == 1


@pytest.mark.django_db
def test_a_flood_of_text_messages_is_limited_then_closes_the_socket(plain_user, settings):
    from checkin.consumers import CLOSE_TOO_MANY, flood_limit

    settings.CHECKIN_MAX_TEXT_PER_SECOND = 2

    async def scenario():
        communicator = communicator_for(plain_user)
        connected, _ = await communicator.connect()
        ready = await receive(communicator)
        consent = {"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True}
        for _ in range(2 + flood_limit(2) + 1):  # the bucket's 2, then one more refusal than allowed
            await communicator.send_json_to(consent)
        messages = []
        while True:
            output = await communicator.receive_output(timeout=TIMEOUT)
            if output["type"] == "websocket.close":
                return messages, output["code"]
            messages.append(json.loads(output["text"]))

    messages, close_code = run(scenario)
    codes = [m.get("code", m["type"]) for m in messages]
    assert codes == ["consent_recorded", "consent_recorded", "rate_limited", "flooding"], codes
    assert "2 per second" in messages[2]["message"] and close_code == CLOSE_TOO_MANY
    assert Consent.objects.count() == 1
