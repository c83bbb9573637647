"""Enrollment never waits behind training: training runs have their own django-q cluster and queue
(TRAINING_Q_CLUSTER), started beside the default one, with real qcluster processes on the ORM broker
(SQLite pass) or Redis (PostgreSQL pass)."""

from __future__ import annotations

import json
import time

import pytest

from . import live
from .conftest import PEOPLE, PROBES, read

pytestmark = [pytest.mark.servers, pytest.mark.django_db]


def post_json(server, path: str, payload: dict) -> live.Reply:
    return live.request(
        server.url + path, "POST", json.dumps(payload).encode(), {**server.auth(), "Content-Type": "application/json"}
    )


def enroll(server, name: str, photo) -> tuple[int, int]:
    person = post_json(server, "/api/v1/people/", {"name": name, "legal_basis": "explicit_consent"})
    assert person.status == 201, person.body
    face = server.post_image(f"/api/v1/people/{person.json()['id']}/faces/", read(photo), filename=photo.name)
    assert face.status == 201, face.body
    return person.json()["id"], face.json()["id"]


def wait_for(check, timeout: float, what: str, *procs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for proc in procs:
            assert proc.poll() is None, proc.log_path.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_photo_is_processed_while_a_long_retrain_runs(live_site, tmp_path):
    # An empty training cache: the run converts the embedder to TFLite itself (about a minute or
    # more), a real long stage of a real run.
    env = live_site.with_env(TRAINING_CACHE_DIR=str(tmp_path / "cache"), TRAINING_EXPORT_TFLITE=1)
    server = live_site.start_web(env=env)
    enrollment = live_site.start_worker(env)
    training = live_site.start_worker(env, cluster="training")
    procs = (server.proc, enrollment, training)
    try:
        # the enrollment worker has its models loaded before the race starts
        person_id, face_id = enroll(server, "Warm Up", sorted((PEOPLE / "joe_biden").iterdir())[0])

        def status(pid, fid):
            return server.get(f"/api/v1/people/{pid}/faces/{fid}/").json()["status"]

        wait_for(lambda: status(person_id, face_id) != "pending", 240, "the first photo", *procs)

        queued = post_json(server, "/api/v1/models/train/", {})
        assert queued.status in (200, 202), queued.body
        version_id = queued.json()["version"]["id"]

        def version():
            return server.get(f"/api/v1/models/{version_id}/").json()

        wait_for(lambda: version()["stage"] == "exporting", 300, "the retrain to reach its TFLite export", *procs)
        # a new photo of an enrolled person (a genuine one: accepted, not held as a mislabel)
        people = server.get("/api/v1/people/?page_size=100").json()["results"]
        person_id = next(p["id"] for p in people if p["name"] == "Barack Obama")
        photo = server.post_image(f"/api/v1/people/{person_id}/faces/", read(PROBES / "obama1.jpg"), filename="obama1.jpg")
        assert photo.status == 201, photo.body
        face_id = photo.json()["id"]
        started = time.monotonic()
        wait_for(lambda: status(person_id, face_id) != "pending", 120, "the photo to be processed", *procs)
        took = time.monotonic() - started
        during = version()
        # processed while the retrain still ran: it did not wait behind it
        assert during["status"] == "training", (took, during["status"], during["stage"])
        assert status(person_id, face_id) == "accepted"
        # and the retrain finishes on its own cluster
        wait_for(lambda: version()["status"] not in ("queued", "training"), 600, "the retrain to finish", *procs)
        assert version()["status"] in ("active", "ready"), version()["error"]
    finally:
        for proc in procs:
            live_site.stop(proc)
