"""Webhooks and MQTT: signed deliveries to a real local receiver, retries, address checks, the
webhook API, and events on the real Mosquitto broker (127.0.0.1:1883)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as paho
import pytest
from django.test import override_settings

from integrations import events, mqtt
from integrations.models import Delivery, Webhook
from integrations.webhooks import UnsafeUrl, resolve

from .conftest import person_named
from .test_live_stream import OBAMA, answers_until, communicator_for, open_with_consent, run

SECRET = "a-long-shared-secret-for-tests"
BROKER = "mqtt://127.0.0.1:1883"
pytestmark = pytest.mark.django_db


# ---- a real HTTP receiver ------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 recording each POST's headers and raw body, answering with the
    given statuses in turn (200 once they run out)."""

    def __init__(self, *statuses: int, delay: float = 0.0, location: str = ""):
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                time.sleep(delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/facesite"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def payloads(self) -> list[dict]:
        return [json.loads(body) for _, body in self.requests]


def webhook_to(receiver: Receiver, *names: str) -> Webhook:
    return Webhook.objects.create(url=receiver.url, events=list(names), secret=SECRET)


def verified(headers: dict, body: bytes, secret: str = SECRET) -> bool:
    """How a receiver checks a delivery (the README's snippet)."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Facesite-Signature"])


def run_due_retries() -> None:
    """What the django-q cluster's scheduler does every 30 s: start the tasks now due."""
    from django_q.scheduler import scheduler

    time.sleep(0.05)  # a retry due "now" is picked up once the clock has passed it
    scheduler()


async def kiosk_checks_in(kiosk, frame: bytes) -> list[dict]:
    """A consented kiosk stream of the same frame until the check-in greeting."""
    communicator = communicator_for(kiosk=kiosk)
    await open_with_consent(communicator)
    replies = []
    for _ in range(8):
        await communicator.send_to(bytes_data=frame)
        replies.extend(await answers_until(communicator, "faces"))
        if any(m["type"] == "checked_in" for m in replies):
            break
    await communicator.disconnect()
    return replies


class MqttListener:
    """A paho client subscribed to ``<prefix>/#`` on the real broker, collecting (topic, payload, retain)."""

    def __init__(self, prefix: str):
        self.messages: list[tuple[str, str, bool]] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-listener-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(), bool(m.retain)))
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_connect = lambda c, *args: c.subscribe(f"{prefix}/#", qos=1)

    def __enter__(self):
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test's MQTT client could not subscribe to the broker"
        return self

    def __exit__(self, *exc):
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, topic: str, timeout: float = 10) -> list[tuple[str, str, bool]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if m[0] == topic]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"nothing on {topic} within {timeout} s; got {self.messages}")


@pytest.fixture
def mqtt_prefix():
    """A topic prefix of this test's own; its retained status is cleared and the publisher closed after."""
    prefix = f"facesite-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    mqtt.stop_all()
    cleaner = paho.Client(paho.CallbackAPIVersion.VERSION2)
    cleaner.connect("127.0.0.1", 1883)
    cleaner.loop_start()
    cleaner.publish(mqtt.status_topic(prefix), b"", qos=1, retain=True).wait_for_publish(5)
    cleaner.disconnect()
    cleaner.loop_stop()


# ---- end to end: a live check-in, delivered signed, retried; and on MQTT -------------------------


