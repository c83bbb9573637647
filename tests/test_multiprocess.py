"""Two web server processes and a django-q worker on one site: a change made through one process is
used by every process on its next request (PostgreSQL + Redis in the PostgreSQL pass of
scripts/test.sh, SQLite + the ORM broker otherwise)."""

from __future__ import annotations

import json
import time

import pytest

from . import live
from .conftest import PEOPLE, PROBES, read

# django_db: the session gallery is built in the test database before it is copied to the live site.
pytestmark = [pytest.mark.servers, pytest.mark.django_db]

OBAMA = read(PROBES / "obama1.jpg")


def best_match(server, data: bytes = OBAMA) -> str | None:
    reply = server.recognize(data)
    assert reply.status == 200, reply.body
    match = reply.json()["faces"][0]["match"]
    return match and match["name"]


def post_json(server, path: str, payload: dict, method: str = "POST") -> live.Reply:
    return live.request(
        server.url + path, method, json.dumps(payload).encode(), {**server.auth(), "Content-Type": "application/json"}
    )


def test_every_web_worker_uses_an_enrollment_made_elsewhere_on_its_next_request(live_site):
    worker = live_site.start_worker()
    first, second = live_site.start_web(), live_site.start_web()
    assert best_match(first) == best_match(second) == "Barack Obama"
    obama_id = next(p["id"] for p in second.get("/api/v1/people/?page_size=100").json()["results"] if p["name"] == "Barack Obama")

    # Erased through the first process: the second no longer recognizes him on its next request.
    assert live.request(first.url + f"/api/v1/people/{obama_id}/", "DELETE", headers=first.auth()).status == 204
    assert best_match(second) is None

    # Enrolled again through the second process; the django-q worker process embeds the photos.
    person = post_json(
        second, "/api/v1/people/", {"name": "Barack Obama (re-enrolled)", "legal_basis": "explicit_consent"}
    ).json()
    photos = sorted((PEOPLE / "barack_obama").iterdir())[:2]
    uploads = [second.post_image(f"/api/v1/people/{person['id']}/faces/", read(p), filename=p.name) for p in photos]
    assert [u.status for u in uploads] == [201, 201], [u.body for u in uploads]
    assert {u.json()["status"] for u in uploads} == {"pending"}  # queued, not processed in the web process

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        faces = first.get(f"/api/v1/people/{person['id']}/faces/").json()["results"]
        if all(f["status"] != "pending" for f in faces):
            break
        assert worker.poll() is None, worker.log_path.read_text()[-2000:]
        time.sleep(1)
    assert {f["status"] for f in faces} == {"accepted"}, faces

    # Both web processes use the new embeddings on their very next request.
    assert best_match(first) == "Barack Obama (re-enrolled)"
    assert best_match(second) == "Barack Obama (re-enrolled)"
    # The site is shared by the session's server tests: give him his name back.
    assert post_json(first, f"/api/v1/people/{person['id']}/", {"name": "Barack Obama"}, "PATCH").status == 200
    assert best_match(second) == "Barack Obama"
    for proc in (worker, first.proc, second.proc):
        live_site.stop(proc)


CREATE_READY_VERSION = """
from training.models import ModelVersion
v = ModelVersion.objects.create(number=ModelVersion.next_number(), status="ready", threshold=0.97, recognizer="nearest_neighbour")
print(v.pk, v.number)
"""


def test_every_web_worker_uses_a_newly_activated_model_version_on_its_next_request(live_site):
    first, second = live_site.start_web(), live_site.start_web()
    before = [first.recognize(OBAMA).json(), second.recognize(OBAMA).json()]
    assert {b["faces"][0]["match"]["name"] for b in before} == {"Barack Obama"}

    # A finished version with a very strict threshold, made by a third process, activated through the first.
    pk, number = map(int, live_site.manage("shell", "-c", CREATE_READY_VERSION).stdout.split()[-2:])
    activated = live.request(first.url + f"/api/v1/models/{pk}/activate/", "POST", b"", first.auth())
    assert activated.status == 200, activated.body

    try:
        for server in (second, first):  # the other process first: it was told nothing
            answer = server.recognize(OBAMA).json()
            assert answer["model_version"] == number and answer["threshold"] == 0.97
            assert answer["faces"][0]["match"] is None  # 0.97 is stricter than any real match
    finally:  # the site is shared by the session's server tests
        live_site.manage(
            "shell", "-c", f"from training.models import ModelVersion; ModelVersion.objects.filter(pk={pk}).delete()"
        )
    assert second.recognize(OBAMA).json()["model_version"] is None
    for server in (first, second):
        live_site.stop(server.proc)
