"""Real server processes for the production tests: a throwaway site (database, media, static) holding
the fixture gallery, and ASGI servers, django-q workers and Redis servers started on loopback ports.

The site follows the test run's back end: with DATABASE_URL set (the PostgreSQL/Redis pass of
scripts/test.sh) it is a throwaway PostgreSQL database plus a Redis database; otherwise an SQLite
file with the embedded defaults. Nothing here touches the shared `facesite` database.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# Redis database for the live site's broker, cache and channel layer (apart from the app's db 0).
LIVE_REDIS_DB = int(os.environ.get("TEST_LIVE_REDIS_DB", "11"))


# The websocket message caps scripts/run.sh gives daphne (tests/test_ws_limits.py checks they match).
DAPHNE_WEBSOCKET_ARGS = ["--websocket-max-message-size", "16777216", "--websocket-max-frame-size", "16777216"]


def require_services() -> bool:
    """In CI (scripts/test.sh) an unreachable PostgreSQL/Redis fails the test instead of skipping it."""
    return bool(os.environ.get("REQUIRE_SERVICES"))


def skip_loudly(reason: str):
    message = f"!!! {reason} -- this production test did NOT run !!!"
    if require_services():
        pytest.fail(message)
    pytest.skip(message)


def postgres_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
        return None
    except Exception as err:
        return f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable ({err})"


def redis_reachable(port: int = REDIS_PORT) -> str | None:
    try:
        import redis

        redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=3).ping()
        return None
    except Exception as err:
        return f"Redis at {REDIS_HOST}:{port} is unreachable ({err})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---- HTTP without a client library: the tests see exactly what a client sees -------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict

    def json(self):
        return json.loads(self.body)


def multipart(fields: dict[str, str], files: dict[str, tuple[bytes | str, bytes]]) -> tuple[bytes, str]:
    """Encode a multipart/form-data body; file names may be raw bytes (non-UTF-8)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        filename = filename if isinstance(filename, bytes) else filename.encode()
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="'.encode()
            + filename
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None, timeout: float = 120) -> Reply:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read(), dict(err.headers))


# ---- the site and its processes ------------------------------------------------------------------------


@dataclass
class Site:
    """A throwaway deployment: environment for its processes, a staff token, and what to clean up."""

    root: Path
    env: dict
    token: str
    backend: str  # "postgresql" or "sqlite"
    processes: list = field(default_factory=list)
    database: str | None = None

    def with_env(self, **extra) -> dict:
        env = dict(self.env)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def manage(self, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def shell(self, code: str) -> subprocess.Popen:
        """``manage.py shell -c code`` running beside the test, its output piped (a step paused
        mid-transaction, for a race with what the test does meanwhile)."""
        return subprocess.Popen(
            [PYTHON, "manage.py", "shell", "-v", "0", "-c", code],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(args, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = self.root / f"{name}.log"
        self.processes.append(proc)
        return proc

    def start_web(self, port: int | None = None, env: dict | None = None) -> Server:
        port = port or free_port()
        proc = self.start(
            [str(ROOT / ".venv" / "bin" / "daphne"), "-b", "127.0.0.1", "-p", str(port), *DAPHNE_WEBSOCKET_ARGS]
            + ["facesite.asgi:application"],
            f"web-{port}",
            env,
        )
        server = Server(f"http://127.0.0.1:{port}", proc, self.token)
        server.wait_ready()
        return server

    def start_worker(self, env: dict | None = None, cluster: str | None = None) -> subprocess.Popen:
        """A django-q cluster: the default one, or ``cluster`` (e.g. "training") by Q_CLUSTER_NAME."""
        env = dict(env or self.env)
        if cluster:
            env["Q_CLUSTER_NAME"] = cluster
        return self.start([PYTHON, "manage.py", "qcluster"], f"qcluster-{cluster or 'default'}-{len(self.processes)}", env)

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for proc in reversed(self.processes):
            self.stop(proc)
        if self.database:
            drop_database(self.database)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    token: str

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.proc.log_path).read_text()[-3000:]}")
            try:
                if request(self.url + "/healthz/", timeout=5).status in (200, 503):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server at {self.url} did not come up: {Path(self.proc.log_path).read_text()[-3000:]}")

    def auth(self, token: str | None = None) -> dict:
        return {"Authorization": f"Token {token or self.token}"}

    def post_image(self, path: str, data: bytes, filename: str | bytes = "photo.jpg", field: str = "image", token=None, **fields):
        body, content_type = multipart({k: str(v) for k, v in fields.items()}, {field: (filename, data)})
        return request(self.url + path, "POST", body, {**self.auth(token), "Content-Type": content_type})

    def recognize(self, data: bytes, **kw) -> Reply:
        return self.post_image("/api/v1/recognize/", data, **kw)

    def get(self, path: str, token=None) -> Reply:
        return request(self.url + path, headers=self.auth(token))


def create_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def gallery_fixture(path: Path) -> str:
    """Write the test database's enrolled gallery and a staff user with a token as a loaddata fixture."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.core import serializers
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from people.models import FaceImage, Person

    with transaction.atomic():
        user = get_user_model().objects.create_user("live-staff", is_staff=True, is_superuser=True)
        user.password = make_password("live-staff-pass-123", hasher="pbkdf2_sha256")  # the site's own hasher
        user.save(update_fields=["password"])
        token = Token.objects.create(user=user)
        faces = list(FaceImage.objects.all())
        for face in faces:
            face.uploaded_by = None
        path.write_text(serializers.serialize("json", [user, token, *Person.objects.all(), *faces]))
        key = token.key
        transaction.set_rollback(True)
    return key


def make_site(tmp: Path, backend: str, redis_db: int = LIVE_REDIS_DB) -> Site:
    from django.conf import settings

    tmp.mkdir(parents=True, exist_ok=True)
    media = tmp / "media"
    shutil.copytree(settings.MEDIA_ROOT, media)
    token = gallery_fixture(tmp / "gallery.json")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DATABASE_TEST_NAME")}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        DJANGO_SETTINGS_MODULE="facesite.settings",
        DEBUG="0",
        # Strong enough for `check --deploy` (50+ characters, many distinct): run-production.sh refuses a weak key.
        SECRET_KEY="live-test-" + secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        MEDIA_ROOT=str(media),
        GALLERY_SNAPSHOT_DIR=str(tmp / "gallery"),
        STATIC_ROOT=str(tmp / "static"),
        SECURE_COOKIES="0",
        SECURE_HSTS_SECONDS="0",
        # Load tests send far more than a person would; throttling has its own tests.
        THROTTLE_STAFF="100000/min",
        THROTTLE_ENROLL="100000/min",
        LOG_LEVEL="WARNING",
        Q_WORKERS="1",
        # Retraining on enrollment (the training issue's feature) would occupy the one django-q
        # worker for minutes; these tests are about enrollment and serving.
        TRAINING_RETRAIN_ON_ENROLLMENT="0",
        OMP_NUM_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
    )
    database = None
    if backend == "postgresql":
        database = f"facesite_live_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        create_database(database)
        env["DATABASE_URL"] = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + database
        env["REDIS_URL"] = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
        import redis

        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db).flushdb()
    else:
        env["SQLITE_PATH"] = str(tmp / "db.sqlite3")
    site = Site(tmp, env, token, backend, database=database)
    try:
        site.manage("migrate", "--noinput", "-v0")
        site.manage("loaddata", str(tmp / "gallery.json"), "-v0")
        site.manage("collectstatic", "--noinput", "-v0")
    except Exception:
        site.close()
        raise
    return site