def test_a_live_checkin_is_delivered_signed_retried_after_a_500_and_published_on_mqtt(
    kiosk, monkeypatch, django_capture_on_commit_callbacks, mqtt_prefix
):
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)  # as in test_live_stream
    obama = person_named("Barack Obama")
    with (
        Receiver(500, 200) as checkins,
        Receiver() as faces_only,
        override_settings(
            WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_RETRY_BASE_SECONDS=0, MQTT_URL=BROKER, MQTT_TOPIC_PREFIX=mqtt_prefix
        ),
        MqttListener(mqtt_prefix) as listener,
    ):
        hook = webhook_to(checkins, "checkin.created", "person.erased")
        webhook_to(faces_only, "face.accepted")  # not subscribed to check-ins: gets nothing
        with django_capture_on_commit_callbacks(execute=True):
            replies = run(kiosk_checks_in, kiosk, OBAMA)
        greeting = next(m for m in replies if m["type"] == "checked_in")
        assert greeting["name"] == "Barack Obama"

        # First attempt: the receiver answered 500; a retry is scheduled, not a failure.
        assert len(checkins.requests) == 1
        delivery = Delivery.objects.get(webhook=hook)
        assert (delivery.status, delivery.attempts, delivery.response_code) == ("retrying", 1, 500)
        run_due_retries()
        assert len(checkins.requests) == 2
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.response_code) == ("delivered", 2, 200)
        assert not faces_only.requests

        # Both attempts carry the same signed body, the event and the delivery id.
        (first_headers, first_body), (headers, body) = checkins.requests
        assert first_body == body and first_headers["X-Facesite-Delivery"] == headers["X-Facesite-Delivery"]
        assert verified(headers, body)
        assert not verified(headers, body, secret="another-secret-of-some-length")
        assert headers["X-Facesite-Event"] == "checkin.created"
        assert headers["X-Facesite-Delivery"] == str(delivery.delivery_id)
        payload = json.loads(body)
        assert payload["event"] == "checkin.created" and payload["id"] == str(delivery.delivery_id)
        data = payload["data"]
        checkin = obama.checkins.get()
        assert data["checkin_id"] == checkin.pk and data["person"] == {"id": obama.pk, "name": "Barack Obama"}
        assert data["kiosk"] == {"id": kiosk.pk, "name": "Front door"}
        assert data["similarity"] == pytest.approx(checkin.similarity, abs=1e-4) and data["similarity"] >= data["threshold"]
        assert len(body) < 2000  # ids, times and scores: no image

        # MQTT: the same event on <prefix>/checkin/created, and a retained "online" status.
        (topic, published, retained), *_ = listener.wait_for(f"{mqtt_prefix}/checkin/created")
        assert not retained and json.loads(published)["data"] == data
        # the published message (it names him) is not kept in django-q's task table: only the
        # webhook deliveries' task records (their delivery id, no name) are
        from django_q.models import Task

        kept = [(t.func, t.args, t.result) for t in Task.objects.all()]
        assert any(func == "integrations.tasks.deliver" for func, *_ in kept)
        assert not [k for k in kept if "Barack Obama" in repr(k) or k[0] == "integrations.tasks.publish"], kept
    with MqttListener(mqtt_prefix) as late:  # subscribed after the fact: retained messages only
        assert late.wait_for(f"{mqtt_prefix}/status") == [(f"{mqtt_prefix}/status", "online", True)]


# ---- delivery behaviour ---------------------------------------------------------------------------


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_RETRY_BASE_SECONDS=0, WEBHOOK_MAX_ATTEMPTS=2)
def test_a_failing_receiver_never_fails_the_emitter_and_fails_for_good_after_the_last_attempt(
    django_capture_on_commit_callbacks,
):
    with Receiver(500, 503, 200) as receiver:
        webhook_to(receiver, "model.activated")
        with django_capture_on_commit_callbacks(execute=True):
            events.emit("model.activated", {"model_version": {"id": 1}})  # does not raise
        run_due_retries()
        run_due_retries()  # nothing left to run: the second failure was the last attempt
    delivery = Delivery.objects.get()
    assert [s for s in (delivery.status, delivery.attempts, delivery.response_code)] == ["failed", 2, 503]
    assert len(receiver.requests) == 2 and "503" in delivery.last_error


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_RETRY_BASE_SECONDS=0)
def test_an_unreachable_receiver_is_logged_and_retried(django_capture_on_commit_callbacks):
    with Receiver() as receiver:
        url = receiver.url
    Webhook.objects.create(url=url, events=["face.rejected"], secret=SECRET)  # the server is gone now
    with django_capture_on_commit_callbacks(execute=True):
        events.emit("face.rejected", {"face_id": 1})
    delivery = Delivery.objects.get()
    assert delivery.status == "retrying" and delivery.response_code is None and "refused" in delivery.last_error.lower()
    assert delivery.next_attempt_at is not None


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_SECONDS=0.5)
def test_a_slow_receiver_times_out(django_capture_on_commit_callbacks):
    with Receiver(delay=3) as receiver:
        webhook_to(receiver, "face.rejected")
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            events.emit("face.rejected", {"face_id": 1})
        assert time.monotonic() - started < 2.5
    delivery = Delivery.objects.get()
    assert delivery.status == "retrying" and "timed out" in delivery.last_error


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_TIMEOUT_SECONDS=1.0, WEBHOOK_DEADLINE_SECONDS=2.0)
def test_a_receiver_trickling_its_answer_is_cut_off_at_the_deadline(django_capture_on_commit_callbacks):
    """Each byte comes within the per-read timeout, so only a deadline on the whole attempt stops
    it from holding the worker: cut off at 2 s, retried later like any failure."""
    stop = threading.Event()

    def trickle(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.25)

    server = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=trickle, args=(server,), daemon=True)
    thread.start()
    try:
        Webhook.objects.create(url=f"http://127.0.0.1:{server.getsockname()[1]}/hook", events=["face.rejected"], secret=SECRET)
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            events.emit("face.rejected", {"face_id": 1})
        took = time.monotonic() - started
    finally:
        stop.set()
        server.close()
    assert took < 4, took  # without the deadline: 200+ bytes at 0.25 s, about 50 s
    delivery = Delivery.objects.get()
    assert delivery.status == "retrying" and "2 s in all" in delivery.last_error, delivery.last_error


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
def test_redirects_are_not_followed(django_capture_on_commit_callbacks):
    with Receiver(302, location="http://127.0.0.1:9/elsewhere") as receiver:
        webhook_to(receiver, "face.rejected")
        with django_capture_on_commit_callbacks(execute=True):
            events.emit("face.rejected", {"face_id": 1})
    delivery = Delivery.objects.get()
    assert len(receiver.requests) == 1
    assert delivery.status == "retrying" and delivery.response_code == 302 and "not followed" in delivery.last_error


