"""End to end in headless Chromium: a fake camera plays a video made from real face photos.

A real ASGI server (daphne, in a subprocess) serves a throwaway SQLite site holding the test
session's enrolled gallery. The browser registers as a kiosk, reads the notice, consents, and the
page streams its camera over /ws/identify/: strangers are drawn as unknown, Barack Obama by name,
and his check-in is greeted and stored. The verification page compares two photos.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import PEOPLE, PROBES

# django_db: so that pytest-django creates the test database the gallery is copied from.
pytestmark = [pytest.mark.browser, pytest.mark.django_db]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
KIOSK_TOKEN = "e2e-kiosk-token-for-the-front-door"
STAFF_PASSWORD = "browser-pass-123"
WAIT_MS = 300_000  # model loading and inference on a shared 2-core machine can be slow
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"!!! {CHROMIUM} is missing: the browser tests cannot run. Install it with "
            "`apt-get install -y chromium chromium-driver` (scripts/test.sh does this) !!!"
        )


def letterboxed(path: Path, size=(640, 480)) -> np.ndarray:
    """A photo fitted into a camera picture, (480, 640, 3) uint8 BGR."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    scale = min(size[0] / image.shape[1], size[1] / image.shape[0])
    small = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    top, left = (size[1] - small.shape[0]) // 2, (size[0] - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return canvas


