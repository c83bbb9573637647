"""Shared test set-up: real models, real images, a test database enrolled once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FACES = Path(__file__).parent / "fixtures" / "faces"
PEOPLE = FACES / "people"
PROBES = FACES / "probes"


@pytest.fixture(scope="session", autouse=True)
def _test_settings(tmp_path_factory):
    """Media in a temporary folder; django-q tasks run synchronously."""
    from django.conf import settings
    from django_q.conf import Conf

    settings.MEDIA_ROOT = tmp_path_factory.mktemp("media")
    settings.GALLERY_SNAPSHOT_DIR = tmp_path_factory.mktemp("gallery")
    # The session's enrollment queued a debounced retrain; on a long or loaded run it would look lost
    # once TRAINING_STALE_SECONDS passed (services.fail_dead_runs requeues it) and run in the middle of
    # whichever test asked for a retrain next. Tests of dead runs date their rows from this setting.
    settings.TRAINING_STALE_SECONDS = 24 * 3600
    # Django's advice for test runs: a fast password hasher (PBKDF2 costs 0.5-2 s per hash here, and
    # most tests create or sign in a user). Users exported to the sites of real server processes
    # (tests/live.py, tests/browser.py) are hashed with the sites' own PBKDF2, still listed here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *settings.PASSWORD_HASHERS]
    Conf.SYNC = True
    yield


@pytest.fixture(autouse=True)
def _fresh_gallery():
    """Each test starts from the database's gallery: a test's rolled-back transaction took change-log
    numbers (SQLite hands them out again) and may have written a snapshot of rows that are gone."""
    yield
    from recognition import gallery, services

    services.invalidate_gallery()
    gallery.delete_snapshots()


def _is_test_database(connection) -> bool:
    name = str(connection.settings_dict["NAME"])
    explicit = (connection.settings_dict.get("TEST") or {}).get("NAME")
    if connection.vendor == "sqlite":
        return connection.is_in_memory_db() or name == explicit
    return name == explicit or name.startswith("test_")


@pytest.fixture(autouse=True)
def _in_process_channel_layer(request):
    """In-process websocket tests (channels' WebsocketCommunicator) use the in-memory layer, also in
    the PostgreSQL/Redis pass. Each scenario runs on a fresh event loop (async_to_sync), while
    channels-redis keeps its connections per loop: a consumer's receive left on an earlier loop's
    connection could then never finish cancelling, and the test hung (seen with test_training's
    live test before test_live_stream). The Redis layer is exercised where it matters, across
    real processes (the `servers` tests: staff feed across workers, the production setup)."""
    # override_settings, not pytest-django's `settings`: some tests take a parameter of that name.
    from django.test import override_settings

    if request.node.get_closest_marker("servers") is not None:
        yield
        return
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}):
        yield


@pytest.fixture(autouse=True)
def _fresh_throttle_counts(monkeypatch):
    """Each test counts its requests afresh (a key prefix of its own, rather than clearing the cache,
    which on Redis would flush a database other processes use)."""
    import uuid

    from security.throttling import TokenRateThrottle

    monkeypatch.setattr(TokenRateThrottle, "cache_format", f"throttle_{uuid.uuid4().hex[:8]}_%(scope)s_%(ident)s")


@pytest.fixture(autouse=True)
def _fresh_socket_slots(monkeypatch):
    """Each test counts its open /ws/identify/ sockets afresh (checkin.socket_limits): a socket a
    test left open, or a reused kiosk/user id, must not count against the next test."""
    import uuid

    from checkin import socket_limits

    monkeypatch.setattr(socket_limits, "KEY_PREFIX", f"ws-slot-{uuid.uuid4().hex[:8]}")
    socket_limits.forget_all_in_process()


@pytest.fixture(autouse=True)
def _fresh_login_failures(request):
    """No test starts locked out by another's failed sign-ins (django-axes keeps them in the database:
    rolled back with each test, but not after a transactional one)."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(marker and marker.kwargs.get("transaction"))
    if not (marker or transactional or "db" in request.fixturenames):
        yield
        return
    request.getfixturevalue("transactional_db" if transactional else "db")
    from axes.utils import reset

    reset()
    yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, _test_settings):
    """Enroll the ten fixture people once; every test starts from this gallery and rolls back."""
    from django.core.management import call_command
    from django.db import connection

    # pytest-django creates the test database only if a collected test is marked django_db (or uses
    # `db`); a fixture asking for django_db_setup alone would otherwise enroll into the real database.
    if not _is_test_database(connection):
        pytest.fail(f"refusing to enroll into {connection.settings_dict['NAME']}: no test database was set up")
    with django_db_blocker.unblock():
        call_command("import_faces", str(PEOPLE), legal_basis="explicit_consent", verbosity=0)
        # Kate Siegel resembles Angelina Jolie closely enough to be held for review as a possible
        # mislabel; staff approve her, as they would.
        from people import services
        from people.models import FaceImage

        for face in FaceImage.objects.filter(status=FaceImage.Status.REVIEW):
            services.approve(face)