def test_an_endpoint_on_a_private_address_is_refused_at_registration_and_at_send_time(
    staff_api, django_capture_on_commit_callbacks
):
    with Receiver() as receiver:
        with override_settings(WEBHOOK_ALLOW_PRIVATE=False):
            for url in (receiver.url, f"http://localhost:{receiver.server.server_port}/", "http://10.1.2.3/", "http://[::1]/"):
                response = staff_api.post(
                    "/api/v1/webhooks/", {"url": url, "events": ["checkin.created"], "secret": SECRET}, format="json"
                )
                assert response.status_code == 400, url
                error = response.json()["error"]
                assert error["code"] == "invalid" and "url" in error["fields"] and "private" in error["message"]
            # Registered while allowed (or its DNS changed since): still refused when sending.
            webhook_to(receiver, "face.rejected")
            with django_capture_on_commit_callbacks(execute=True):
                events.emit("face.rejected", {"face_id": 1})
        assert not receiver.requests
    assert "private" in Delivery.objects.get().last_error
    with override_settings(WEBHOOK_ALLOW_PRIVATE=True):
        assert resolve(receiver.url).addresses == ("127.0.0.1",)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.8",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "[::1]",
        "[fd00::1]",
        "[::ffff:127.0.0.1]",
        "224.0.0.1",
        # IPv6 forms that embed a private IPv4 address, reachable through a NAT64 gateway or a tunnel
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254 (cloud metadata)
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
        "[64:ff9b:1::a00:1]",  # local-use NAT64: refused whatever it embeds
        "[64:ff9b:1:808:8:800::]",  # ... 8.8.8.8 at /48 included
        "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
        "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
        "[2002:c0a8:101::1]",  # 6to4 of 192.168.1.1
        "[::127.0.0.1]",  # IPv4-compatible (deprecated) of 127.0.0.1
        "[::10.0.0.1]",
        "[::8.8.8.8]",  # IPv4-compatible: refused whatever it embeds
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
        "[2001:0:808:808:0:f5f5:f7f7:f7f7]",  # Teredo, even with a public server and client (both 8.8.8.8)
    ],
)
@override_settings(WEBHOOK_ALLOW_PRIVATE=False)
def test_non_public_addresses_are_refused(address):
    with pytest.raises(UnsafeUrl):
        resolve(f"https://{address}/hook")


@pytest.mark.parametrize(
    "address, expected",
    [
        ("8.8.8.8", "8.8.8.8"),
        ("[64:ff9b::808:808]", "64:ff9b::808:808"),  # NAT64 of a public address (a DNS64 network's answer)
        ("[2002:808:808::1]", "2002:808:808::1"),  # 6to4 of a public address
        ("[::ffff:8.8.8.8]", "::ffff:8.8.8.8"),
        ("[2606:4700:4700::1111]", "2606:4700:4700::1111"),
    ],
)
@override_settings(WEBHOOK_ALLOW_PRIVATE=False)
def test_a_public_address_is_accepted(address, expected):
    assert resolve(f"https://{address}:8443/hook?x=1").addresses == (expected,)
    assert resolve(f"https://{address}:8443/hook?x=1").path == "/hook?x=1"


