"""README "Who may do what", row by row against the real API, pages and websockets.

Each cell is one request by one kind of caller. An allowed API call is sent without its body where
that is enough to prove the caller got past authentication and permissions: recognize, verify and
creating a person then answer 400 (invalid input), activating a failed version 409 (not finished).
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from checkin.edge_api import notice_version
from people.models import FaceImage
from security.models import ApiKey, Role

from .conftest import token_client

pytestmark = pytest.mark.django_db

ACTORS = ["anonymous", "user token", "user session", "client key", "kiosk key", "staff token", "staff session"]

# column -> the answer each actor gets, in ACTORS order. For websockets: True = "ready", else the
# error code the consumer sends before closing.
MATRIX: dict[str, list] = {
    "recognize": [401, 400, 400, 400, 403, 400, 400],
    "verify": [401, 400, 400, 400, 403, 400, 400],
    "people read": [401, 403, 403, 200, 403, 200, 200],
    "faces read": [401, 403, 403, 200, 403, 200, 200],
    "people write": [401, 403, 403, 403, 403, 400, 400],
    "faces write": [401, 403, 403, 403, 403, 400, 400],
    "face media": [401, 403, 403, 403, 403, 200, 200],
    "models read": [401, 403, 403, 200, 403, 200, 200],
    "models activate": [401, 403, 403, 403, 403, 409, 409],
    "models train": [401, 403, 403, 403, 403, 400, 400],
    "model downloads": [401, 403, 403, 403, 200, 200, 200],
    "check-ins list": [401, 403, 403, 403, 403, 200, 200],
    "attendance report": [401, 403, 403, 403, 403, 200, 200],
    "checkin page": [200, 200, 200, 200, 200, 200, 200],
    "ws identify": ["not_authenticated", True, True, "not_authenticated", True, True, True],
    "checkin feed page": [302, 302, 302, 302, 302, 302, 200],
    "ws checkins": ["not_authenticated"] * 6 + [True],
    "admin": [302, 302, 302, 302, 302, 302, 200],
}
MATRIX["ws checkins"][2] = "not_staff"  # a signed-in non-staff session is recognized, then refused

CELLS = [(column, actor, expected) for column, row in MATRIX.items() for actor, expected in zip(ACTORS, row)]


@pytest.fixture
def world(django_user_model, staff_user, plain_user, kiosk):
    """The callers and the rows the calls touch."""
    from training.models import ModelVersion

    integration = django_user_model.objects.create_user("reporting", password="reporting-pass-123")
    door = django_user_model.objects.create_user("door-device", password="door-pass-123")
    _, client_key = ApiKey.issue(integration, "reporting tool", Role.CLIENT)
    _, kiosk_key = ApiKey.issue(door, "front door kiosk", Role.KIOSK, kiosk=kiosk)
    failed = ModelVersion.objects.create(number=9201, status=ModelVersion.Status.FAILED)
    ready = ModelVersion.objects.create(number=9202, status=ModelVersion.Status.READY)
    ready.labels.save("labels.json", ContentFile(b'{"people": []}'))
    face = FaceImage.objects.filter(status=FaceImage.Status.ACCEPTED).exclude(crop="").first()
    return {
        "staff": staff_user,
        "user": plain_user,
        "client key": client_key,
        "kiosk key": kiosk_key,
        "failed": failed,
        "ready": ready,
        "face": face,
    }


def http_client(actor: str, world) -> APIClient:
    client = APIClient()
    if actor in ("client key", "kiosk key"):
        client.credentials(HTTP_AUTHORIZATION=f"Token {world[actor]}")
    elif actor == "user token":
        client = token_client(world["user"])
    elif actor == "staff token":
        client = token_client(world["staff"])
    elif actor in ("user session", "staff session"):
        client.force_login(world["user" if actor == "user session" else "staff"])
    return client


def call(column: str, client: APIClient, world):
    face, failed, ready = world["face"], world["failed"], world["ready"]
    faces = f"/api/v1/people/{face.person_id}/faces/"
    requests = {
        "recognize": lambda: client.post("/api/v1/recognize/", {}, format="multipart"),
        "verify": lambda: client.post("/api/v1/verify/", {}, format="multipart"),
        "people read": lambda: client.get("/api/v1/people/"),
        "faces read": lambda: client.get(faces),
        "people write": lambda: client.post("/api/v1/people/", {}, format="json"),
        "faces write": lambda: client.post(faces, {}, format="multipart"),
        "face media": lambda: client.get(f"{faces}{face.pk}/crop/"),
        "models read": lambda: client.get("/api/v1/models/"),
        "models activate": lambda: client.post(f"/api/v1/models/{failed.pk}/activate/"),
        "models train": lambda: client.post("/api/v1/models/train/", {"force_activate": "maybe"}, format="json"),
        "model downloads": lambda: client.get(f"/api/v1/models/{ready.pk}/labels/"),
        "check-ins list": lambda: client.get("/api/v1/checkins/"),
        "attendance report": lambda: client.get("/api/v1/reports/attendance/"),
        "checkin page": lambda: client.get("/checkin/"),
        "checkin feed page": lambda: client.get("/checkin/feed/"),
        "admin": lambda: client.get("/admin/"),
    }
    return requests[column]()


def ws_headers(actor: str, world) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://testserver")]
    if actor in ("client key", "kiosk key"):
        headers.append((b"authorization", f"Token {world[actor]}".encode()))
    elif actor in ("user token", "staff token"):
        from rest_framework.authtoken.models import Token

        token, _ = Token.objects.get_or_create(user=world["user" if actor == "user token" else "staff"])
        headers.append((b"authorization", f"Token {token.key}".encode()))
    elif actor in ("user session", "staff session"):
        browser = http_client(actor, world)
        headers.append(
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}".encode())
        )
    return headers


def ws_answer(path: str, headers) -> object:
    """True if the consumer says "ready", else the code of the error it sends before closing."""
    from facesite.asgi import application

    async def connect():
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await communicator.connect(timeout=30)
        assert connected
        first = json.loads(await communicator.receive_from(timeout=60))
        await communicator.disconnect()
        return True if first["type"] == "ready" else first.get("code")

    return async_to_sync(connect)()


@pytest.mark.parametrize(("column", "actor", "expected"), CELLS, ids=[f"{c} | {a}" for c, a, _ in CELLS])
def test_who_may_do_what(column, actor, expected, world):
    if column.startswith("ws "):
        path = "/ws/identify/" if column == "ws identify" else "/ws/checkins/"
        assert ws_answer(path, ws_headers(actor, world)) == expected
        return
    response = call(column, http_client(actor, world), world)
    assert response.status_code == expected, (response.status_code, getattr(response, "content", b"")[:300])
    if expected in (401, 403) and response["Content-Type"] == "application/json":
        assert response.json()["error"]["code"] in ("not_authenticated", "authentication_failed", "permission_denied")
    if expected == 302:
        assert "login" in response["Location"]


def test_an_edge_devices_account_with_the_download_permission_reads_models_but_not_people(django_user_model):
    from django.contrib.auth.models import Permission

    device = django_user_model.objects.create_user("edge-7", password="device-pass-123")
    device.user_permissions.add(Permission.objects.get(codename="download_modelversion"))
    api = token_client(device)
    assert api.get("/api/v1/models/").status_code == 200  # it looks up the active version's files
    assert api.get("/api/v1/people/").status_code == 403
    assert api.post("/api/v1/models/train/", {}, format="json").status_code == 403


def test_an_account_given_the_view_permission_reads_people_but_not_photos(django_user_model):
    from django.contrib.auth.models import Permission

    auditor = django_user_model.objects.create_user("auditor", password="auditor-pass-123")
    auditor.user_permissions.add(Permission.objects.get(codename="view_person"))
    api = token_client(auditor)
    assert api.get("/api/v1/people/").status_code == 200
    face = FaceImage.objects.filter(status=FaceImage.Status.ACCEPTED).first()
    assert api.get(f"/api/v1/people/{face.person_id}/faces/").status_code == 403  # view_faceimage not given
    assert api.get(f"/api/v1/people/{face.person_id}/faces/{face.pk}/image/").status_code == 403
    assert api.post("/api/v1/people/", {"name": "Eve"}, format="json").status_code == 403


def test_a_staff_role_key_has_no_more_rights_than_its_non_staff_user(django_user_model):
    """A staff member demoted (or a staff-role key issued to a non-staff account): the key reads,
    as README says, but neither syncs the edge gallery, downloads model files nor writes check-ins,
    which the user's own token may not do either."""
    from checkin.models import CheckIn
    from people.models import Person
    from training.models import ModelVersion

    demoted = django_user_model.objects.create_user("ex-staff", password="ex-staff-pass-123", is_staff=True)
    _, raw = ApiKey.issue(demoted, "old staff key", Role.STAFF)
    ready = ModelVersion.objects.create(number=9302, status=ModelVersion.Status.READY)
    ready.labels.save("labels.json", ContentFile(b'{"people": []}'))
    key = APIClient()
    key.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    body = {
        "client_id": "4b1d8a3e-0000-4000-8000-000000000001",
        "person_id": Person.objects.first().pk,
        "checked_in_at": "2026-01-01T09:00:00+00:00",
        "similarity": 0.9,
        "threshold": 0.5,
        "frames": 4,
        "notice_version": notice_version(),
    }
    edge_calls = {
        "labels": lambda api: api.get(f"/api/v1/models/{ready.pk}/labels/"),
        "gallery": lambda api: api.get("/api/v1/edge/gallery/"),
        "manifest": lambda api: api.get("/api/v1/edge/manifest/"),
        "check-in upload": lambda api: api.post("/api/v1/checkins/", body, format="json"),
    }
    assert key.get(f"/api/v1/models/{ready.pk}/labels/").status_code == 200  # while its user is staff

    demoted.is_staff = False
    demoted.save()
    own = token_client(demoted)
    for name, call in edge_calls.items():
        assert call(own).status_code == 403, name
        response = call(key)
        assert response.status_code == 403, (name, response.status_code)
        assert response.json()["error"]["code"] == "permission_denied"
    assert not CheckIn.objects.filter(client_id=body["client_id"]).exists()
    assert key.get("/api/v1/people/").status_code == 200  # it still reads (README: "reads but does not write")


