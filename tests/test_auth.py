"""Tokens, sessions and who may do what."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from people.models import Person

from .conftest import PROBES, read

pytestmark = pytest.mark.django_db


def test_token_is_issued_for_good_credentials(plain_user):
    response = APIClient().post("/api/v1/auth/token/", {"username": "client", "password": "client-pass-123"}, format="json")
    assert response.status_code == 200
    assert len(response.json()["token"]) == 40


def test_bad_credentials_get_a_clear_error(plain_user):
    response = APIClient().post("/api/v1/auth/token/", {"username": "client", "password": "wrong"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_credentials"


@pytest.mark.parametrize("header", [None, "Token not-a-real-token", "Bearer abc", "Token "])
def test_requests_without_a_valid_token_are_refused(header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post(
        "/api/v1/recognize/", {"image": SimpleUploadedFile("a.jpg", read(PROBES / "obama1.jpg"))}, format="multipart"
    )
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"] in ("not_authenticated", "authentication_failed")


def test_non_staff_accounts_neither_read_nor_change_people(user_api):
    # An account made to use /checkin/ is no reader of the roster: that needs staff or a read role.
    listing = user_api.get("/api/v1/people/")
    assert listing.status_code == 403 and listing.json()["error"]["code"] == "permission_denied"
    person = Person.objects.first()
    assert user_api.get(f"/api/v1/people/{person.pk}/").status_code == 403
    assert user_api.get(f"/api/v1/people/{person.pk}/faces/").status_code == 403
    response = user_api.post("/api/v1/people/", {"name": "Mallory"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert user_api.delete(f"/api/v1/people/{person.pk}/").status_code == 403
    upload = {"image": SimpleUploadedFile("a.jpg", read(PROBES / "obama1.jpg"))}
    assert user_api.post(f"/api/v1/people/{person.pk}/faces/", upload, format="multipart").status_code == 403


def test_session_login_works_for_the_browsable_api(client, staff_user):
    # Through the login page: django-axes needs the request that client.login() does not pass.
    assert client.post("/accounts/login/", {"username": "staff", "password": "staff-pass-123"}).status_code == 302
    response = client.get("/api/v1/people/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert b"Barack Obama" in response.content