# ---- the API --------------------------------------------------------------------------------------


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
def test_staff_create_list_change_and_delete_webhooks_and_the_secret_is_never_shown(staff_api):
    created = staff_api.post(
        "/api/v1/webhooks/",
        {"url": "http://127.0.0.1:8123/hook", "events": ["checkin.created", "visitor.created"], "secret": SECRET},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert "secret" not in body and body["created_by"] == "staff" and body["is_active"]
    assert Webhook.objects.get(pk=body["id"]).secret == SECRET

    listed = staff_api.get("/api/v1/webhooks/").json()["results"]
    assert [w["url"] for w in listed] == ["http://127.0.0.1:8123/hook"] and "secret" not in listed[0]

    changed = staff_api.patch(f"/api/v1/webhooks/{body['id']}/", {"events": ["person.erased"], "is_active": False}, format="json")
    assert changed.status_code == 200 and changed.json()["events"] == ["person.erased"] and not changed.json()["is_active"]
    assert Webhook.objects.get().secret == SECRET  # unchanged when not sent
    Delivery.objects.create(webhook_id=body["id"], event="person.erased", payload={"event": "person.erased"}, attempts=2)
    (logged,) = staff_api.get(f"/api/v1/webhooks/{body['id']}/deliveries/").json()["results"]
    assert (logged["event"], logged["status"], logged["attempts"]) == ("person.erased", "pending", 2)

    assert staff_api.delete(f"/api/v1/webhooks/{body['id']}/").status_code == 204
    assert not Webhook.objects.exists()


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
@pytest.mark.parametrize(
    "change, field",
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/hook"}, "url"),
        ({"url": "http://no-such-host.invalid/hook"}, "url"),
        ({"url": "http://127.0.0.1/a b"}, "url"),
        ({"events": ["checkin.deleted"]}, "events"),
        ({"events": []}, "events"),
        ({"events": "checkin.created"}, "events"),
        ({"secret": "short"}, "secret"),
        ({"secret": None}, "secret"),
    ],
)
def test_bad_webhook_input_is_a_400_naming_the_field(staff_api, change, field):
    good = {"url": "http://127.0.0.1:8123/hook", "events": ["checkin.created"], "secret": SECRET}
    response = staff_api.post("/api/v1/webhooks/", {**good, **change}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]
    assert not Webhook.objects.exists()


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
def test_only_staff_may_manage_webhooks(user_api, plain_user, staff_user):
    from security.models import ApiKey, Role

    from .conftest import token_client

    good = {"url": "http://127.0.0.1:8123/hook", "events": ["checkin.created"], "secret": SECRET}
    assert user_api.get("/api/v1/webhooks/").status_code == 403
    assert user_api.post("/api/v1/webhooks/", good, format="json").json()["error"]["code"] == "permission_denied"
    # A staff member's client-role key acts only within that role.
    _, raw = ApiKey.issue(staff_user, "reporting", role=Role.CLIENT)
    keyed = token_client(staff_user)
    keyed.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert keyed.get("/api/v1/webhooks/").status_code == 403
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/webhooks/").status_code in (401, 403)
    assert not Webhook.objects.exists()


# ---- privacy: names leave with the person ---------------------------------------------------------


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
def test_person_erased_carries_only_the_id_and_strikes_the_name_from_the_delivery_log(django_capture_on_commit_callbacks):
    with Receiver() as receiver:
        webhook_to(receiver, "checkin.created", "person.erased")
        obama = person_named("Barack Obama")
        with django_capture_on_commit_callbacks(execute=True):
            events.emit("checkin.created", {"checkin_id": 1, "person": {"id": obama.pk, "name": obama.name}})
        with django_capture_on_commit_callbacks(execute=True):
            events.person_erased(obama.pk, obama.name, lambda reason, recorded: None)
    checkin_sent, erased_sent = receiver.payloads()
    assert checkin_sent["data"]["person"]["name"] == "Barack Obama"  # sent while he existed
    assert erased_sent["event"] == "person.erased" and erased_sent["data"]["person"] == {"id": obama.pk}
    assert "Barack" not in json.dumps(erased_sent)
    logged = Delivery.objects.get(event="checkin.created").payload
    assert logged["data"]["person"] == {"id": obama.pk, "name": None}


