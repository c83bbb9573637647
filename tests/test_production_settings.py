"""Settings read from the environment and the production profile. The production run script itself is
tested end to end in tests/test_production_setup.py."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from . import live
from .conftest import PROBES, read

PRINT_SETTINGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "engine": s.DATABASES["default"]["ENGINE"], "name": str(s.DATABASES["default"]["NAME"]),
    "host": s.DATABASES["default"].get("HOST"), "health": s.DATABASES["default"].get("CONN_HEALTH_CHECKS"),
    "layer": s.CHANNEL_LAYERS["default"]["BACKEND"], "broker": "redis" if "redis" in s.Q_CLUSTER else "orm",
    "cache": s.CACHES["default"]["BACKEND"], "debug": s.DEBUG, "hosts": s.ALLOWED_HOSTS,
    "session_secure": s.SESSION_COOKIE_SECURE, "csrf_secure": s.CSRF_COOKIE_SECURE, "hsts": s.SECURE_HSTS_SECONDS,
    "static": s.STORAGES["staticfiles"]["BACKEND"], "media": str(s.MEDIA_ROOT), "max_bytes": s.FACE_UPLOAD_MAX_BYTES,
    "retention": s.FACE_PHOTO_RETENTION_DAYS, "throttle": s.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["client"],
}))
"""

CLEAN = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")}


def settings_with(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [live.PYTHON, "-c", PRINT_SETTINGS],
        cwd=live.ROOT,
        env={**CLEAN, "DJANGO_SETTINGS_MODULE": "facesite.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def loaded(**env) -> dict:
    result = settings_with(**env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.embedded_only  # settings read in a subprocess without the run's back ends
def test_without_variables_the_embedded_defaults_are_used():
    s = loaded()
    assert s["engine"] == "django.db.backends.sqlite3" and s["name"].endswith("var/db.sqlite3")
    assert s["layer"] == "channels.layers.InMemoryChannelLayer" and s["broker"] == "orm"
    assert s["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert s["debug"] is True and s["session_secure"] is False


@pytest.mark.embedded_only  # settings read in a subprocess without the run's back ends
def test_database_and_redis_urls_switch_to_postgresql_and_redis():
    s = loaded(DATABASE_URL="postgresql://app:pw@db.internal:5433/faces", REDIS_URL="redis://cache.internal:6379/2")
    assert s["engine"] == "django.db.backends.postgresql" and s["name"] == "faces" and s["host"] == "db.internal"
    assert s["health"] is True
    assert s["layer"] == "channels_redis.core.RedisChannelLayer" and s["broker"] == "redis"
    assert s["cache"] == "django.core.cache.backends.redis.RedisCache"


@pytest.mark.embedded_only  # settings read in a subprocess without the run's back ends
def test_the_production_profile_turns_on_secure_cookies_hsts_and_hashed_static_files():
    s = loaded(
        DEBUG="0",
        SECRET_KEY="x" * 50,
        ALLOWED_HOSTS="faces.example.org",
        MEDIA_ROOT="/srv/faces/media",
        FACE_UPLOAD_MAX_BYTES="2000000",
        FACE_PHOTO_RETENTION_DAYS="90",
        THROTTLE_CLIENT="60/min",
    )
    assert s["debug"] is False and s["hosts"] == ["faces.example.org"]
    assert s["session_secure"] and s["csrf_secure"] and s["hsts"] == 31_536_000
    assert s["static"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    assert s["media"] == "/srv/faces/media" and s["max_bytes"] == 2_000_000
    assert s["retention"] == 90 and s["throttle"] == "60/min"


@pytest.mark.embedded_only  # settings read in a subprocess without the run's back ends
def test_production_refuses_to_start_without_a_secret_key():
    result = settings_with(DEBUG="0")
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


@pytest.mark.embedded_only  # settings read in a subprocess without the run's back ends
def test_an_unsupported_database_url_is_a_clear_error():
    result = settings_with(DATABASE_URL="mysql://root@localhost/faces")
    assert result.returncode != 0 and "DATABASE_URL scheme 'mysql' is not supported" in result.stderr


def test_no_secrets_are_committed():
    files = subprocess.run(["git", "ls-files"], cwd=live.ROOT, capture_output=True, text=True, check=True).stdout.split()
    suspicious = []
    for name in files:
        path = live.ROOT / name
        if (
            path.suffix not in (".py", ".sh", ".toml", ".txt", ".md", ".yml", ".yaml", ".json", ".cfg", ".ini", ".env")
            or not path.is_file()
        ):
            continue
        text = path.read_text(errors="replace")
        if "-----BEGIN " + "PRIVATE KEY" in text or "-----BEGIN RSA " + "PRIVATE KEY" in text:
            suspicious.append(name)
        for line in text.splitlines():
            if line.startswith("SECRET_KEY") and "env_str" not in line and "dev-only" not in line:
                suspicious.append(f"{name}: {line}")
    assert not suspicious
    assert not any(name.endswith((".env", ".sqlite3", ".pem", ".key")) for name in files)


@pytest.mark.servers
@pytest.mark.django_db
def test_a_server_with_debug_off_sends_security_headers_serves_static_and_hides_errors(live_site):
    server = live_site.start_web()
    ok = server.recognize(read(PROBES / "obama1.jpg"))
    assert ok.status == 200
    assert ok.headers["X-Content-Type-Options"] == "nosniff" and ok.headers["X-Frame-Options"] == "DENY"
    assert ok.headers["Referrer-Policy"] == "same-origin"
    static = live.request(server.url + "/static/admin/css/base.css")
    assert static.status == 200 and b"body" in static.body  # WhiteNoise, with DEBUG off
    missing = live.request(server.url + "/no/such/page/")
    assert missing.status == 404 and b"Traceback" not in missing.body and b"urlpatterns" not in missing.body
    login = live.request(server.url + "/admin/login/")
    assert login.status == 200 and b"csrfmiddlewaretoken" in login.body
    live_site.stop(server.proc)
