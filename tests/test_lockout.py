"""Sign-in lockout (django-axes) on the login page, the admin's and the API token endpoint, and the
client address taken through TRUSTED_PROXY_COUNT proxies only. Real requests through the test client."""

from __future__ import annotations

import time

import pytest
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from facesite.client_ip import client_ip
from security.throttling import TokenRateThrottle

pytestmark = pytest.mark.django_db

STAFF = ("staff", "staff-pass-123")


class LoginPage:
    """/accounts/login/: a failure re-shows the form (200), a success redirects (302)."""

    path = "/accounts/login/"

    def __init__(self):
        self.client = Client()

    def attempt(self, username: str, password: str, **headers):
        return self.client.post(self.path, {"username": username, "password": password}, headers=headers)

    def succeeded(self, response) -> bool:
        return response.status_code == 302

    def failed_plainly(self, response) -> bool:
        return response.status_code == 200 and b"Please enter a correct" in response.content


class AdminLogin(LoginPage):
    path = "/admin/login/"

    def attempt(self, username: str, password: str, **headers):
        data = {"username": username, "password": password, "next": "/admin/"}
        return self.client.post(self.path, data, headers=headers)

    def failed_plainly(self, response) -> bool:
        return response.status_code == 200 and b"Please enter the correct" in response.content


class TokenEndpoint:
    """/api/v1/auth/token/: a failure is 400 invalid_credentials, a success 200 with a token."""

    path = "/api/v1/auth/token/"

    def __init__(self):
        self.client = APIClient()

    def attempt(self, username: str, password: str, **headers):
        return self.client.post(self.path, {"username": username, "password": password}, format="json", headers=headers)

    def succeeded(self, response) -> bool:
        return response.status_code == 200 and "token" in response.json()

    def failed_plainly(self, response) -> bool:
        return response.status_code == 400 and response.json()["error"]["code"] == "invalid_credentials"


ENDPOINTS = {"login page": LoginPage, "admin login": AdminLogin, "api token": TokenEndpoint}


def assert_locked_out(response, endpoint, settings):
    assert response.status_code == 429, (response.status_code, response.content[:300])
    assert int(response["Retry-After"]) == round(settings.LOGIN_LOCKOUT_MINUTES * 60)
    if isinstance(endpoint, TokenEndpoint):
        error = response.json()["error"]
        assert error["code"] == "locked_out"
        assert "Too many failed sign-in attempts" in error["message"]
    else:
        assert response["Content-Type"].startswith("text/html")
        assert b"Sign-in locked" in response.content and b"Too many failed sign-in attempts" in response.content


@pytest.fixture(params=list(ENDPOINTS), ids=list(ENDPOINTS))
def endpoint(request):
    return ENDPOINTS[request.param]()


def test_wrong_passwords_lock_the_account_even_for_the_right_password(endpoint, staff_user, settings):
    limit = settings.LOGIN_FAILURE_LIMIT
    assert limit == 5 and settings.LOGIN_LOCKOUT_MINUTES == 15  # the documented defaults
    for _ in range(limit - 1):
        assert endpoint.failed_plainly(endpoint.attempt("staff", "not-the-password"))
    assert_locked_out(endpoint.attempt("staff", "not-the-password"), endpoint, settings)
    assert_locked_out(endpoint.attempt(*STAFF), endpoint, settings)
    # The other forms are locked too: the count is per username, whichever form took the guesses.
    for other in ENDPOINTS.values():
        assert_locked_out(other().attempt(*STAFF), other(), settings)


def test_a_changing_x_forwarded_for_does_not_escape_the_address_lock(endpoint, staff_user, settings):
    settings.TRUSTED_PROXY_COUNT = 0
    limit = settings.LOGIN_FAILURE_LIMIT
    # A different username each time (no username reaches the limit) and a forged address each time.
    for i in range(limit - 1):
        response = endpoint.attempt(f"guess{i}", "x", **{"X-Forwarded-For": f"203.0.113.{i}"})
        assert endpoint.failed_plainly(response)
    locked = endpoint.attempt(f"guess{limit}", "x", **{"X-Forwarded-For": "198.51.100.7"})
    assert_locked_out(locked, endpoint, settings)
    # The address is locked: even staff's right password from it is refused, whatever the header says.
    assert_locked_out(endpoint.attempt(*STAFF, **{"X-Forwarded-For": "192.0.2.1"}), endpoint, settings)


