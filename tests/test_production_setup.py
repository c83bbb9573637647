"""The README's production setup end to end: scripts/run-production.sh itself (PostgreSQL + Redis, two
uvicorn web workers and a django-q cluster) on a throwaway site, then a recognition over HTTP, a
consented check-in streamed over the websocket, and a retrain asked for through the API that the
cluster completes and activates.

Runs in the PostgreSQL/Redis pass of scripts/test.sh (the script refuses to start without them).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from . import live
from .conftest import PROBES, read
from .test_live_stream import camera_frame

# django_db: the session gallery is built in the test database before it is copied to the site.
pytestmark = [pytest.mark.servers, pytest.mark.django_db]

OBAMA = read(PROBES / "obama1.jpg")
OBAMA_FRAME = camera_frame(PROBES / "obama1.jpg")
PRODUCTION_REDIS_DB = int(os.environ.get("TEST_PRODUCTION_REDIS_DB", "12"))  # apart from the shared live site's

ISSUE_KIOSK_KEY = """
from django.contrib.auth import get_user_model
from checkin.models import Kiosk
from security.models import ApiKey, Role
door = Kiosk(name="Door camera")
door.set_new_token()
door.save()
_, raw = ApiKey.issue(get_user_model().objects.get(username="live-staff"), "door camera", role=Role.KIOSK, kiosk=door)
print(raw)
"""


class Production:
    """scripts/run-production.sh running in its own session (process group), so that it and every
    process it started can be stopped together."""

    def __init__(self, site: live.Site, port: int):
        self.site = site
        self.url = f"http://127.0.0.1:{port}"
        env = site.with_env(
            SKIP_SETUP=1,  # the venv is installed; setup.sh would reinstall into the shared one
            HOST="127.0.0.1",
            PORT=port,
            WEB_WORKERS=2,
            Q_WORKERS=2,
            # The edge export (a minute or more converting FaceNet to TFLite) has its own tests.
            TRAINING_EXPORT_TFLITE=0,
        )
        self.proc = site.start(["bash", "scripts/run-production.sh"], "run-production", env)
        self.server = live.Server(self.url, self.proc, site.token)

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process in the script's session (zombies left to an
        init that does not reap them are not running)."""
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # the session id; the state
                    found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
        return found

    def stop(self, timeout: float = 60) -> float | None:
        """SIGTERM to the script alone, as an init system would send it; it must stop what it started.
        Returns the seconds until every process of the session was gone, or None if some had to be
        killed."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        while self.processes() and time.monotonic() - started < timeout:
            time.sleep(0.5)
        self.left_running = self.processes()
        if not self.left_running:
            self.proc.wait(5)
            return time.monotonic() - started
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        return None

    def log(self) -> str:
        return self.proc.log_path.read_text()[-5000:]


@pytest.fixture
def production(django_db_blocker, tmp_path_factory):
    if not os.environ.get("DATABASE_URL"):
        live.skip_loudly("the production setup needs PostgreSQL and Redis: run it in the PostgreSQL/Redis pass")
    problem = live.postgres_reachable() or live.redis_reachable()
    if problem:
        live.skip_loudly(problem)
    with django_db_blocker.unblock():
        site = live.make_site(tmp_path_factory.mktemp("production"), "postgresql", redis_db=PRODUCTION_REDIS_DB)
    running = Production(site, live.free_port())
    try:
        running.server.wait_ready(timeout=300)
        yield running
    except Exception:
        print(running.log())
        raise
    finally:
        running.stop()
        site.close()


def api(production: Production, path: str, payload: dict | None = None) -> live.Reply:
    server = production.server
    if payload is None:
        return server.get(path)
    return live.request(
        server.url + path, "POST", json.dumps(payload).encode(), {**server.auth(), "Content-Type": "application/json"}
    )


def stream_check_in(production: Production, kiosk_key: str) -> tuple[dict, int]:
    """A non-browser kiosk's stream: consent, then camera frames until the check-in; then a few more
    frames of the same person. Returns the greeting and how many greetings came in all."""
    from websockets.sync.client import connect

    url = production.url.replace("http://", "ws://") + "/ws/identify/"
    headers = {"Authorization": f"Token {kiosk_key}"}
    greetings = []
    with connect(url, origin=production.url, additional_headers=headers, max_size=2**22, open_timeout=60) as stream:
        ready = json.loads(stream.recv(timeout=60))
        assert ready["type"] == "ready", ready
        stream.send(json.dumps({"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True}))
        assert json.loads(stream.recv(timeout=60))["type"] == "consent_recorded"
        frames_after = None
        for _ in range(16):
            stream.send(OBAMA_FRAME)
            while (message := json.loads(stream.recv(timeout=120)))["type"] != "faces":
                assert message["type"] == "checked_in", message
                greetings.append(message)
            if greetings:
                frames_after = 0 if frames_after is None else frames_after + 1
                if frames_after == 3:
                    break
        # drain a greeting that follows the last frame's faces, if any
        try:
            while True:
                message = json.loads(stream.recv(timeout=2))
                if message["type"] == "checked_in":
                    greetings.append(message)
        except TimeoutError:
            pass
    assert greetings, "the stream never checked anyone in"
    return greetings[0], len(greetings)


def test_production_script_serves_recognition_check_in_and_retrain_across_its_processes(production):
    started = time.monotonic()
    try:
        # Two uvicorn workers under their supervisor, and the django-q cluster.
        commands = production.processes().values()
        supervisor = [c for c in commands if "uvicorn facesite.asgi:application" in c]
        assert len(supervisor) == 1, commands
        uvicorn_pid = next(pid for pid, c in production.processes().items() if c == supervisor[0])
        children = Path(f"/proc/{uvicorn_pid}/task/{uvicorn_pid}/children").read_text().split()
        # uvicorn's workers are spawned processes; its other child is multiprocessing's resource tracker.
        workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, {pid: Path(f"/proc/{pid}/cmdline").read_text() for pid in children}
        # two django-q clusters: enrollment and training (Q_CLUSTER_NAME=training)
        clusters = [pid for pid, c in production.processes().items() if "manage.py qcluster" in c]
        names = {Path(f"/proc/{pid}/environ").read_bytes().split(b"\0").count(b"Q_CLUSTER_NAME=training") for pid in clusters}
        assert len(clusters) >= 2 and names == {0, 1}, commands

        assert live.request(production.url + "/healthz/").json() == {"status": "ok", "database": "ok", "redis": "ok"}

        # A recognition over HTTP.
        reply = production.server.recognize(OBAMA)
        assert reply.status == 200, reply.body
        answer = reply.json()
        assert answer["faces"][0]["match"]["name"] == "Barack Obama" and answer["model_version"] is None

        # A consented check-in streamed by a kiosk: one CheckIn, however many frames follow.
        kiosk_key = production.site.manage("shell", "-c", ISSUE_KIOSK_KEY).stdout.split()[-1]
        assert api(production, "/api/v1/checkins/").json()["count"] == 0
        greeting, greeted = stream_check_in(production, kiosk_key)
        assert greeting["name"] == "Barack Obama" and not greeting["already"] and greeted == 1, greeting
        checkins = api(production, "/api/v1/checkins/").json()
        assert checkins["count"] == 1, checkins
        assert checkins["results"][0]["person"] == {"id": greeting["person_id"], "name": "Barack Obama"}
        assert checkins["results"][0]["device"] == "kiosk: Door camera"  # the kiosk the key is bound to

        # A retrain through the API, run by the cluster and activated; the web workers serve it.
        queued = api(production, "/api/v1/models/train/", {"force_activate": True})
        assert queued.status == 202, queued.body
        version = queued.json()["version"]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            state = api(production, f"/api/v1/models/{version['id']}/").json()
            if state["status"] not in ("queued", "training"):
                break
            time.sleep(3)
        assert state["status"] == "active", json.dumps(state)[:2000]
        for _ in range(4):  # whichever worker answers
            answer = production.server.recognize(OBAMA).json()
            assert answer["model_version"] == version["number"], answer
            assert answer["faces"][0]["match"]["name"] == "Barack Obama"
        assert production.proc.poll() is None, production.log()

        # SIGTERM to the script stops the web workers and the cluster with it.
        stopped_in = production.stop()
        assert stopped_in is not None, f"still running 60 s after SIGTERM: {production.left_running}"
        print(f"run-production.sh stopped everything {stopped_in:.1f} s after SIGTERM")
    except Exception:
        print(production.log())
        raise
    finally:
        print(f"production end-to-end: {time.monotonic() - started:.0f} s after the site was up")