def review_reason(looks_like: str, own: str, similarity: str = "0.71") -> str:
    """A possible_mislabel reason as recognition.enrollment words it."""
    return (
        f"Looks more like {looks_like} (similarity {similarity}) than {own} (0.40 to {own}'s other photos). "
        "Check the photo is filed under the right person, then approve it."
    )


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_RETRY_BASE_SECONDS=0)
def test_an_erasure_strikes_the_name_from_every_reason_in_the_delivery_log_and_a_retried_delivery_carries_none(
    django_capture_on_commit_callbacks,
):
    from people.models import FaceImage, Person
    from privacy.services import erase_person

    ada = Person.objects.create(name="Ada Lovelace", legal_basis="explicit_consent")
    bob = Person.objects.create(name="Bob Builder", legal_basis="explicit_consent")
    with Receiver(500, 500) as receiver:  # both first attempts fail: both are sent again after the erasure
        webhook_to(receiver, "face.needs_review", "face.rejected")
        with django_capture_on_commit_callbacks(execute=True):
            bobs = FaceImage.objects.create(
                person=bob,
                image="",
                status="review",
                reason_code="possible_mislabel",
                reason=review_reason("Ada Lovelace", "Bob Builder"),
                reason_person_id=ada.pk,
            )
            events.face_verdict(bobs)
            adas = FaceImage.objects.create(
                person=ada,
                image="",
                status="rejected",
                reason_code="several_faces",
                reason="2 faces were found (#0 [1, 2, 3, 4], #1 [5, 6, 7, 8], numbered left to right) and none is clearly "
                "the photo's subject; choose the one that is Ada Lovelace, or use a photo of Ada Lovelace alone.",
            )
            events.face_verdict(adas)
        assert len(receiver.requests) == 2 and all(b"Ada Lovelace" in body for _, body in receiver.requests)
        assert {d.status for d in Delivery.objects.all()} == {"retrying"}

        with django_capture_on_commit_callbacks(execute=True):
            report = erase_person(ada)
        assert report.deliveries_redacted == 2
        for delivery in Delivery.objects.all():  # the log, before anything is sent again
            assert "Ada" not in json.dumps(delivery.payload), delivery.payload
        run_due_retries()

    resent = receiver.requests[2:]
    assert len(resent) == 2 and {d.status for d in Delivery.objects.all()} == {"delivered"}
    for headers, body in resent:
        assert b"Ada" not in body and verified(headers, body)
    sent = {p["data"]["face_id"]: p["data"] for p in map(json.loads, (body for _, body in resent))}
    # Bob's photo: only the place that named her changed; his name and the advice are his reason still
    assert sent[bobs.pk]["reason"] == review_reason("another enrolled person (erased)", "Bob Builder")
    assert sent[bobs.pk]["person"] == {"id": bob.pk, "name": "Bob Builder"}
    # her own photo: the id, no name, and no reason (it named her); the code says why
    assert sent[adas.pk]["person"] == {"id": adas.person_id, "name": None}
    assert sent[adas.pk]["reason"] == "" and sent[adas.pk]["reason_code"] == "several_faces"


def test_an_erasure_rewrites_only_the_deliveries_about_that_person_not_a_namesakes_or_a_longer_names(
    django_capture_on_commit_callbacks,
):
    from people.models import Person
    from privacy.services import erase_person

    ann, other_ann, bob = (Person.objects.create(name=n, legal_basis="explicit_consent") for n in ("Ann", "Ann", "Bob"))
    hook = Webhook.objects.create(url="https://example.com/hook", events=["face.needs_review"], secret=SECRET)

    def delivery(reason: str, person_ids: str) -> Delivery:
        data = {"face_id": 1, "person": {"id": bob.pk, "name": "Bob"}, "reason_code": "possible_mislabel", "reason": reason}
        return Delivery.objects.create(
            webhook=hook,
            event="face.needs_review",
            payload=events.message("face.needs_review", data, uuid.uuid4(), ""),
            person_ids=person_ids,
        )

    about_ann = delivery(review_reason("Ann", "Bob"), f",{ann.pk},{bob.pk},")
    about_the_other_ann = delivery(review_reason("Ann", "Bob"), f",{other_ann.pk},{bob.pk},")
    # written before deliveries recorded whom they name: judged by the reason's wording
    old_about_ann = delivery(review_reason("Ann", "Bob"), "")
    old_about_ann_smith = delivery(review_reason("Ann Smith", "Bob"), "")

    with django_capture_on_commit_callbacks(execute=True):
        erase_person(ann)
    erased = review_reason("another enrolled person (erased)", "Bob")
    for row, reason in (
        (about_ann, erased),
        (about_the_other_ann, review_reason("Ann", "Bob")),
        (old_about_ann, erased),
        (old_about_ann_smith, review_reason("Ann Smith", "Bob")),
    ):
        row.refresh_from_db()
        assert row.payload["data"]["reason"] == reason
    assert about_ann.person_ids == f",{bob.pk},"


