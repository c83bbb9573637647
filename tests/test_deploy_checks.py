"""`manage.py check --deploy --fail-level WARNING`, as scripts/run-production.sh runs it before serving:
a weak SECRET_KEY or a forgotten TLS setting stops the start; a good production configuration passes."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from . import live

# Each check runs `manage.py` in a subprocess without the run's back ends (CLEAN), so the
# PostgreSQL/Redis pass would only repeat it.
pytestmark = pytest.mark.embedded_only

CLEAN = {
    k: v
    for k, v in os.environ.items()
    if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")
    and not k.startswith(("SECURE_", "BEHIND_", "CSRF_"))
}
STRONG_KEY = secrets.token_urlsafe(50)


def deploy_check(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [live.PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=live.ROOT,
        env={**CLEAN, "DJANGO_SETTINGS_MODULE": "facesite.settings", "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


# Behind a TLS-terminating proxy: the configuration the README recommends for production.
BEHIND_TLS = {"DEBUG": "0", "ALLOWED_HOSTS": "faces.example.org", "BEHIND_TLS_PROXY": "1"}


@pytest.mark.parametrize("weak_key", ["changeme", "x" * 60, "django-insecure-" + "a1b2c3d4e5" * 5])
def test_a_weak_secret_key_fails_the_deploy_check(weak_key):
    result = deploy_check(SECRET_KEY=weak_key, **BEHIND_TLS)
    assert result.returncode != 0
    assert "security.W009" in result.stderr, result.stderr[-2000:]


def test_a_strong_key_behind_a_tls_proxy_passes_without_warnings():
    result = deploy_check(SECRET_KEY=STRONG_KEY, **BEHIND_TLS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "System check identified no issues (3 silenced)." in result.stdout, result.stdout  # W005, W021, W008


def test_without_tls_or_a_redirect_the_deploy_check_fails():
    result = deploy_check(SECRET_KEY=STRONG_KEY, DEBUG="0", ALLOWED_HOSTS="faces.example.org")
    assert result.returncode != 0
    assert "security.W008" in result.stderr, result.stderr[-2000:]


def test_the_production_test_environment_passes(tmp_path):
    """The environment tests/live.py gives the production script (plain http on loopback, declared by
    SECURE_COOKIES=0 and SECURE_HSTS_SECONDS=0), with its strong key."""
    env = {
        "DEBUG": "0",
        "SECRET_KEY": "live-test-" + secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_COOKIES": "0",
        "SECURE_HSTS_SECONDS": "0",
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
    }
    result = deploy_check(**env)
    assert result.returncode == 0, result.stderr[-2000:]
    # ... and the same with the weak key tests/live.py used before: refused.
    weak = deploy_check(**{**env, "SECRET_KEY": "live-test-" + "0123456789abcdef" * 2})
    assert weak.returncode != 0 and "security.W009" in weak.stderr


def test_the_production_script_fails_on_warnings():
    script = (live.ROOT / "scripts" / "run-production.sh").read_text()
    assert "manage.py check --deploy --fail-level WARNING" in script
    assert "--fail-level ERROR" not in script
