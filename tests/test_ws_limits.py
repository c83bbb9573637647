"""Bounded, audited websockets (/ws/identify/): caps per kiosk, per key and per process, the idle
timeout, kiosk API keys bound to their kiosk, the audit of identifications, and the documented error
for every bad message; one real daphne server for the 10 MB frame and the cap over the wire."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from checkin.consumers import CLOSE_FORBIDDEN, CLOSE_IDLE, CLOSE_TOO_MANY
from checkin.models import Consent, Kiosk
from checkin.routing import websocket_urlpatterns
from security.models import ApiKey, AuditEvent, Role

from . import live
from .conftest import PROBES, person_named
from .test_checkin_feed import stream_until_checked_in
from .test_live_stream import camera_frame, communicator_for, open_with_consent, receive

ROOT = Path(__file__).resolve().parent.parent
LACAMOIRE = camera_frame(PROBES / "alex_lacamoire1.jpg")


@pytest.fixture(autouse=True)
def _keep_the_test_transaction(monkeypatch):
    """The consumer's ORM calls share the test's transaction (see tests/test_live_stream.py)."""
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


def keyed(raw: str, headers: list | None = None) -> WebsocketCommunicator:
    """A non-browser client: no session, ``Authorization: Token <key>``."""
    communicator = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns),
        "/ws/identify/",
        headers=[(b"authorization", f"Token {raw}".encode()), *(headers or [])],
    )
    communicator.scope["user"] = AnonymousUser()
    communicator.scope["session"] = {}
    communicator.scope["client"] = ("192.0.2.7", 50000)
    return communicator


async def refused_with(communicator) -> tuple[dict, dict]:
    """The error a refused connection is told, and how it is closed."""
    connected, _ = await communicator.connect()
    assert connected  # accepted only to say why
    error = await receive(communicator, timeout=10)
    return error, await communicator.receive_output(timeout=10)


async def opened(communicator) -> dict:
    connected, _ = await communicator.connect()
    assert connected
    ready = await receive(communicator, timeout=30)
    assert ready["type"] == "ready", ready
    return ready


def run(coroutine_function, *args):
    return async_to_sync(coroutine_function)(*args)


# ---- caps ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_kiosk_gets_at_most_its_cap_of_sockets_and_a_closed_one_frees_its_slot(kiosk, settings):
    settings.CHECKIN_MAX_SOCKETS_PER_KIOSK = 2

    async def scenario():
        first, second = communicator_for(kiosk=kiosk), communicator_for(kiosk=kiosk)
        await opened(first)
        await opened(second)
        error, closed = await refused_with(communicator_for(kiosk=kiosk))
        await first.disconnect()
        third = communicator_for(kiosk=kiosk)
        ready = await opened(third)
        await second.disconnect()
        await third.disconnect()
        return error, closed, ready

    error, closed, ready = run(scenario)
    assert error["type"] == "error" and error["code"] == "too_many_connections", error
    assert closed == {"type": "websocket.close", "code": CLOSE_TOO_MANY}
    assert ready["device"] == "kiosk: Front door"


@pytest.mark.django_db
def test_an_api_key_gets_at_most_its_cap_and_other_keys_are_not_affected(staff_user, settings):
    settings.CHECKIN_MAX_SOCKETS_PER_KEY = 2
    _, raw = ApiKey.issue(staff_user, "integration", Role.STAFF)
    _, other = ApiKey.issue(staff_user, "second integration", Role.STAFF)

    async def scenario():
        held = [keyed(raw), keyed(raw)]
        readies = [await opened(c) for c in held]
        error, closed = await refused_with(keyed(raw))
        another = keyed(other)
        readies.append(await opened(another))
        for communicator in [*held, another]:
            await communicator.disconnect()
        return readies, error, closed

    readies, error, closed = run(scenario)
    assert error["code"] == "too_many_connections" and closed["code"] == CLOSE_TOO_MANY
    # A key's socket is "api key" to the device, never its owner's username.
    assert {r["device"] for r in readies} == {"api key"}
    assert staff_user.username not in json.dumps(readies)


@pytest.mark.django_db
def test_a_process_takes_at_most_its_cap_of_sockets_from_anyone(staff_user, plain_user, settings):
    settings.CHECKIN_MAX_SOCKETS = 1

    async def scenario():
        first = communicator_for(staff_user)
        await opened(first)
        error, closed = await refused_with(communicator_for(plain_user))
        await first.disconnect()
        second = communicator_for(plain_user)
        ready = await opened(second)
        await second.disconnect()
        return error, closed, ready

    error, closed, ready = run(scenario)
    assert error["code"] == "too_many_connections" and closed["code"] == CLOSE_TOO_MANY
    assert ready["device"] == f"user: {plain_user}"  # a signed-in user sees their own name


@pytest.mark.django_db
def test_a_crashed_workers_slot_expires_and_frees_the_kiosk(kiosk, settings, monkeypatch):
    from checkin import socket_limits

    settings.CHECKIN_MAX_SOCKETS_PER_KIOSK = 1
    monkeypatch.setattr(socket_limits, "SLOT_TTL_SECONDS", 1)

    async def scenario():
        # A slot claimed by a worker that then died: never refreshed, never released.
        assert await socket_limits.Slots().claim(f"kiosk:{kiosk.pk}", 1)
        error, _ = await refused_with(communicator_for(kiosk=kiosk))
        await asyncio.sleep(1.5)
        communicator = communicator_for(kiosk=kiosk)
        ready = await opened(communicator)
        await communicator.disconnect()
        return error, ready

    error, ready = run(scenario)
    assert error["code"] == "too_many_connections" and ready["type"] == "ready"


@pytest.mark.django_db
def test_with_the_cache_unreachable_a_kiosk_still_connects(kiosk):
    from django.test import override_settings

    unreachable = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{live.free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }

    async def scenario():
        communicator = communicator_for(kiosk=kiosk)
        ready = await opened(communicator)
        await communicator.disconnect()
        return ready

    with override_settings(CACHES=unreachable):
        assert run(scenario)["device"] == "kiosk: Front door"


# ---- idle timeout ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_socket_that_sends_nothing_is_told_and_closed_but_an_active_one_is_kept(plain_user, settings):
    settings.CHECKIN_IDLE_SECONDS = 1

    async def scenario():
        communicator = communicator_for(plain_user)
        ready = await opened(communicator)
        # Active for twice the timeout: a message every 0.3 s keeps the socket open.
        for _ in range(7):
            await communicator.send_json_to({"type": "withdraw"})
            assert (await receive(communicator, timeout=5))["type"] == "consent_withdrawn"
            await communicator.receive_nothing(timeout=0.3)
        error = await receive(communicator, timeout=5)
        closed = await communicator.receive_output(timeout=5)
        return ready, error, closed

    ready, error, closed = run(scenario)
    assert ready["limits"]["idle_seconds"] == 1
    assert error["code"] == "idle_timeout" and "1 seconds" in error["message"], error
    assert closed == {"type": "websocket.close", "code": CLOSE_IDLE}


# ---- kiosk keys ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_kiosk_key_acts_as_its_kiosk_and_an_unbound_one_is_refused(staff_user, kiosk):
    kiosk.liveness_required = True
    kiosk.save()
    _, bound = ApiKey.issue(staff_user, "door pi", Role.KIOSK, kiosk=kiosk)
    _, unbound = ApiKey.issue(staff_user, "old pi", Role.KIOSK)

    async def scenario():
        communicator = keyed(bound)
        ready = await open_with_consent(communicator)
        await communicator.disconnect()
        return ready, await refused_with(keyed(unbound))

    ready, (error, closed) = run(scenario)
    assert ready["device"] == "kiosk: Front door" and ready["liveness"] is True  # the kiosk's setting
    assert staff_user.username not in json.dumps(ready)
    assert error["code"] == "kiosk_not_bound" and closed == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}
    consent = Consent.objects.get()
    assert consent.kiosk == kiosk and consent.user is None
    assert Kiosk.objects.get(pk=kiosk.pk).last_seen_at is not None


@pytest.mark.django_db
def test_a_user_token_works_on_the_socket_until_it_expires(plain_user, settings):
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    settings.API_TOKEN_TTL_HOURS = 1
    token = Token.objects.create(user=plain_user)

    async def scenario():
        communicator = keyed(token.key)
        ready = await opened(communicator)
        await communicator.disconnect()
        return ready

    ready = run(scenario)
    assert ready["device"] == "api token" and plain_user.username not in json.dumps(ready)
    Token.objects.filter(pk=token.pk).update(created=timezone.now() - timedelta(hours=2))
    error, closed = run(refused_with, keyed(token.key))
    assert error["code"] == "not_authenticated" and closed["code"] == 4401


@pytest.mark.django_db
def test_the_admin_refuses_a_kiosk_key_without_a_kiosk_and_issues_one_for_a_kiosk(client, staff_user, kiosk):
    client.force_login(staff_user)
    form = {"name": "door pi", "user": staff_user.pk, "role": Role.KIOSK}
    refused = client.post("/admin/security/apikey/add/", form)
    assert refused.status_code == 200 and b"must name the kiosk" in refused.content
    assert not ApiKey.objects.exists()
    created = client.post("/admin/security/apikey/add/", {**form, "kiosk": kiosk.pk}, follow=True)
    assert created.status_code == 200
    assert ApiKey.objects.get().kiosk == kiosk

    issued = client.post("/admin/checkin/kiosk/", {"action": "issue_api_key", "_selected_action": [kiosk.pk]}, follow=True)
    shown = [str(m) for m in issued.context["messages"] if "API key for kiosk" in str(m)]
    assert len(shown) == 1
    raw = shown[0].split(": ", 1)[1].split(" ")[0]
    from security.authentication import authenticate_key

    assert authenticate_key(raw).kiosk == kiosk


# ---- audit -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_check_in_over_a_kiosk_key_is_audited_with_person_ids_and_no_images(staff_user, kiosk, settings):
    settings.CHECKIN_STABLE_FRAMES = 4
    key, raw = ApiKey.issue(staff_user, "door pi", Role.KIOSK, kiosk=kiosk)
    lacamoire = person_named("Alex Lacamoire")

    async def scenario():
        communicator = keyed(raw)
        await open_with_consent(communicator)
        greeting = await stream_until_checked_in(communicator, LACAMOIRE)
        await communicator.disconnect()
        return greeting

    greeting = run(scenario)
    assert greeting["person_id"] == lacamoire.pk
    events = {e.action: e for e in AuditEvent.objects.all()}
    assert set(events) == {"checkin", "stream"}, list(AuditEvent.objects.values("action"))
    for event in events.values():
        assert event.api_key == key and event.user == staff_user
        assert event.actor == "kiosk 'Front door' / staff / key 'door pi'"
        assert event.client_address == "192.0.2.7"
        assert not {"image", "frame_bytes", "crop", "embedding"} & set(event.result)
    # the check-in names its person (findable for export and erasure); the summary counts, names nobody
    assert list(AuditEvent.objects.about(lacamoire.pk)) == [events["checkin"]]
    assert events["checkin"].result["checkin_id"] == lacamoire.checkins.get().pk
    assert events["checkin"].result["already"] is False and events["checkin"].result["person_id"] == lacamoire.pk
    summary = events["stream"].result
    assert events["stream"].person_ids == "" and "matched" not in summary
    assert summary["identified"] == 1 and summary["checkins"] == 1 and summary["frames"] >= 4


@pytest.mark.django_db
@pytest.mark.parametrize("proxies, logged", [(0, "192.0.2.7"), (1, "203.0.113.9")])
def test_a_socket_is_audited_when_it_closes_from_the_address_the_proxy_rule_gives(staff_user, settings, proxies, logged):
    settings.TRUSTED_PROXY_COUNT = proxies
    _, raw = ApiKey.issue(staff_user, "integration", Role.STAFF)

    async def scenario():
        communicator = keyed(raw, [(b"x-forwarded-for", b"203.0.113.9")])
        await opened(communicator)
        await communicator.disconnect()

    run(scenario)
    event = AuditEvent.objects.get()
    assert event.action == "stream" and event.client_address == logged
    assert event.result == {
        "frames": 0,
        "faces": 0,
        "identified": 0,
        "checkins": 0,
        "visitor_sightings": 0,
        "seconds": event.result["seconds"],
        "close_code": 1000,
    }


# ---- bad messages ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_bad_text_message_gets_invalid_message_and_the_socket_stays_open(plain_user, caplog, settings):
    settings.CHECKIN_MAX_TEXT_PER_SECOND = 100  # nine messages at once: the text rate limit is tested in test_live_stream
    bad = [
        "{not json",
        "[" * 5000 + "]" * 5000,  # RecursionError in json.loads (was: close 1011 and a traceback)
        '{"a":' * 1500 + "1" + "}" * 1500,
        "[1, 2, 3]",
        '"consent"',
        json.dumps({"type": "selfie"}),
        json.dumps({"no": "type"}),
        json.dumps({"type": "consent", "padding": "x" * 100_000}),
    ]

    async def scenario():
        communicator = communicator_for(plain_user)
        await opened(communicator)
        codes = []
        for text in bad:
            await communicator.send_to(text_data=text)
            codes.append((await receive(communicator, timeout=10))["code"])
        await communicator.send_json_to({"type": "withdraw"})
        still_open = await receive(communicator, timeout=10)
        await communicator.disconnect()
        return codes, still_open

    with caplog.at_level(logging.WARNING):
        codes, still_open = run(scenario)
    assert codes == ["invalid_message"] * len(bad)
    assert still_open["type"] == "consent_withdrawn"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.django_db
def test_consent_given_and_withdrawn_over_and_over_closes_the_socket_at_its_cap_of_records(plain_user, settings):
    from checkin.services import current_notice

    settings.CHECKIN_MAX_TEXT_PER_SECOND = 1000  # the text rate limit is tested in test_live_stream
    settings.CHECKIN_MAX_CONSENTS_PER_SOCKET = 3
    consent = {"type": "consent", "notice_version": current_notice().version, "age_confirmed": True}

    async def scenario():
        communicator = communicator_for(plain_user)
        await opened(communicator)
        answers = []
        for _ in range(3):
            await communicator.send_json_to(consent)
            answers.append((await receive(communicator, timeout=10))["type"])
            await communicator.send_json_to(consent)  # given again while in force: the same record
            answers.append((await receive(communicator, timeout=10))["type"])
            await communicator.send_json_to({"type": "withdraw"})
            answers.append((await receive(communicator, timeout=10))["type"])
        await communicator.send_json_to(consent)
        error = await receive(communicator, timeout=10)
        closed = await communicator.receive_output(timeout=10)
        await communicator.disconnect()
        return answers, error, closed

    answers, error, closed = run(scenario)
    assert answers == ["consent_recorded", "consent_recorded", "consent_withdrawn"] * 3
    assert error["code"] == "too_many_consents" and closed == {"type": "websocket.close", "code": CLOSE_TOO_MANY}
    assert Consent.objects.filter(user=plain_user).count() == 3  # one per consent given, none past the cap


@pytest.mark.django_db
def test_the_staff_feed_answers_any_message_read_only_and_stays_open(staff_user):
    from .test_checkin_feed import feed_for

    async def scenario():
        feed = feed_for(staff_user)
        await opened(feed)
        codes = []
        for message in ({"text_data": "[" * 5000}, {"text_data": "{not json"}, {"bytes_data": b"\0" * 100_000}):
            await feed.send_to(**message)
            codes.append((await receive(feed, timeout=10))["code"])
        quiet = await feed.receive_nothing(timeout=0.5)
        await feed.disconnect()
        return codes, quiet

    codes, quiet = run(scenario)
    assert codes == ["read_only"] * 3 and quiet


# ---- /ws/identify/: access checked again while open ----------------------------------------------


async def closed_after(communicator, change) -> tuple[bool, dict, dict]:
    """Open a stream with consent, let a recheck pass (still open?), then ``change`` something and
    return (still open before it, the error told, how the socket was closed)."""
    await open_with_consent(communicator)
    still = await communicator.receive_nothing(timeout=0.8)  # rechecked: still admitted, still open
    await change()
    error = await receive(communicator, timeout=10)
    closed = await communicator.receive_output(timeout=10)
    await communicator.disconnect()
    return still, error, closed


@pytest.mark.django_db
@pytest.mark.parametrize("withdrawn", ["key revoked", "kiosk deactivated", "key's kiosk deactivated", "user deactivated"])
def test_an_open_stream_is_closed_when_its_credential_is_withdrawn(staff_user, plain_user, kiosk, settings, withdrawn):
    """A stolen kiosk, a leaked key, a user who left: staff withdraw it in the admin, and the socket
    already open (a kiosk streams all day) is closed within CHECKIN_ACCESS_RECHECK_SECONDS, its
    frames no longer analysed; until then it works as before."""
    from checkin.consumers import CLOSE_NOT_AUTHENTICATED

    settings.CHECKIN_ACCESS_RECHECK_SECONDS = 0.3
    key, raw = ApiKey.issue(staff_user, "door pi", Role.KIOSK, kiosk=kiosk)
    communicator = {
        "key revoked": lambda: keyed(raw),
        "kiosk deactivated": lambda: communicator_for(kiosk=kiosk),
        "key's kiosk deactivated": lambda: keyed(raw),
        "user deactivated": lambda: communicator_for(plain_user),
    }[withdrawn]()

    async def withdraw():
        if withdrawn == "key revoked":
            await database_sync_to_async(key.revoke)()
        elif withdrawn == "user deactivated":
            await type(plain_user).objects.filter(pk=plain_user.pk).aupdate(is_active=False)
        else:
            await Kiosk.objects.filter(pk=kiosk.pk).aupdate(is_active=False)

    from channels.db import database_sync_to_async

    still, error, closed = run(closed_after, communicator, withdraw)
    assert still
    assert error["code"] == "not_authenticated", error
    assert closed == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}


@pytest.mark.django_db
def test_an_open_stream_is_closed_when_a_check_in_webhook_changes_the_notice_it_consented_to(plain_user, settings):
    """A kiosk page streams all day: a webhook subscribed to check-ins, added meanwhile, changes
    what the notice says (check-ins are sent on). The socket's consent was given to the old text,
    so it is closed at the next recheck with stale_notice; until then it works as before."""
    from integrations.models import Webhook

    settings.CHECKIN_ACCESS_RECHECK_SECONDS = 0.3
    communicator = communicator_for(plain_user)

    async def connect_a_webhook():
        await Webhook.objects.acreate(url="https://hr.example.com/hook", events=["checkin.created"], secret="s" * 16)

    still, error, closed = run(closed_after, communicator, connect_a_webhook)
    assert still
    assert error["code"] == "stale_notice", error
    assert closed == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}


@pytest.mark.django_db
def test_an_open_kiosk_stream_is_closed_when_the_kiosk_is_given_a_new_token(client, staff_user, kiosk, settings):
    """A device signed in with a leaked token keeps its socket only until the next recheck after
    staff issue a new token; until then it streams as before."""
    from channels.db import database_sync_to_async
    from django.conf import settings as django_settings
    from django.test import Client

    from checkin.consumers import CLOSE_NOT_AUTHENTICATED
    from facesite.asgi import application

    settings.CHECKIN_ACCESS_RECHECK_SECONDS = 0.3
    old = kiosk.set_new_token()
    kiosk.save()
    client.post("/checkin/kiosk/", {"token": old})
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    admin = Client()
    admin.force_login(staff_user)

    async def scenario():
        # As a browser opens it: the session comes from the cookie through the site's middleware.
        communicator = WebsocketCommunicator(
            application, "/ws/identify/", headers=[(b"origin", b"http://testserver"), (b"cookie", cookie.encode())]
        )
        ready = await open_with_consent(communicator)
        still = await communicator.receive_nothing(timeout=0.8)  # rechecked: the token is unchanged, still open
        await database_sync_to_async(admin.post)(
            "/admin/checkin/kiosk/", {"action": "issue_new_token", "_selected_action": [kiosk.pk], "index": 0}
        )
        error = await receive(communicator, timeout=10)
        closed = await communicator.receive_output(timeout=10)
        await communicator.disconnect()
        return ready, still, error, closed

    ready, still, error, closed = run(scenario)
    assert ready["device"] == "kiosk: Front door" and still
    assert Kiosk.objects.get(pk=kiosk.pk).token_hash != kiosk.token_hash  # the admin action did give a new token
    assert error["code"] == "not_authenticated" and "new token" in error["message"], error
    assert closed == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}


# ---- the staff feed: access checked again while open, a cap per account ---------------------------


def _feed_with_session(user, client):
    """A feed socket as a browser opens it: the scope's session is the signed-in session itself."""
    from importlib import import_module

    from django.conf import settings

    from .test_checkin_feed import feed_for

    client.force_login(user)
    key = client.session.session_key
    feed = feed_for(user)
    feed.scope["session"] = import_module(settings.SESSION_ENGINE).SessionStore(key)
    return feed, key


