"""The staff check-in feed (/ws/checkins/): a check-in made by a kiosk stream reaches the staff screens,
in one process (in-memory channel layer) and across two real web server processes (Redis); anyone
else is refused."""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.parse
import urllib.request

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from checkin.consumers import CLOSE_NOT_AUTHENTICATED, CLOSE_NOT_STAFF
from checkin.models import CheckIn
from checkin.routing import websocket_urlpatterns

from . import live
from .conftest import PROBES
from .test_live_stream import camera_frame, communicator_for, open_with_consent, receive

LACAMOIRE = camera_frame(PROBES / "alex_lacamoire1.jpg")


def feed_for(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/checkins/")
    communicator.scope["user"] = user
    communicator.scope["session"] = {}
    return communicator


@pytest.fixture
def in_process(settings, monkeypatch):
    """One process (the in-memory layer: see conftest), and check-ins after 4 frames. The
    consumers' ORM calls share the test's transaction (see tests/test_live_stream.py)."""
    settings.CHECKIN_STABLE_FRAMES = 4
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


async def stream_until_checked_in(communicator, frame: bytes, limit: int = 8) -> dict:
    """Send the same camera frame, one answer at a time, until the stream says who checked in."""
    for _ in range(limit):
        await communicator.send_to(bytes_data=frame)
        while (message := await receive(communicator))["type"] != "faces":
            assert message["type"] != "error", message
            if message["type"] == "checked_in":
                return message
    message = await receive(communicator)  # the greeting follows its frame's faces
    assert message["type"] == "checked_in", message
    return message


@pytest.mark.django_db
def test_staff_feed_shows_a_kiosk_check_in_as_it_happens(in_process, staff_user, kiosk):
    async def scenario():
        feed = feed_for(staff_user)
        connected, _ = await feed.connect()
        assert connected
        ready = await receive(feed)
        assert ready == {"type": "ready", "recent": []}

        stream = communicator_for(kiosk=kiosk)
        await open_with_consent(stream)
        greeting = await stream_until_checked_in(stream, LACAMOIRE)
        event = await receive(feed, timeout=10)
        await stream.disconnect()

        # The same person again within the repeat window is no new check-in: the feed stays quiet.
        again = communicator_for(kiosk=kiosk)
        await open_with_consent(again)
        repeated = await stream_until_checked_in(again, LACAMOIRE)
        quiet = await feed.receive_nothing(timeout=1)
        await again.disconnect()
        await feed.disconnect()
        return greeting, event, repeated, quiet

    greeting, event, repeated, quiet = async_to_sync(scenario)()
    checkin = CheckIn.objects.get()
    assert greeting["name"] == "Alex Lacamoire" and not greeting["already"]
    assert repeated["already"] and quiet
    assert event == {
        "type": "checkin",
        "id": checkin.pk,
        "person_id": checkin.person_id,
        "name": "Alex Lacamoire",
        "checked_in_at": event["checked_in_at"],
        "kiosk": "Front door",
        "device": "kiosk: Front door",
        "similarity": round(checkin.similarity, 4),
    }
    assert event["checked_in_at"][:19] == checkin.checked_in_at.astimezone().isoformat()[:19]


@pytest.mark.django_db
def test_a_screen_that_connects_later_sees_todays_check_ins_then_only_new_ones(in_process, staff_user, kiosk):
    from people.models import Person

    person = Person.objects.get(name="Alex Lacamoire")
    earlier = CheckIn.objects.create(person=person, similarity=0.8, threshold=0.55, frames=4, kiosk=kiosk)

    async def scenario():
        feed = feed_for(staff_user)
        await feed.connect()
        ready = await receive(feed)
        quiet = await feed.receive_nothing(timeout=1)
        await feed.disconnect()
        return ready, quiet

    ready, quiet = async_to_sync(scenario)()
    assert [c["id"] for c in ready["recent"]] == [earlier.pk]
    assert ready["recent"][0]["name"] == "Alex Lacamoire" and ready["recent"][0]["kiosk"] == "Front door"
    assert quiet


@pytest.mark.django_db
def test_anonymous_and_non_staff_connections_are_refused_and_never_join_the_feed(in_process, plain_user):
    from channels.layers import get_channel_layer
    from django.contrib.auth.models import AnonymousUser

    from checkin import feed as checkin_feed

    async def refused(user) -> tuple[dict, dict, bool]:
        feed = feed_for(user)
        connected, _ = await feed.connect()
        assert connected  # accepted only to say why, then closed
        error = await receive(feed)
        closed = await feed.receive_output(timeout=5)
        await get_channel_layer().group_send(checkin_feed.FEED_GROUP, {"type": checkin_feed.EVENT_TYPE, "checkin": {}})
        return error, closed, await feed.receive_nothing(timeout=0.5)

    error, closed, quiet = async_to_sync(refused)(AnonymousUser())
    assert error["code"] == "not_authenticated" and closed == {"type": "websocket.close", "code": CLOSE_NOT_AUTHENTICATED}
    assert quiet
    error, closed, quiet = async_to_sync(refused)(plain_user)
    assert error["code"] == "not_staff" and closed == {"type": "websocket.close", "code": CLOSE_NOT_STAFF}
    assert quiet


@pytest.mark.django_db
def test_full_stack_refuses_a_foreign_origin_even_for_staff(in_process, client, staff_user):
    from facesite.asgi import application

    client.force_login(staff_user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def connect(origin: bytes) -> bool:
        feed = WebsocketCommunicator(application, "/ws/checkins/", headers=[(b"origin", origin), (b"cookie", cookie)])
        connected, _ = await feed.connect()
        if connected:
            assert (await receive(feed))["type"] == "ready"
            await feed.disconnect()
        return connected

    assert not async_to_sync(connect)(b"https://evil.example")
    assert async_to_sync(connect)(b"http://testserver")


@pytest.mark.django_db
def test_the_feed_page_is_for_staff(client, staff_user, plain_user):
    client.force_login(plain_user)
    assert client.get("/checkin/feed/").status_code == 302  # to the staff sign-in
    client.force_login(staff_user)
    page = client.get("/checkin/feed/")
    assert page.status_code == 200 and b"/ws/checkins/" in page.content and b"checkin_feed" in page.content


# ---- two real web server processes on Redis ----------------------------------------------------------


class Browser:
    """A cookie-keeping HTTP client that signs in through the site's own forms (CSRF included)."""

    def __init__(self, server: live.Server):
        self.server = server
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def post_form(self, path: str, fields: dict, form_page: str | None = None) -> tuple[int, str, str]:
        """GET the form's page, POST the form with its CSRF token; (status, final URL, body)."""
        page = self.opener.open(self.server.url + (form_page or path), timeout=60).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **fields}).encode()
        with self.opener.open(urllib.request.Request(self.server.url + path, data), timeout=60) as reply:
            return reply.status, reply.url, reply.read().decode()

    def websocket(self, path: str):
        from websockets.sync.client import connect

        cookie = "; ".join(f"{c.name}={c.value}" for c in self.cookies)
        return connect(
            self.server.url.replace("http://", "ws://") + path,
            origin=self.server.url,
            additional_headers={"Cookie": cookie},
            max_size=2**22,
            open_timeout=30,
        )