# ---- MQTT availability -----------------------------------------------------------------------------


def test_mqtt_status_is_retained_online_then_offline_by_last_will_and_on_shutdown(mqtt_prefix):
    with override_settings(MQTT_URL=BROKER, MQTT_TOPIC_PREFIX=mqtt_prefix):
        assert mqtt.publish("model.activated", {"event": "model.activated", "data": {}})
        publisher = mqtt.publisher()
        with MqttListener(mqtt_prefix) as listener:
            assert listener.wait_for(f"{mqtt_prefix}/status")[-1][1:] == ("online", True)
            # The process dies without saying goodbye: the broker publishes the last will.
            publisher.client.socket().close()
            deadline = time.monotonic() + 10
            while ("offline" not in [m[1] for m in listener.messages]) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert listener.messages[-1][:2] == (f"{mqtt_prefix}/status", "offline")
            # paho reconnects by itself and says online again; a clean shutdown says offline.
            deadline = time.monotonic() + 15
            while listener.messages[-1][1] != "online" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert listener.messages[-1][1] == "online"
            mqtt.stop_all()
            deadline = time.monotonic() + 10
            while listener.messages[-1][1] != "offline" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert listener.messages[-1][1] == "offline"


def test_a_broker_outage_does_not_fail_the_caller(caplog):
    with override_settings(MQTT_URL="mqtt://127.0.0.1:9", MQTT_TIMEOUT_SECONDS=1):
        assert mqtt.publish("checkin.created", {"event": "checkin.created"}) is False
    assert "could not publish checkin.created" in caplog.text


def test_a_queue_outage_logs_the_task_the_event_and_an_id_never_the_message(
    caplog, monkeypatch, django_capture_on_commit_callbacks
):
    import django_q.tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("the broker is down")

    monkeypatch.setattr(django_q.tasks, "async_task", broker_down)
    hook = Webhook.objects.create(url="https://example.org/hook", events=["checkin.created"], secret=SECRET)
    data = {"checkin_id": 7, "person": {"id": 3, "name": "Barack Obama"}, "kiosk": {"id": 1, "name": "Front door"}}
    with override_settings(MQTT_URL=BROKER), django_capture_on_commit_callbacks(execute=True):
        events.emit("checkin.created", data)
    delivery = Delivery.objects.get(webhook=hook)
    assert delivery.status == Delivery.Status.PENDING  # staff can retry it from the admin
    lines = [r.getMessage() for r in caplog.records]
    assert f"could not queue integrations.tasks.deliver for checkin.created {delivery.pk}" in lines
    published = [line for line in lines if line.startswith("could not queue integrations.tasks.publish for checkin.created ")]
    assert len(published) == 1 and uuid.UUID(published[0].rsplit(" ", 1)[1])  # the message's id
    assert not [line for line in lines if "Obama" in line or "Front door" in line or "checked_in" in line], lines


def test_the_check_in_notice_names_connected_systems_exactly_while_check_ins_are_sent_to_them(settings):
    from checkin.edge_api import checkin_notice

    said = "also sent at once to the other systems this site is connected to"
    settings.MQTT_URL = ""
    assert said not in checkin_notice()["kept"]
    hook = Webhook.objects.create(url="https://example.org/hook", events=["person.erased"], secret=SECRET)
    assert said not in checkin_notice()["kept"]  # receives no check-ins
    hook.events = ["model.activated", "checkin.created"]
    hook.save()
    assert said in checkin_notice()["kept"]
    hook.is_active = False
    hook.save()
    assert said not in checkin_notice()["kept"]
    settings.MQTT_URL = BROKER  # every event goes to the broker
    assert said in checkin_notice()["kept"]