async def _closed_with(feed, timeout: float = 10) -> tuple[dict, dict]:
    error = await receive(feed, timeout=timeout)
    return error, await feed.receive_output(timeout=timeout)


@pytest.mark.django_db
def test_a_feed_is_closed_when_its_user_stops_being_staff_and_gets_no_check_in_after(staff_user, settings):
    from channels.layers import get_channel_layer

    from checkin import feed as feed_module
    from checkin.consumers import CLOSE_NOT_STAFF

    from .test_checkin_feed import feed_for

    settings.CHECKIN_ACCESS_RECHECK_SECONDS = 0.3

    async def scenario():
        feed = feed_for(staff_user)
        await opened(feed)
        still = await feed.receive_nothing(timeout=0.8)  # rechecked twice: still staff, still open
        await type(staff_user).objects.filter(pk=staff_user.pk).aupdate(is_staff=False)
        error, closed = await _closed_with(feed)
        # a check-in broadcast afterwards does not reach it (it left the group)
        await get_channel_layer().group_send(feed_module.FEED_GROUP, {"type": "checkin.recorded", "checkin": {"id": 1}})
        after = await feed.receive_nothing(timeout=0.5)
        await feed.disconnect()
        return still, error, closed, after

    still, error, closed, after = run(scenario)
    assert still
    assert error["code"] == "not_staff"
    assert closed == {"type": "websocket.close", "code": CLOSE_NOT_STAFF}
    assert after


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["logout", "password_change"])
def test_a_feed_is_closed_when_its_session_ends(staff_user, client, settings, how):
    from django.contrib.sessions.backends.db import SessionStore

    from checkin.consumers import CLOSE_NOT_AUTHENTICATED

    settings.CHECKIN_ACCESS_RECHECK_SECONDS = 0.3
    feed, key = _feed_with_session(staff_user, client)

    async def scenario():
        await opened(feed)
        still = await feed.receive_nothing(timeout=0.8)  # the session is valid: the feed stays open
        if how == "logout":
            await SessionStore(key).adelete(key)
        else:  # a password change invalidates the session's auth hash (Django's own rule)
            staff_user.set_password("another-pass-456")
            await staff_user.asave()
        error, closed = await _closed_with(feed)
        await feed.disconnect()
        return still, error, closed

    still, error, closed = run(scenario)
    assert still
    assert error["code"] == "not_authenticated"
    assert closed == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}