def receive_json(socket, timeout: float = 120) -> dict:
    return json.loads(socket.recv(timeout=timeout))


MAKE_KIOSK = """
from checkin.models import Kiosk
kiosk = Kiosk(name="Side entrance")
print(kiosk.set_new_token())
kiosk.save()
"""


@pytest.mark.servers
@pytest.mark.django_db
def test_staff_feed_on_one_web_process_shows_a_check_in_made_on_another(live_site):
    if live_site.backend != "postgresql":
        pytest.skip("across processes the channel layer is Redis: this runs in the PostgreSQL/Redis pass")
    kiosk_token = live_site.manage("shell", "-c", MAKE_KIOSK).stdout.split()[-1]
    first, second = live_site.start_web(), live_site.start_web()
    try:
        desk = Browser(first)
        signed_in = desk.post_form("/accounts/login/", {"username": "live-staff", "password": "live-staff-pass-123"})
        assert signed_in[:2] == (200, first.url + "/checkin/"), signed_in
        door = Browser(second)
        with desk.websocket("/ws/checkins/") as feed:
            assert receive_json(feed)["type"] == "ready"
            # A screen sits idle for long stretches: longer than channels-redis's 5 s wait on Redis
            # (which redis-py's default socket timeout once cut, closing every idle socket with 1011).
            time.sleep(7)
            registered = door.post_form("/checkin/kiosk/", {"token": kiosk_token}, form_page="/checkin/")
            assert registered[0] == 200 and "Side entrance" in registered[2], registered
            with door.websocket("/ws/identify/") as stream:
                ready = receive_json(stream)
                assert ready["device"] == "kiosk: Side entrance", ready
                stream.send(json.dumps({"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True}))
                assert receive_json(stream)["type"] == "consent_recorded"
                greeting = stream_until_checked_in_over_the_wire(stream, LACAMOIRE)
                assert greeting["name"] == "Alex Lacamoire" and not greeting["already"], greeting
            event = receive_json(feed, timeout=30)
        assert event["type"] == "checkin" and event["name"] == "Alex Lacamoire", event
        assert event["kiosk"] == "Side entrance" and event["person_id"] == greeting["person_id"]
        assert not {"image", "frame", "crop", "embedding"} & event.keys()
    except Exception:
        for server in (first, second):  # shown by pytest with the failure
            print(f"--- {server.url} ---\n{server.proc.log_path.read_text()[-4000:]}")
        raise
    finally:
        for server in (first, second):
            live_site.stop(server.proc)


def stream_until_checked_in_over_the_wire(stream, frame: bytes, limit: int = 8) -> dict:
    for _ in range(limit):
        stream.send(frame)
        while (message := receive_json(stream))["type"] != "faces":
            assert message["type"] != "error", message
            if message["type"] == "checked_in":
                return message
    message = receive_json(stream)  # the greeting follows its frame's faces
    assert message["type"] == "checked_in", message
    return message