# ---- the admin ------------------------------------------------------------------------------------


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_MAX_ATTEMPTS=1)
def test_admin_registers_a_webhook_sends_a_test_event_shows_the_log_and_retries(admin_client):
    with Receiver(500, 200) as receiver:
        added = admin_client.post(
            "/admin/integrations/webhook/add/",
            {"url": receiver.url, "events": ["checkin.created", "face.accepted"], "secret": SECRET, "is_active": "on"},
            follow=True,
        )
        assert added.status_code == 200 and not added.context.get("errors"), added.content[:2000]
        hook = Webhook.objects.get()
        assert hook.events == ["checkin.created", "face.accepted"] and hook.secret == SECRET

        tested = admin_client.post(
            "/admin/integrations/webhook/", {"action": "send_test_event", "_selected_action": [hook.pk]}, follow=True
        )
        assert b"failed" in tested.content  # the receiver answered 500 and one attempt is the limit
        delivery = Delivery.objects.get()
        assert (delivery.event, delivery.status, delivery.response_code) == ("webhook.test", "failed", 500)
        page = admin_client.get(f"/admin/integrations/webhook/{hook.pk}/change/").content.decode()
        assert "webhook.test" in page and "500" in page and SECRET not in page

        admin_client.post("/admin/integrations/delivery/", {"action": "retry", "_selected_action": [delivery.pk]}, follow=True)
        delivery.refresh_from_db()
        assert (delivery.status, delivery.response_code) == ("delivered", 200)
        headers, body = receiver.requests[-1]
        assert verified(headers, body) and json.loads(body)["data"]["webhook_id"] == hook.pk

        # A change that leaves the secret empty keeps it.
        admin_client.post(
            f"/admin/integrations/webhook/{hook.pk}/change/",
            {"url": receiver.url, "events": ["person.erased"], "secret": "", "is_active": "on"},
        )
        hook.refresh_from_db()
        assert hook.events == ["person.erased"] and hook.secret == SECRET


def test_admin_refuses_a_private_address(admin_client):
    with override_settings(WEBHOOK_ALLOW_PRIVATE=False):
        response = admin_client.post(
            "/admin/integrations/webhook/add/",
            {"url": "http://127.0.0.1:8123/hook", "events": ["checkin.created"], "secret": SECRET, "is_active": "on"},
        )
    assert response.status_code == 200 and b"private" in response.content
    assert not Webhook.objects.exists()