@pytest.mark.django_db
def test_an_account_gets_at_most_its_cap_of_feeds_and_a_closed_one_frees_its_slot(staff_user, settings):
    from .test_checkin_feed import feed_for

    settings.CHECKIN_MAX_FEED_SOCKETS_PER_USER = 2

    async def scenario():
        first, second, third, again = (feed_for(staff_user) for _ in range(4))
        await opened(first)
        await opened(second)
        refused = await refused_with(third)
        await first.disconnect()
        await opened(again)
        for feed in (second, again):
            await feed.disconnect()
        return refused

    error, closed = run(scenario)
    assert error["code"] == "too_many_connections"
    assert closed == {"type": "websocket.close", "code": CLOSE_TOO_MANY}


@pytest.mark.django_db
def test_an_oversized_frame_is_refused_before_consent_is_checked(plain_user, settings):
    settings.CHECKIN_MAX_FRAME_BYTES = 1000

    async def scenario():
        communicator = communicator_for(plain_user)
        await opened(communicator)
        await communicator.send_to(bytes_data=b"\0" * 1001)
        error = await receive(communicator, timeout=10)
        await communicator.disconnect()
        return error

    assert run(scenario)["code"] == "frame_too_large"


def test_the_run_scripts_let_messages_over_the_frame_limit_reach_the_app():
    from django.conf import settings

    assert " ".join(live.DAPHNE_WEBSOCKET_ARGS) in (ROOT / "scripts" / "run.sh").read_text()
    assert "--ws-max-size 16777216" in (ROOT / "scripts" / "run-production.sh").read_text()
    assert settings.CHECKIN_MAX_FRAME_BYTES < 10 * 1024 * 1024 < 16777216