def read(path: Path | str) -> bytes:
    return Path(path).read_bytes()


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("staff", password="staff-pass-123", is_staff=True, is_superuser=True)


@pytest.fixture
def plain_user(django_user_model):
    return django_user_model.objects.create_user("client", password="client-pass-123")


def token_client(user):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def staff_api(staff_user):
    return token_client(staff_user)


@pytest.fixture
def user_api(plain_user):
    return token_client(plain_user)


def person_named(name: str):
    from people.models import Person

    return Person.objects.get(name=name)


def train_softmax_head_version(settings, capture_on_commit, export_tflite: bool = False):
    """Train (synchronously) a version that serves a softmax head, with nothing else queued."""
    from django_q.models import Schedule

    from training import services
    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()
    settings.TRAINING_EXPORT_TFLITE = export_tflite
    settings.TRAINING_UNKNOWN_FACES_DIR = None
    settings.TRAINING_APPROACHES = ["nearest_neighbour", "softmax_head"]
    settings.TRAINING_RECOGNIZER = "softmax_head"
    with capture_on_commit(execute=True):
        version, _ = services.request_training(ModelVersion.Trigger.API)
    version.refresh_from_db()
    assert version.status == "active" and version.recognizer == "softmax_head", version.error
    return version


@pytest.fixture(scope="session")
def live_site(django_db_setup, django_db_blocker, tmp_path_factory):
    """A throwaway deployment of the enrolled gallery for tests that start real server processes
    (tests/live.py); PostgreSQL + Redis in the PostgreSQL pass, SQLite otherwise."""
    from . import live

    backend = "postgresql" if os.environ.get("DATABASE_URL") else "sqlite"
    if backend == "postgresql":
        problem = live.postgres_reachable() or live.redis_reachable()
        if problem:
            live.skip_loudly(problem)
    with django_db_blocker.unblock():
        site = live.make_site(tmp_path_factory.mktemp("live"), backend)
    yield site
    site.close()


@pytest.fixture
def kiosk(db):
    """A registered check-in kiosk ("Front door") with a fresh token."""
    from checkin.models import Kiosk

    kiosk = Kiosk(name="Front door")
    kiosk.set_new_token()
    kiosk.save()
    return kiosk


@pytest.fixture(scope="session")
def site(django_db_setup, django_db_blocker, tmp_path_factory):
    """One throwaway deployment (daphne over its own SQLite file) shared by the session's browser
    tests, which clean up what their assertions count (tests/browser.py)."""
    from .browser import require_chromium, start_site

    require_chromium()
    with django_db_blocker.unblock():
        site = start_site(tmp_path_factory.mktemp("browser-site"))
    yield site
    site.stop()


@pytest.fixture
def chromium(tmp_path_factory):
    """Plain headless Chromium at 1280 px (no camera needed)."""
    from .browser import launch_chromium, require_chromium

    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path_factory.mktemp("chromium-profile"))
        yield context
        context.close()
