"""Headless Chromium against a throwaway deployment: the browser tests' shared pieces.

A real ASGI server (daphne, in a subprocess) serves its own SQLite file and media folder holding the
test session's enrolled gallery, whatever back end the test run itself uses: the browser tests
exercise pages, sockets and the camera, so the PostgreSQL/Redis pass leaves them out (scripts/test.sh).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
KIOSK_TOKEN = "e2e-kiosk-token-for-the-front-door"
STAFF_PASSWORD = "browser-pass-123"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
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
    from django.contrib.auth.hashers import make_password
    from django.core import serializers

    from checkin.models import Kiosk, hash_token
    from people.models import FaceImage, Person

    user = get_user_model()(username="browser-staff", is_staff=True, is_superuser=True, pk=900001)
    user.password = make_password(STAFF_PASSWORD, hasher="pbkdf2_sha256")  # the site's own hasher
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


def start_site(root: Path, write_gallery=None) -> Site:
    """Migrate a new site under ``root``, load the gallery ``write_gallery(path)`` writes (default: the
    test database's, ``gallery_fixture``), and start its server. Call with the database unblocked."""
    (write_gallery or gallery_fixture)(root / "gallery.json")
    site = Site(root)
    site.manage("migrate", "--noinput", "-v0")
    site.manage("loaddata", str(root / "gallery.json"), "-v0")
    site.start()
    return site


def media_files(site: Site) -> set[Path]:
    return set(site.media.rglob("*"))


def launch_chromium(playwright, profile: Path, camera: Path | None = None, width: int = 1280):
    """Headless Debian Chromium with a fresh profile; ``camera``: a Y4M file played as the webcam."""
    require_chromium()
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"] if camera else CHROMIUM_ARGS
    return playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=args,
        permissions=["camera"] if camera else [],
        viewport={"width": width, "height": 900},
    )
