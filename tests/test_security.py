"""API keys with roles, revocation, per-token throttling, the audit log, CSRF, origins, no stack traces."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from people.models import Person
from security.models import ApiKey, AuditEvent, Role
from security.throttling import TokenRateThrottle

from .conftest import PEOPLE, PROBES, person_named, read

pytestmark = pytest.mark.django_db

OBAMA = read(PROBES / "obama1.jpg")


def key_client(user, role: str, name: str = "test key") -> tuple[APIClient, ApiKey]:
    key, raw = ApiKey.issue(user, name, role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client, key


def recognize(client, data: bytes = OBAMA):
    return client.post("/api/v1/recognize/", {"image": SimpleUploadedFile("p.jpg", data)}, format="multipart")


def enroll(client, person):
    photo = next((PEOPLE / "barack_obama").iterdir())
    return client.post(
        f"/api/v1/people/{person.pk}/faces/", {"image": SimpleUploadedFile("p.jpg", read(photo))}, format="multipart"
    )


def test_keys_are_stored_only_as_a_hash(staff_user):
    key, raw = ApiKey.issue(staff_user, "integration")
    assert len(raw) == 40 and raw not in (key.key_hash, key.prefix + key.key_hash)
    assert not ApiKey.objects.filter(key_hash=raw).exists()
    assert key.prefix == raw[:8]


def test_a_client_key_recognizes_and_reads_but_cannot_enroll(staff_user):
    client, _ = key_client(staff_user, Role.CLIENT)  # even on a staff account the key's role limits it
    response = recognize(client)
    assert response.status_code == 200
    assert response.json()["faces"][0]["match"]["name"] == "Barack Obama"
    assert client.get("/api/v1/people/").status_code == 200
    refused = enroll(client, person_named("Barack Obama"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert client.post("/api/v1/people/", {"name": "Mallory"}, format="json").status_code == 403


def test_a_kiosk_key_cannot_call_the_http_api(staff_user):
    client, key = key_client(staff_user, Role.KIOSK)
    assert recognize(client).status_code == 403
    assert client.get("/api/v1/people/").status_code == 403
    assert key.allows("stream") and not key.allows("recognize")


def test_a_client_key_reads_model_versions_but_cannot_train_or_download(staff_user):
    from training.models import ModelVersion

    client, _ = key_client(staff_user, Role.CLIENT)  # "read" is an explicit role: history and metrics
    assert client.get("/api/v1/models/").status_code == 200
    response = client.post("/api/v1/models/train/", {}, format="json")  # training: staff keys only
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
    version = ModelVersion.objects.create(number=901, status=ModelVersion.Status.READY)
    assert client.get(f"/api/v1/models/{version.pk}/labels/").status_code == 403
    staff, _ = key_client(staff_user, Role.STAFF)
    assert staff.get("/api/v1/models/").status_code == 200


def test_a_staff_key_enrolls(staff_user, django_capture_on_commit_callbacks):
    client, _ = key_client(staff_user, Role.STAFF)
    person = Person.objects.create(name="New Starter")
    with django_capture_on_commit_callbacks(execute=True):
        response = enroll(client, person)
    assert response.status_code == 201


def test_a_staff_role_key_on_a_plain_account_has_only_the_accounts_rights(plain_user):
    client, _ = key_client(plain_user, Role.STAFF)
    assert enroll(client, person_named("Barack Obama")).status_code == 403


def test_a_revoked_key_is_refused_on_its_next_request(staff_user):
    client, key = key_client(staff_user, Role.CLIENT)
    assert client.get("/api/v1/people/").status_code == 200
    key.revoke()
    response = client.get("/api/v1/people/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
    assert "revoked" in response.json()["error"]["message"]


def test_staff_revoke_keys_in_the_admin(client, staff_user):
    api, key = key_client(staff_user, Role.CLIENT)
    client.force_login(staff_user)
    response = client.post("/admin/security/apikey/", {"action": "revoke", "_selected_action": [key.pk]}, follow=True)
    assert response.status_code == 200 and b"Revoked 1 key" in response.content
    assert api.get("/api/v1/people/").status_code == 401


def test_a_key_created_in_the_admin_is_shown_once(client, staff_user, kiosk):
    client.force_login(staff_user)
    form = {"name": "door kiosk", "user": staff_user.pk, "role": "kiosk", "revoked_at_0": "", "revoked_at_1": ""}
    unbound = client.post("/admin/security/apikey/add/", form)
    assert unbound.status_code == 200 and "A kiosk key must name the kiosk it streams as." in unbound.content.decode()
    assert not ApiKey.objects.filter(name="door kiosk").exists()
    response = client.post("/admin/security/apikey/add/", {**form, "kiosk": kiosk.pk}, follow=True)
    assert response.status_code == 200
    key = ApiKey.objects.get(name="door kiosk")
    text = response.content.decode()
    shown = text.split("New key for door kiosk: ")[1][:40]
    assert shown.startswith(key.prefix)
    kiosk = APIClient()
    kiosk.credentials(HTTP_AUTHORIZATION=f"Token {shown}")
    assert kiosk.get("/api/v1/people/").status_code == 403  # authenticated, but a kiosk


def test_a_users_keys_share_one_rate_so_more_keys_do_not_multiply_it(staff_user, plain_user, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {**TokenRateThrottle.THROTTLE_RATES, "client": "3/min"})
    first, _ = key_client(staff_user, Role.CLIENT, "first")
    second, _ = key_client(staff_user, Role.CLIENT, "second")
    statuses = [api.get("/api/v1/people/").status_code for api in (first, second, first)]
    assert statuses == [200, 200, 200]
    refused = second.get("/api/v1/people/")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "throttled"
    assert int(refused["Retry-After"]) > 0
    third, _ = key_client(staff_user, Role.CLIENT, "third")  # a key made now starts from the same count
    assert third.get("/api/v1/people/").status_code == 429
    other_user, _ = key_client(plain_user, Role.CLIENT, "someone else's")
    assert other_user.get("/api/v1/people/").status_code == 200


def test_each_kiosk_keeps_its_own_rate_whoever_issued_its_keys(staff_user, kiosk, monkeypatch):
    """A kiosk key stands for a device: two kiosks whose keys one account issued are counted apart,
    and a second key for the same kiosk does not give it a second rate."""
    from checkin.models import Kiosk

    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {**TokenRateThrottle.THROTTLE_RATES, "kiosk": "2/min"})
    back_door = Kiosk(name="Back door")
    back_door.set_new_token()
    back_door.save()

    def kiosk_client(for_kiosk, name: str) -> APIClient:
        _, raw = ApiKey.issue(staff_user, name, Role.KIOSK, kiosk=for_kiosk)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
        return api

    front, back = kiosk_client(kiosk, "front door"), kiosk_client(back_door, "back door")
    assert [front.get("/api/v1/edge/manifest/").status_code for _ in range(3)] == [200, 200, 429]
    assert [back.get("/api/v1/edge/manifest/").status_code for _ in range(2)] == [200, 200]
    assert kiosk_client(kiosk, "front door, a second key").get("/api/v1/edge/manifest/").status_code == 429


def test_a_costly_requests_own_rate_is_shared_by_the_users_keys(staff_user, monkeypatch):
    from security.throttling import ScopedTokenThrottle

    monkeypatch.setattr(ScopedTokenThrottle, "THROTTLE_RATES", {**ScopedTokenThrottle.THROTTLE_RATES, "report": "2/min"})
    first, _ = key_client(staff_user, Role.STAFF, "first")
    second, _ = key_client(staff_user, Role.STAFF, "second")
    report = "/api/v1/reports/attendance/"
    assert [api.get(report).status_code for api in (first, second, first)] == [200, 200, 429]
    assert second.get("/api/v1/people/").status_code == 200  # the role's rate is another count


def test_anonymous_token_requests_are_throttled_by_address(plain_user, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {**TokenRateThrottle.THROTTLE_RATES, "anon": "2/min"})
    client = APIClient()
    statuses = [
        client.post("/api/v1/auth/token/", {"username": "client", "password": "guess"}, format="json").status_code
        for _ in range(3)
    ]
    assert statuses == [400, 400, 429]


def test_recognition_calls_are_audited_without_images(plain_user):
    client, key = key_client(plain_user, Role.CLIENT, "reception app")
    assert recognize(client).status_code == 200
    assert recognize(client, b"not an image").status_code == 400
    ok, refused = AuditEvent.objects.filter(api_key=key).order_by("id")
    obama = person_named("Barack Obama")
    assert ok.action == "recognize" and ok.status_code == 200 and ok.user == plain_user
    assert ok.actor == "client / key 'reception app'"
    assert ok.result["faces"] == 1 and ok.result["matches"][0]["person_id"] == obama.pk
    assert AuditEvent.objects.about(obama.pk).filter(pk=ok.pk).exists()
    assert refused.status_code == 400 and refused.result == {"error": "invalid_image"}
    stored = json.dumps([ok.result, refused.result])
    assert len(stored) < 500 and "base64" not in stored


def test_verification_calls_are_audited(user_api, plain_user):
    obama = person_named("Barack Obama")
    response = user_api.post(
        "/api/v1/verify/", {"image": SimpleUploadedFile("p.jpg", OBAMA), "person_id": obama.pk}, format="multipart"
    )
    assert response.status_code == 200 and response.json()["verified"] is True
    event = AuditEvent.objects.get(action="verify", user=plain_user)
    assert event.result["verified"] is True and event.result["person_id"] == obama.pk
    assert event.actor == "client" and event.duration_ms is not None


def test_unauthenticated_calls_are_not_audited():
    assert recognize(APIClient()).status_code == 401
    assert not AuditEvent.objects.exists()


def test_session_posts_to_the_api_need_a_csrf_token(staff_user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff_user)
    response = client.post("/api/v1/people/", {"name": "Via Session"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]


def test_an_unexpected_error_answers_without_a_stack_trace(user_api, monkeypatch):
    from recognition import services

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(services, "recognize", broken)
    response = recognize(user_api)
    assert response.status_code == 500
    body = response.content.decode()
    assert response.json()["error"]["code"] == "server_error"
    assert "secret internal detail" not in body and "Traceback" not in body


def test_websockets_from_other_origins_are_refused():
    import asyncio

    from channels.testing import WebsocketCommunicator

    from facesite.asgi import application

    async def attempt(origin: bytes):
        communicator = WebsocketCommunicator(application, "/ws/identify/", headers=[(b"origin", origin), (b"host", b"127.0.0.1")])
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert asyncio.run(attempt(b"https://evil.example.com")) is False


def test_the_costly_requests_have_their_own_rate_besides_the_roles(staff_api, monkeypatch):
    """Uploads (a photo stored and processed), exports, asking for a site-wide outlier scan and attendance
    reports cost far more than a read: each has a rate of its own, ordinary reads go on."""
    from security.throttling import ScopedTokenThrottle

    rates = {"enroll": "2/min", "export": "2/min", "outliers": "2/min", "report": "2/min"}
    monkeypatch.setattr(ScopedTokenThrottle, "THROTTLE_RATES", {**ScopedTokenThrottle.THROTTLE_RATES, **rates})
    person = Person.objects.create(name="Rate Limited", legal_basis="explicit_consent")
    calls = {
        "enroll": lambda: staff_api.post(f"/api/v1/people/{person.pk}/faces/", {"image": "not a file"}, format="multipart"),
        "export": lambda: staff_api.get(f"/api/v1/people/{person.pk}/export/"),
        "outliers": lambda: staff_api.post("/api/v1/outliers/"),  # a site-wide scan queued
        "report": lambda: staff_api.get("/api/v1/reports/attendance/"),
    }
    for name, call in calls.items():
        assert [call().status_code != 429 for _ in range(2)] == [True, True], name
        refused = call()
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "throttled", name
    assert staff_api.get("/api/v1/people/").status_code == 200  # the role's rate is untouched
    assert staff_api.get(f"/api/v1/people/{person.pk}/faces/").status_code == 200  # listing photos is no upload


def test_an_upload_is_counted_under_its_own_rate_without_the_view_changing_itself():
    """FaceImageViewSet throttles uploads only: the throttle carries the scope, the view stays as it is."""
    from rest_framework.test import APIRequestFactory

    from people.views import FaceImageViewSet
    from security.throttling import ScopedTokenThrottle

    for method, action, scopes in (("post", "create", ["enroll"]), ("get", "list", [])):
        view = FaceImageViewSet(action_map={method: action}, kwargs={"person_pk": 1}, format_kwarg=None)
        view.request = view.initialize_request(getattr(APIRequestFactory(), method)("/api/v1/people/1/faces/"))
        scoped = [t for t in view.get_throttles() if isinstance(t, ScopedTokenThrottle)]
        assert not hasattr(view, "throttle_scope"), method
        assert all(t.allow_request(view.request, view) for t in scoped)
        assert [t.scope for t in scoped] == scopes, method