def test_with_one_trusted_proxy_the_right_most_forwarded_address_counts(endpoint, staff_user, settings):
    from axes.models import AccessAttempt

    settings.TRUSTED_PROXY_COUNT = 1
    limit = settings.LOGIN_FAILURE_LIMIT
    # Through the proxy (REMOTE_ADDR) from many clients: each right-most address fails fewer times than
    # the limit, so none is locked, although the proxy's own address sent them all.
    for i in range(limit + 2):
        response = endpoint.attempt(f"user{i}", "x", **{"X-Forwarded-For": f"10.9.9.9, 203.0.113.{i}"})
        assert endpoint.failed_plainly(response), response.status_code
    assert endpoint.succeeded(endpoint.attempt(*STAFF, **{"X-Forwarded-For": "203.0.113.200"}))

    # One client, whatever it writes to the left of the proxy's entry, is counted as itself.
    for i in range(limit - 1):
        response = endpoint.attempt(f"other{i}", "x", **{"X-Forwarded-For": f"10.0.0.{i}, 198.51.100.7"})
        assert endpoint.failed_plainly(response)
    locked = endpoint.attempt("other-last", "x", **{"X-Forwarded-For": "10.1.1.1, 198.51.100.7"})
    assert_locked_out(locked, endpoint, settings)
    assert_locked_out(endpoint.attempt(*STAFF, **{"X-Forwarded-For": "1.2.3.4, 198.51.100.7"}), endpoint, settings)
    assert AccessAttempt.objects.filter(ip_address="198.51.100.7").exists()
    assert not AccessAttempt.objects.filter(ip_address__in=["10.0.0.0", "1.2.3.4", "10.9.9.9"]).exists()


def test_the_lock_expires_after_the_cool_off(endpoint, staff_user, settings):
    settings.LOGIN_LOCKOUT_MINUTES = 0.03  # 1.8 s
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        endpoint.attempt("staff", "wrong")
    locked = endpoint.attempt(*STAFF)
    assert locked.status_code == 429 and locked["Retry-After"] == "2"
    time.sleep(2.0)
    assert endpoint.succeeded(endpoint.attempt(*STAFF))


def test_a_successful_sign_in_clears_the_failures(endpoint, staff_user, settings):
    limit = settings.LOGIN_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert endpoint.failed_plainly(endpoint.attempt("staff", "wrong"))
    assert endpoint.succeeded(endpoint.attempt(*STAFF))
    # Counted afresh: another limit - 1 failures do not lock.
    for _ in range(limit - 1):
        assert endpoint.failed_plainly(endpoint.attempt("staff", "wrong"))
    assert endpoint.succeeded(endpoint.attempt(*STAFF))


def test_the_api_throttle_counts_anonymous_callers_by_their_real_address(plain_user, settings, monkeypatch):
    settings.TRUSTED_PROXY_COUNT = 0
    settings.LOGIN_FAILURE_LIMIT = 100  # the throttle, not the lockout, is under test
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {**TokenRateThrottle.THROTTLE_RATES, "anon": "2/min"})
    client = APIClient()
    statuses = [
        client.post(
            "/api/v1/auth/token/",
            {"username": "client", "password": "guess"},
            format="json",
            headers={"X-Forwarded-For": f"203.0.113.{i}"},
        ).status_code
        for i in range(3)
    ]
    assert statuses == [400, 400, 429]


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (0, None, "192.0.2.10"),
        (0, "203.0.113.5", "192.0.2.10"),
        (1, None, "192.0.2.10"),
        (1, "203.0.113.5", "203.0.113.5"),
        (1, "6.6.6.6, 203.0.113.5", "203.0.113.5"),
        (2, "6.6.6.6, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
        (2, "203.0.113.5", "203.0.113.5"),  # fewer entries than proxies: the left-most, as DRF does
    ],
)
def test_client_ip_trusts_only_the_configured_proxies(settings, trusted, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = trusted
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.10", headers=headers)
    assert client_ip(request) == expected