# ---- where the events come from ---------------------------------------------------------------------


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, TRAINING_RETRAIN_ON_ENROLLMENT=False)
def test_enrollment_verdicts_are_sent(staff_api, django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from people import services
    from people.models import FaceImage

    from .conftest import PEOPLE, PROBES, read

    def upload(person, data: bytes) -> FaceImage:
        with django_capture_on_commit_callbacks(execute=True):
            response = staff_api.post(
                f"/api/v1/people/{person.pk}/faces/", {"image": SimpleUploadedFile("photo.jpg", data)}, format="multipart"
            )
        assert response.status_code == 201, response.content
        return FaceImage.objects.get(pk=response.json()["id"])

    obama = person_named("Barack Obama")
    with Receiver() as receiver:
        webhook_to(receiver, "face.accepted", "face.rejected", "face.needs_review")
        rejected = upload(obama, read(PROBES / "two_people.jpg"))
        held = upload(obama, read(PEOPLE / "joe_biden/biden2.jpg"))  # Biden filed under Obama
        with django_capture_on_commit_callbacks(execute=True):
            services.approve(held)
    assert [(p["event"], p["data"]["face_id"]) for p in receiver.payloads()] == [
        ("face.rejected", rejected.pk),
        ("face.needs_review", held.pk),
        ("face.accepted", held.pk),
    ]
    first = receiver.payloads()[0]["data"]
    assert first["person"] == {"id": obama.pk, "name": "Barack Obama"} and first["reason_code"] == "several_faces"
    assert all(verified(headers, body) for headers, body in receiver.requests)


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
def test_activating_a_model_version_is_sent(staff_api, django_capture_on_commit_callbacks):
    from training.models import ModelVersion

    version = ModelVersion.objects.create(
        number=ModelVersion.next_number(), status=ModelVersion.Status.READY, threshold=0.6, recognizer="nearest_neighbour"
    )
    with Receiver() as receiver:
        webhook_to(receiver, "model.activated")
        with django_capture_on_commit_callbacks(execute=True):
            assert staff_api.post(f"/api/v1/models/{version.pk}/activate/").status_code == 200
    (sent,) = receiver.payloads()
    assert sent["event"] == "model.activated"
    assert sent["data"]["model_version"]["id"] == version.pk and sent["data"]["model_version"]["number"] == version.number


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
def test_erasing_a_person_sends_only_their_id(staff_api, django_capture_on_commit_callbacks):
    from people.models import Person

    person = Person.objects.create(name="Erase Me Soon")
    with Receiver() as receiver:
        webhook_to(receiver, "person.erased")
        with django_capture_on_commit_callbacks(execute=True):
            assert staff_api.delete(f"/api/v1/people/{person.pk}/").status_code == 204
    ((headers, body),) = receiver.requests
    assert headers["X-Facesite-Event"] == "person.erased" and b"Erase Me" not in body
    assert json.loads(body)["data"]["person"] == {"id": person.pk}


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
def test_staff_deleting_a_checkin_in_the_admin_sends_checkin_rejected(admin_client, kiosk, django_capture_on_commit_callbacks):
    from checkin.models import CheckIn

    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    wrong = CheckIn.objects.create(person=obama, similarity=0.61, threshold=0.55, frames=4, kiosk=kiosk)
    also_wrong = CheckIn.objects.create(person=biden, similarity=0.58, threshold=0.55, frames=4, kiosk=kiosk)
    with Receiver() as receiver:
        webhook_to(receiver, "checkin.rejected")
        with django_capture_on_commit_callbacks(execute=True):
            admin_client.post(f"/admin/checkin/checkin/{wrong.pk}/delete/", {"post": "yes"})
        with django_capture_on_commit_callbacks(execute=True):
            admin_client.post(
                "/admin/checkin/checkin/", {"action": "delete_selected", "_selected_action": [also_wrong.pk], "post": "yes"}
            )
    assert not CheckIn.objects.filter(pk__in=[wrong.pk, also_wrong.pk]).exists()
    sent = [p["data"] for p in receiver.payloads()]
    assert [(d["checkin_id"], d["person"]["name"], d["rejected_by"]) for d in sent] == [
        (wrong.pk, "Barack Obama", "admin"),
        (also_wrong.pk, "Joe Biden", "admin"),
    ]
    assert sent[0]["kiosk"] == {"id": kiosk.pk, "name": "Front door"}


def self_signed_localhost(folder) -> tuple[str, str]:
    """A certificate for the name "localhost" only (not 127.0.0.1), and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


@override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_MAX_ATTEMPTS=1)
def test_https_goes_to_the_checked_address_and_verifies_the_certificate_against_the_host_name(
    tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    import ssl

    cert, key = self_signed_localhost(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # trusted as a CA by the sender's default context
    with Receiver() as receiver:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
        port = receiver.server.server_port
        Webhook.objects.create(url=f"https://localhost:{port}/hook", events=["face.rejected"], secret=SECRET)
        Webhook.objects.create(url=f"https://127.0.0.1:{port}/hook", events=["face.rejected"], secret=SECRET)
        with django_capture_on_commit_callbacks(execute=True):
            events.emit("face.rejected", {"face_id": 1})
    by_host = {d.webhook.url.split("//")[1].split(":")[0]: d for d in Delivery.objects.select_related("webhook")}
    assert by_host["localhost"].status == "delivered"
    assert by_host["127.0.0.1"].status == "failed" and "certificate" in by_host["127.0.0.1"].last_error.lower()
    ((headers, _),) = receiver.requests  # the certificate's name did not match 127.0.0.1: nothing sent there
    assert headers["Host"] == f"localhost:{port}"


def test_the_minutely_schedule_puts_the_status_back_online_after_a_workers_will(mqtt_prefix):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import Schedule

    assert Schedule.objects.filter(func="integrations.tasks.announce_online", schedule_type="I", minutes=1).exists()
    with override_settings(MQTT_URL=BROKER, MQTT_TOPIC_PREFIX=mqtt_prefix), MqttListener(mqtt_prefix) as listener:
        # A recycled django-q worker left without a goodbye: the broker published its will.
        other = paho.Client(paho.CallbackAPIVersion.VERSION2)
        other.connect("127.0.0.1", 1883)
        other.loop_start()
        other.publish(mqtt.status_topic(mqtt_prefix), "offline", qos=1, retain=True).wait_for_publish(5)
        other.disconnect()
        other.loop_stop()
        assert listener.wait_for(f"{mqtt_prefix}/status")[-1][1] == "offline"
        Schedule.objects.filter(func="integrations.tasks.announce_online").update(next_run=timezone.now() - timedelta(seconds=1))
        run_due_retries()  # the cluster's scheduler: the minutely task is due
        deadline = time.monotonic() + 10
        while listener.messages[-1][1] != "online" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.messages[-1][:2] == (f"{mqtt_prefix}/status", "online")
    with MqttListener(mqtt_prefix) as late:
        assert late.wait_for(f"{mqtt_prefix}/status") == [(f"{mqtt_prefix}/status", "online", True)]