# ---- a real server ---------------------------------------------------------------------------------

ISSUE_BOUND_KIOSK_KEY = """
from django.contrib.auth import get_user_model
from checkin.models import Kiosk
from security.models import ApiKey, Role
kiosk = Kiosk(name="Gate")
kiosk.set_new_token()
kiosk.save()
print(ApiKey.issue(get_user_model().objects.get(username="live-staff"), "gate pi", Role.KIOSK, kiosk=kiosk)[1])
"""


@pytest.mark.servers
@pytest.mark.django_db
def test_over_a_real_server_a_10_mb_frame_gets_frame_too_large_and_the_kiosk_cap_holds(live_site):
    """daphne as scripts/run.sh runs it (two of them on Redis in the PostgreSQL pass, so the cap is
    shown to hold across processes)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    raw = live_site.manage("shell", "-c", ISSUE_BOUND_KIOSK_KEY).stdout.split()[-1]
    env = live_site.with_env(CHECKIN_MAX_SOCKETS_PER_KIOSK=2)
    servers = [live_site.start_web(env=env)]
    if live_site.backend == "postgresql":
        servers.append(live_site.start_web(env=env))

    def socket(number: int):
        server = servers[number % len(servers)]
        return connect(
            server.url.replace("http://", "ws://") + "/ws/identify/",
            origin=server.url,
            additional_headers={"Authorization": f"Token {raw}"},
            max_size=2**22,
            open_timeout=60,
        )

    def ready_of(stream) -> dict:
        message = json.loads(stream.recv(timeout=60))
        assert message["type"] == "ready", message
        return message

    held = ExitStack()
    try:
        first, second = held.enter_context(socket(0)), held.enter_context(socket(1))
        ready = ready_of(first)
        ready_of(second)
        assert ready["device"] == "kiosk: Gate" and "live-staff" not in json.dumps(ready)

        with socket(2) as third:
            refused = json.loads(third.recv(timeout=30))
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=30)
        assert refused["code"] == "too_many_connections", refused
        assert closed.value.rcvd.code == CLOSE_TOO_MANY

        first.send(b"\xff" * (10 * 1024 * 1024))
        too_large = json.loads(first.recv(timeout=60))
        assert too_large["code"] == "frame_too_large" and "10,485,760 bytes" in too_large["message"], too_large
        # Still open and usable: consent, then a real frame is answered.
        first.send(json.dumps({"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True}))
        assert json.loads(first.recv(timeout=60))["type"] == "consent_recorded"
        first.send(LACAMOIRE)
        while (answer := json.loads(first.recv(timeout=120)))["type"] != "faces":
            assert answer["type"] != "error", answer
        assert [f["name"] for f in answer["faces"]] == ["Alex Lacamoire"], answer

        first.close()  # frees its slot: a new socket is accepted (on the other process, with two)
        for _ in range(20):  # the server releases the slot as it handles the close: a moment later
            with socket(1) as replacement:
                if json.loads(replacement.recv(timeout=60))["type"] == "ready":
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("a closed socket's slot was never freed")
    except Exception:
        for server in servers:  # shown by pytest with the failure
            print(f"--- {server.url} ---\n{server.proc.log_path.read_text()[-4000:]}")
        raise
    finally:
        held.close()
        for server in servers:
            live_site.stop(server.proc)