def test_staff_erase_export_and_register_webhooks_over_the_api_only_with_the_admins_permissions(django_user_model, settings):
    """Staff status alone (a reception account for the live feed) neither erases nor exports a
    person, nor sends recognitions elsewhere through a webhook: the Django permission the admin asks
    for the same thing is asked here too, of the user's token and of a staff-role key alike."""
    from django.contrib.auth.models import Permission

    from integrations.models import Webhook
    from people.models import Person

    reception = django_user_model.objects.create_user("reception", password="reception-pass-123", is_staff=True)
    _, raw = ApiKey.issue(reception, "reception key", Role.STAFF)
    key = APIClient()
    key.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    person = Person.objects.create(name="Somebody Erasable", legal_basis="explicit_consent")
    hook = Webhook.objects.create(url="https://hooks.example.com/in", events=["checkin.created"], secret="s" * 20)
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the new endpoint is on loopback: no name to resolve
    new_hook = {"url": "http://127.0.0.1:9/other", "events": ["checkin.created"], "secret": "t" * 20}
    calls = {
        "export": ("people.export_person", lambda api: api.get(f"/api/v1/people/{person.pk}/export/"), 200),
        "export by HEAD": ("people.export_person", lambda api: api.head(f"/api/v1/people/{person.pk}/export/"), 200),
        "webhooks list": ("integrations.view_webhook", lambda api: api.get("/api/v1/webhooks/"), 200),
        "webhook log": ("integrations.view_webhook", lambda api: api.get(f"/api/v1/webhooks/{hook.pk}/deliveries/"), 200),
        "webhook add": ("integrations.add_webhook", lambda api: api.post("/api/v1/webhooks/", new_hook, format="json"), 201),
        "erase": ("people.delete_person", lambda api: api.delete(f"/api/v1/people/{person.pk}/"), 204),  # last
    }
    for api in (token_client(reception), key):
        for name, (needed, call, _) in calls.items():
            response = call(api)
            assert response.status_code == 403, (name, response.status_code)
            assert response.request["REQUEST_METHOD"] == "HEAD" or needed in response.json()["error"]["message"]
    assert Person.objects.filter(pk=person.pk).exists() and Webhook.objects.count() == 1
    assert token_client(reception).get("/api/v1/people/").status_code == 200  # staff still read and enroll

    for name, (needed, call, allowed) in calls.items():
        app, codename = needed.split(".")
        reception.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
        reception = django_user_model.objects.get(pk=reception.pk)  # permissions are cached per instance
        response = call(key if name == "export" else token_client(reception))
        assert response.status_code == allowed, (name, response.content)
    assert not Person.objects.filter(pk=person.pk).exists() and Webhook.objects.count() == 2
