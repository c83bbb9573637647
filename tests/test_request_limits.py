"""Oversized requests get a 4xx, never a 500, and a huge body is refused before it is read: through the
test client, and against a real uvicorn server for a 300 MB body sent over a raw socket."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
import time

import pytest
from django.test import Client

from people.models import Person

from . import live

pytestmark = pytest.mark.django_db


def post_raw(client, path: str, body: bytes, content_type: str):
    return client.generic("POST", path, body, content_type=content_type)


def error_of(response) -> dict:
    return response.json()["error"]


def urlencoded(n: int) -> bytes:
    return "&".join(f"f{i}=v" for i in range(n)).encode()


def test_a_50_mb_json_body_is_refused_with_413_before_parsing(staff_api, settings):
    assert settings.REQUEST_MAX_BYTES < 50 * 1024 * 1024
    body = json.dumps({"name": "x" * (50 * 1024 * 1024), "legal_basis": "explicit_consent"}).encode()
    response = post_raw(staff_api, "/api/v1/people/", body, "application/json")
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert f"{settings.REQUEST_MAX_BYTES:,}" in error_of(response)["message"]
    assert response["Connection"] == "close"
    assert not Person.objects.filter(name__startswith="xxxx").exists()


def test_a_body_over_the_limit_is_refused_on_routes_that_do_not_exist(settings):
    settings.REQUEST_MAX_BYTES = 10_000
    body = b"x" * 10_001
    api = post_raw(Client(), "/api/v1/no-such-thing/", body, "application/octet-stream")
    assert api.status_code == 413 and error_of(api)["code"] == "request_too_large"
    page = post_raw(Client(), "/no/such/page/", body, "application/octet-stream")
    assert page.status_code == 413 and page["Content-Type"].startswith("text/plain")
    # At the limit, the request goes on to the router (and finds nothing).
    assert post_raw(Client(), "/no/such/page/", b"x" * 10_000, "application/octet-stream").status_code == 404


def test_five_thousand_form_fields_are_a_400_in_the_api_error_shape(staff_api, settings):
    assert settings.DATA_UPLOAD_MAX_NUMBER_FIELDS == 1000
    response = post_raw(staff_api, "/api/v1/people/", urlencoded(5000), "application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert error_of(response)["code"] == "too_many_fields"
    body, content_type = live.multipart({f"f{i}": "v" for i in range(5000)}, {})
    response = post_raw(staff_api, "/api/v1/people/", body, content_type)
    assert response.status_code == 400 and error_of(response)["code"] == "too_many_fields"


def test_a_thousand_files_in_one_request_are_a_400(staff_api, settings):
    assert settings.DATA_UPLOAD_MAX_NUMBER_FILES == 100
    person = Person.objects.create(name="Many Files", legal_basis="explicit_consent")
    body, content_type = live.multipart({}, {f"image{i}": (f"{i}.jpg", b"\xff\xd8 not really") for i in range(1000)})
    response = post_raw(staff_api, f"/api/v1/people/{person.pk}/faces/", body, content_type)
    assert response.status_code == 400
    assert error_of(response)["code"] == "too_many_files"
    assert not person.faces.exists()


def test_form_data_over_the_memory_limit_is_a_413(staff_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body, content_type = live.multipart({"name": "y" * 20_000, "legal_basis": "explicit_consent"}, {})
    response = post_raw(staff_api, "/api/v1/people/", body, content_type)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_too_many_fields_on_a_page_is_a_plain_400():
    response = post_raw(Client(), "/accounts/login/", urlencoded(5000), "application/x-www-form-urlencoded")
    assert response.status_code == 400


# ---- a real server -------------------------------------------------------------------------------------


@pytest.fixture
def uvicorn_server(tmp_path):
    """uvicorn serving facesite.asgi as run-production.sh does (no proxy headers), with the default limits."""
    port = live.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "REQUEST_MAX_BYTES")}
    env.update(
        DJANGO_SETTINGS_MODULE="facesite.settings",
        DEBUG="0",
        SECRET_KEY="limits-" + secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        MEDIA_ROOT=str(tmp_path / "media"),
        STATIC_ROOT=str(tmp_path / "static"),
        FACE_WARMUP="0",
        TF_CPP_MIN_LOG_LEVEL="3",
        LOG_LEVEL="WARNING",
    )
    log = open(tmp_path / "uvicorn.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(live.ROOT / ".venv" / "bin" / "uvicorn"), "facesite.asgi:application", "--host", "127.0.0.1"]
        + ["--port", str(port), "--lifespan", "off", "--no-proxy-headers"],
        cwd=live.ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / "uvicorn.log").read_text()[-3000:])
        try:
            if live.request(url + "/no/such/page/", timeout=5).status == 404:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not come up: " + (tmp_path / "uvicorn.log").read_text()[-3000:])
        time.sleep(0.5)
    yield port
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    log.close()


def read_reply(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 10:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


@pytest.mark.servers
@pytest.mark.parametrize("path", ["/no/such/route/", "/api/v1/no-such-route/", "/api/v1/people/"])
def test_a_real_server_refuses_a_300_mb_body_from_its_headers(uvicorn_server, path):
    with socket.create_connection(("127.0.0.1", uvicorn_server), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 300000000\r\n\r\n".encode()
            + b'{"name": "'
            + b"x" * 1000
        )
        reply = read_reply(sock, timeout=10)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert elapsed < 5, elapsed  # answered from the headers, not after waiting for 300 MB
    if path.startswith("/api/"):
        body = reply.split(b"\r\n\r\n", 1)[1]
        assert b'"code": "request_too_large"' in body


@pytest.mark.servers
def test_a_real_server_cuts_off_a_chunked_body_past_the_limit(uvicorn_server):
    from django.conf import settings

    limit = settings.REQUEST_MAX_BYTES
    sent = 0
    with socket.create_connection(("127.0.0.1", uvicorn_server), timeout=10) as sock:
        sock.sendall(
            b"POST /no/such/route/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        chunk = os.urandom(1024 * 1024)
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        stop = threading.Event()

        def send_body():
            nonlocal sent
            try:
                while not stop.is_set() and sent < 4 * limit:
                    sock.sendall(framed)
                    sent += len(chunk)
            except OSError:
                pass  # the server closed the connection: the point of the test

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        reply = read_reply(sock, timeout=60)
        stop.set()
        sender.join(10)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert sent < 4 * limit, f"the server read {sent:,} bytes of a body over its {limit:,} byte limit"
