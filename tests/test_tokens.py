"""Users' own API tokens expire, and die with the password they were issued under."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from security.authentication import user_for_token
from security.models import ApiKey, Role

pytestmark = pytest.mark.django_db

PASSWORD = "client-pass-123"


def obtain(username: str = "client", password: str = PASSWORD):
    return APIClient().post("/api/v1/auth/token/", {"username": username, "password": password}, format="json")


def with_token(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def age(key: str, hours: float) -> None:
    Token.objects.filter(key=key).update(created=timezone.now() - timedelta(hours=hours))


def test_a_token_within_its_lifetime_works(plain_user, settings):
    settings.API_TOKEN_TTL_HOURS = 24
    key = obtain().json()["token"]
    age(key, 23)
    assert with_token(key).post("/api/v1/recognize/", {}, format="multipart").status_code == 400  # in, then invalid


def test_an_expired_token_is_refused_with_a_clear_message_and_deleted(plain_user, settings):
    settings.API_TOKEN_TTL_HOURS = 24
    key = obtain().json()["token"]
    age(key, 25)
    response = with_token(key).post("/api/v1/recognize/", {}, format="multipart")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "authentication_failed" and "expired" in error["message"]
    assert not Token.objects.filter(key=key).exists()
    assert with_token(key).post("/api/v1/recognize/", {}, format="multipart").status_code == 401


def test_asking_again_after_expiry_issues_a_fresh_token(plain_user, settings):
    settings.API_TOKEN_TTL_HOURS = 24
    first = obtain().json()["token"]
    assert obtain().json()["token"] == first  # still valid: the same token
    age(first, 25)  # expired but never used since: the endpoint must not hand it back
    second = obtain().json()["token"]
    assert second != first
    assert with_token(second).post("/api/v1/recognize/", {}, format="multipart").status_code == 400
    assert with_token(first).post("/api/v1/recognize/", {}, format="multipart").status_code == 401


def test_a_ttl_of_zero_means_tokens_never_expire(plain_user, settings):
    settings.API_TOKEN_TTL_HOURS = 0
    key = obtain().json()["token"]
    age(key, 24 * 3650)
    assert with_token(key).post("/api/v1/recognize/", {}, format="multipart").status_code == 400


def test_changing_the_password_revokes_the_users_tokens(plain_user):
    key = obtain().json()["token"]
    plain_user.set_password("a-new-pass-456")
    plain_user.save()
    response = with_token(key).post("/api/v1/recognize/", {}, format="multipart")
    assert response.status_code == 401 and response.json()["error"]["code"] == "authentication_failed"
    assert not Token.objects.filter(user=plain_user).exists()
    assert obtain(password=PASSWORD).status_code == 400
    assert obtain(password="a-new-pass-456").json()["token"] != key


def test_a_password_changed_through_the_admin_revokes_tokens_too(client, staff_user, plain_user):
    key = obtain().json()["token"]
    client.force_login(staff_user)
    response = client.post(
        f"/admin/auth/user/{plain_user.pk}/password/",
        {"password1": "admin-set-pass-789", "password2": "admin-set-pass-789", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert not Token.objects.filter(key=key).exists()


def test_deactivating_an_account_deletes_its_tokens(plain_user):
    key = obtain().json()["token"]
    plain_user.is_active = False
    plain_user.save()
    assert not Token.objects.filter(key=key).exists()
    plain_user.is_active = True
    plain_user.save()
    assert with_token(key).post("/api/v1/recognize/", {}, format="multipart").status_code == 401


def test_saving_the_user_for_other_reasons_keeps_the_token(plain_user):
    key = obtain().json()["token"]  # the login itself updates last_login
    plain_user.first_name = "Clara"
    plain_user.save()
    assert with_token(key).post("/api/v1/recognize/", {}, format="multipart").status_code == 400


def test_api_keys_are_not_user_tokens_and_survive_a_password_change(plain_user, settings):
    settings.API_TOKEN_TTL_HOURS = 1
    key, raw = ApiKey.issue(plain_user, "reception app", Role.CLIENT)
    ApiKey.objects.filter(pk=key.pk).update(created_at=timezone.now() - timedelta(days=400))
    plain_user.set_password("a-new-pass-456")
    plain_user.save()
    assert with_token(raw).post("/api/v1/recognize/", {}, format="multipart").status_code == 400


def test_the_websocket_lookup_applies_the_same_expiry(plain_user, settings):
    settings.API_TOKEN_TTL_HOURS = 24
    key = obtain().json()["token"]
    assert user_for_token(key) == plain_user
    age(key, 25)
    assert user_for_token(key) is None
    assert not Token.objects.filter(key=key).exists()
    assert user_for_token("not-a-token") is None