def write_y4m(path: Path, scenes: list[tuple[np.ndarray, int]], fps: int = 10) -> None:
    """Write 640x480 yuv420p Y4M: each scene is a BGR picture shown for so many frames."""
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W640 H480 F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for picture, frames in scenes:
            planes = cv2.cvtColor(picture, cv2.COLOR_BGR2YUV_I420).tobytes()  # Y, then U, then V
            for _ in range(frames):
                out.write(b"FRAME\n" + planes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gallery_fixture(path: Path) -> None:
    """The test database's enrolled people, a kiosk and a staff user, as a loaddata fixture."""
    from django.contrib.auth import get_user_model
    from django.core import serializers

    from checkin.models import Kiosk, hash_token
    from people.models import FaceImage, Person

    user = get_user_model()(username="browser-staff", is_staff=True, is_superuser=True, pk=900001)
    user.set_password(STAFF_PASSWORD)
    kiosk = Kiosk(pk=900001, name="Front door", token_hash=hash_token(KIOSK_TOKEN), token_prefix=KIOSK_TOKEN[:8])
    rows = json.loads(serializers.serialize("json", [*Person.objects.all(), *FaceImage.objects.in_gallery()]))
    for row in rows:
        row["fields"].pop("uploaded_by", None)  # users of the test database are not copied
    rows += json.loads(serializers.serialize("json", [user]))
    kiosk_row = json.loads(serializers.serialize("json", [kiosk]))[0]
    kiosk_row["fields"]["created_at"] = "2026-01-01T00:00:00Z"
    rows.append(kiosk_row)
    path.write_text(json.dumps(rows))


class Site:
    """A throwaway deployment: its own SQLite file and media folder, served by daphne."""

    def __init__(self, root: Path):
        self.root = root
        self.db = root / "site.sqlite3"
        self.media = root / "media"
        self.media.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL", "Q_SYNC")} | {
            "DJANGO_SETTINGS_MODULE": "facesite.settings",
            "SQLITE_PATH": str(self.db),
            "MEDIA_ROOT": str(self.media),
            "DEBUG": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CHECKIN_STABLE_FRAMES": "3",
        }
        self.log = open(root / "daphne.log", "wb")
        self.server: subprocess.Popen | None = None

    def manage(self, *args: str) -> None:
        subprocess.run([str(ROOT / ".venv/bin/python"), "manage.py", *args], cwd=ROOT, env=self.env, check=True, timeout=600)

    def start(self) -> None:
        daphne = str(ROOT / ".venv/bin/daphne")
        self.server = subprocess.Popen(
            [daphne, "-b", "127.0.0.1", "-p", str(self.port), "facesite.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.server.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/checkin/", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"daphne did not answer within 240 s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self.log.flush()
        return (self.root / "daphne.log").read_text(errors="replace")[-4000:]

    def query(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
        self.log.close()


@pytest.fixture(scope="module")
def site(django_db_setup, django_db_blocker, tmp_path_factory):
    require_chromium()
    root = tmp_path_factory.mktemp("browser-site")
    with django_db_blocker.unblock():
        gallery_fixture(root / "gallery.json")
    site = Site(root)
    site.manage("migrate", "--noinput", "-v0")
    site.manage("loaddata", str(root / "gallery.json"), "-v0")
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory) -> Path:
    """Five seconds of strangers (a group photo, nobody enrolled), then Barack Obama, looped by Chromium."""
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    write_y4m(path, [(letterboxed(PROBES / "multiface.jpg"), 50), (letterboxed(PROBES / "obama1.jpg"), 100)])
    return path


@pytest.fixture
def browser(camera_video, tmp_path_factory):
    """Chromium with the fake camera; per test, so it starts after the test database is set up
    (Playwright's event loop must not be running while Django touches the database)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera_video}"],
            permissions=["camera"],
            viewport={"width": 800, "height": 900},
        )
        yield context
        context.close()


def test_kiosk_checks_in_an_enrolled_person_after_consent_and_strangers_stay_unknown(site, browser):
    page = browser.new_page()
    try:
        page.goto(site.url + "/checkin/")
        page.fill("#kiosk-token", KIOSK_TOKEN)
        page.click("#kiosk-form button")
        page.wait_for_selector("#consent")
        assert "Kiosk: Front door" in page.inner_text("form.device")

        # No consent, no camera: the button stays disabled and the camera untouched until both boxes are ticked.
        assert page.is_disabled("#consent-start")
        page.check("#consent-agree")
        assert page.is_disabled("#consent-start")
        assert page.evaluate("document.getElementById('video').srcObject") is None
        page.check("#consent-age")
        page.click("#consent-start")

        page.wait_for_selector("#faces li:has-text('Unknown')", timeout=WAIT_MS)
        page.wait_for_selector("#greeting:has-text('Barack Obama')", timeout=WAIT_MS)
        assert "Welcome, Barack Obama" in page.inner_text("#greeting")
        labels = json.loads(page.get_attribute("#overlay", "data-labels"))
        assert any(label.startswith("Barack Obama") for label in labels)
        assert page.evaluate("getComputedStyle(document.getElementById('consent')).display") == "none"

        page.click("#stop")  # withdraw: the camera stops
        page.wait_for_selector("#consent", state="visible")
        assert page.evaluate("document.getElementById('video').srcObject.getTracks()[0].readyState") == "ended"
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()

    checkins = site.query(
        "SELECT p.name, c.kiosk_id, c.consent_id, c.similarity, c.threshold FROM recognition_checkin c "
        "JOIN people_person p ON p.id = c.person_id"
    )
    assert len(checkins) == 1, checkins
    name, kiosk_id, consent_id, similarity, threshold = checkins[0]
    assert (name, kiosk_id) == ("Barack Obama", 900001) and similarity >= threshold
    consent = site.query(f"SELECT kiosk_id, age_confirmed, withdrawn_at FROM recognition_consent WHERE id = {int(consent_id)}")
    assert consent[0][0] == 900001 and consent[0][1] == 1 and consent[0][2] is not None  # withdrawn with Stop
    # No frame was stored: the site's media folder is still empty.
    assert not any(site.media.rglob("*")), list(site.media.rglob("*"))


def test_verify_page_compares_two_photos_after_consent(site, browser, tmp_path):
    first, second = tmp_path / "obama-a.jpg", tmp_path / "obama-b.jpg"
    shutil.copy(PEOPLE / "barack_obama" / "obama2.jpg", first)
    shutil.copy(PROBES / "obama1.jpg", second)
    page = browser.new_page()
    try:
        page.goto(site.url + "/verify/")
        page.fill("#id_username", "browser-staff")
        page.fill("#id_password", STAFF_PASSWORD)
        page.click("form.card button")
        page.wait_for_selector("#consent")
        assert page.is_hidden("#compare")
        page.check("#consent-agree")
        page.check("#consent-age")
        page.click("#consent-start")
        page.wait_for_selector("#compare", state="visible")
        page.set_input_files("input[name=image1]", str(first))
        page.set_input_files("input[name=image2]", str(second))
        page.click("#compare-button")
        page.wait_for_selector("#verdict:visible", timeout=WAIT_MS)
        assert page.inner_text("#verdict").startswith("Same person")
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()
    assert site.query("SELECT count(*) FROM recognition_consent WHERE purpose = 'verify'") == [(1,)]
    assert not any(site.media.rglob("*"))


def test_staff_feed_page_shows_a_check_in_as_it_happens(site, browser):
    site.query("DELETE FROM recognition_checkin")  # the repeat window starts afresh, whatever ran before
    feed, camera = browser.new_page(), browser.new_page()
    try:
        feed.goto(site.url + "/accounts/login/?next=/checkin/feed/")
        feed.fill("#id_username", "browser-staff")
        feed.fill("#id_password", STAFF_PASSWORD)
        feed.click("form.card button")
        feed.wait_for_selector("#status:has-text('Live.')", timeout=WAIT_MS)
        assert feed.is_visible("#empty") and feed.inner_text("#feed") == ""

        # The same signed-in staff account streams from the check-in page in another tab.
        camera.goto(site.url + "/checkin/")
        camera.check("#consent-agree")
        camera.check("#consent-age")
        camera.click("#consent-start")
        camera.wait_for_selector("#greeting:has-text('Barack Obama')", timeout=WAIT_MS)

        feed.wait_for_selector("#feed li:has-text('Barack Obama')", timeout=60_000)
        assert "user: browser-staff" in feed.inner_text("#feed li") and feed.is_hidden("#empty")
        camera.click("#stop")

        # A wrong check-in: "Not this person" (confirmed) removes it through the API with the
        # session and its CSRF token; the server's announcement drops the row.
        feed.once("dialog", lambda dialog: dialog.accept())
        feed.click("#feed li:has-text('Barack Obama') button.reject")
        feed.wait_for_selector("#feed li", state="detached", timeout=60_000)
        feed.wait_for_selector("#empty", state="visible")
        assert site.query("SELECT count(*) FROM recognition_checkin") == [(0,)]
        assert site.query("SELECT count(*) FROM checkin_rejectedmatch") == [(1,)]
    except Exception:
        print(site.log_tail())
        raise
    finally:
        camera.close()
        feed.close()
    site.query("DELETE FROM recognition_checkin")
    site.query("DELETE FROM checkin_rejectedmatch_faces")
    site.query("DELETE FROM checkin_rejectedmatch")
