"""Enrollment, retraining and memory through the real app at a gallery size (issue 14's targets),
the second half of the gallery-api part (bench/gallery_api.py runs it on each size's site).

- **Memory after varied traffic.** An IVF index mapped from the snapshot is paged in only where
  queries look (``nprobe`` of its cells); one probe repeated reads the same few cells and flatters
  it. So each worker answers ``varied`` different real faces (LFW photos, one per person) before
  its memory is read, and the pages of the mapped snapshot files are counted apart
  (``/proc/PID/smaps``: Rss/Pss of the mappings under the snapshot directory).
- **Enrollment.** A django-q cluster (the enrollment queue) and the training cluster run beside
  the web server. One new person's photo is uploaded through ``POST /api/v1/people/<id>/faces/``;
  as soon as the row says accepted, the same photo is sent to ``/api/v1/recognize/``: it must name
  that person, and its time is compared with the median of the varied probes (same kind of photo).
  Then a batch of real photos (new people, two photos each) is uploaded and photos/s counted from
  the first upload until the worker has processed the last.
- **A retrain at this size.** A training run is queued (the training cluster; TFLite export off:
  its cost does not depend on the gallery) and, while it is training, a second batch is enrolled;
  then the run is followed to its end (wall time, peak RSS of the training worker).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from . import frames as F
from .api import PYTHON, _multipart


def smaps_under(pid: int, directory: Path) -> dict:
    """Rss and Pss (MiB) of the process's mappings of files under ``directory`` (the snapshot)."""
    rss = pss = 0
    inside = False
    prefix = str(directory)
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            inside = len(head) == 6 and head[5].startswith(prefix)
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif inside and line.startswith("Pss:"):
            pss += int(line.split()[1])
    return {"rss": rss / 1024, "pss": pss / 1024}


def peak_rss_of_tree(pid: int) -> float:
    """Largest VmHWM (peak RSS, MiB) among ``pid`` and its descendants (a django-q cluster's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    peak, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
    return peak


def lfw_sets(lfw_dir: Path, probes: int, batch_people: int) -> tuple[list[Path], list[list[Path]], list[list[Path]], list[Path]]:
    """Disjoint LFW people (none of them a fixture person): ``probes`` single photos for the varied
    probes, two batches of ``batch_people`` people x 2 photos, and one person to enroll alone."""
    fixture = {p.name for p in F.PEOPLE.iterdir()}
    folders = sorted(p for p in (Path(lfw_dir) / "images_deepfunneled").iterdir() if p.is_dir() and p.name not in fixture)
    rng = np.random.default_rng(14)
    order = [folders[i] for i in rng.permutation(len(folders))]
    pairs = [f for f in order if len(list(f.glob("*.jpg"))) >= 2]
    chosen_pairs = pairs[: 2 * batch_people + ALONE_CANDIDATES]
    singles = [f for f in order if f not in set(chosen_pairs)][:probes]
    photos = [sorted(f.glob("*.jpg"))[:2] for f in chosen_pairs]
    alone = [p[0] for p in photos[2 * batch_people :]]
    return [sorted(f.glob("*.jpg"))[0] for f in singles], photos[:batch_people], photos[batch_people : 2 * batch_people], alone


# people enrolled one at a time (the next request after each is timed), from this many candidates
# (a photo the checks reject is no test of freshness)
ALONE_WANTED = 5
ALONE_CANDIDATES = 9


class Api:
    """The bench's client of one running site."""

    def __init__(self, port: int, token: str):
        self.base, self.token = f"http://127.0.0.1:{port}", token

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        req.add_header("Authorization", f"Token {self.token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())

    def recognize(self, photo: Path) -> tuple[float, dict]:
        body, content_type = _multipart("image", photo.name, photo.read_bytes())
        started = time.perf_counter()
        payload = self.call("POST", "/api/v1/recognize/", body, content_type)
        return (time.perf_counter() - started) * 1000, payload

    def new_person(self, name: str) -> int:
        body = json.dumps({"name": name, "legal_basis": "explicit_consent"}).encode()
        return self.call("POST", "/api/v1/people/", body, "application/json")["id"]

    def upload(self, person_id: int, photo: Path) -> int:
        body, content_type = _multipart("image", photo.name, photo.read_bytes())
        return self.call("POST", f"/api/v1/people/{person_id}/faces/", body, content_type)["id"]


class Database:
    """Reads the site's rows directly (polling through the API would load the server it measures)."""

    def __init__(self, site):
        self.url = site.env.get("DATABASE_URL")
        self.path = site.env["SQLITE_PATH"]

    def rows(self, sql: str) -> list[tuple]:
        if self.url:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                return conn.execute(sql).fetchall()
        with sqlite3.connect(self.path, timeout=30) as conn:
            return conn.execute(sql).fetchall()

    def statuses(self, face_ids: list[int]) -> dict[int, str]:
        ids = ",".join(str(int(i)) for i in face_ids)
        return dict(self.rows(f"SELECT id, status FROM people_faceimage WHERE id IN ({ids})"))

    def processed_span(self, face_ids: list[int]) -> float:
        """Seconds from the first to the last of these photos' verdicts (their processed_at)."""
        from datetime import datetime

        ids = ",".join(str(int(i)) for i in face_ids)
        first, last = self.rows(f"SELECT MIN(processed_at), MAX(processed_at) FROM people_faceimage WHERE id IN ({ids})")[0]
        first, last = (v if isinstance(v, datetime) else datetime.fromisoformat(str(v)) for v in (first, last))
        return (last - first).total_seconds()

    def version(self, version_id: int) -> tuple[str, str]:
        return self.rows(f"SELECT status, stage FROM training_modelversion WHERE id = {int(version_id)}")[0]


def wait_processed(db: Database, face_ids: list[int], timeout: float = 1800, every: float = 0.05) -> dict[int, str]:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        statuses = db.statuses(face_ids)
        if all(s != "pending" for s in statuses.values()):
            return statuses
        time.sleep(every)
    raise RuntimeError(f"photos still pending after {timeout} s")


def enroll_batch(api: Api, db: Database, people: list[list[Path]], tag: str, clients: int = 4) -> dict:
    """Upload every photo (new people; ``clients`` uploads at a time, so the worker, not one client's
    round trips, sets the pace) and wait until the worker has processed them all: photos/s from the
    first upload to the last verdict, and the worker's own rate (first to last verdict)."""
    from concurrent.futures import ThreadPoolExecutor

    uploads = []
    for i, photos in enumerate(people):  # the people first: a person record is not a photo
        person = api.new_person(f"Bench {tag} {i:03d} {photos[0].parent.name}")
        uploads += [(person, photo) for photo in photos]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(lambda upload: api.upload(*upload), uploads))
    uploaded = time.perf_counter() - started
    statuses = wait_processed(db, ids)
    seconds = time.perf_counter() - started
    counts = {s: list(statuses.values()).count(s) for s in set(statuses.values())}
    span = db.processed_span(ids)
    return {
        "photos": len(ids),
        "seconds": seconds,
        "upload_s": uploaded,
        "photos_per_s": len(ids) / seconds,
        "worker_photos_per_s": (len(ids) - 1) / span if span else None,
        "statuses": counts,
    }


def start_cluster(site, name: str | None) -> subprocess.Popen:
    env = dict(site.env)
    if name:
        env["Q_CLUSTER_NAME"] = name
    log = open(site.workdir / f"qcluster-{name or 'default'}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([PYTHON, "manage.py", "qcluster"], cwd=F.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def enrollment_and_retrain(site, api: Api, lfw: Path, probe_ms: float, batch_people: int, retrain_timeout: float) -> dict:
    """With the web server up: both clusters started, one face enrolled and looked for at once, a
    batch enrolled, a retrain queued and a second batch enrolled while it trains."""
    _, batch1, batch2, alone = lfw_sets(lfw, 0, batch_people)
    db = Database(site)
    default = start_cluster(site, None)
    training = start_cluster(site, "training")
    row: dict = {}
    try:
        # faces enrolled one at a time, each recognised by the next request after it is accepted
        # (the first includes the worker's start: its models)
        started = time.perf_counter()
        tries = []
        for photo in alone:
            person = api.new_person(f"Bench alone {photo.parent.name}")
            face = api.upload(person, photo)
            status = wait_processed(db, [face], every=0.01)[face]
            if status != "accepted":  # a photo the checks reject is no test of freshness
                continue
            next_ms, payload = api.recognize(photo)
            match = payload["faces"][0]["match"] if payload["faces"] else None
            tries.append((next_ms, bool(match and match["person_id"] == person), match and match.get("similarity")))
            if len(tries) == 1:
                row["first_enrollment_s"] = time.perf_counter() - started
            if len(tries) == ALONE_WANTED:
                break
        times = [t[0] for t in tries]
        row["enrolled_status"] = f"{len(tries)} accepted"
        row["next_request_ms"] = float(np.median(times)) if times else float("nan")
        row["next_request_all_ms"] = times
        row["next_request_vs_probe_p50"] = row["next_request_ms"] / probe_ms
        row["next_request_max_vs_probe_p50"] = (max(times) / probe_ms) if times else float("nan")
        row["matched_at_once"] = bool(tries) and all(t[1] for t in tries)
        row["matched_count"] = sum(t[1] for t in tries)
        row["match_similarity"] = [t[2] for t in tries]

        row["batch"] = enroll_batch(api, db, batch1, "a")

        command = (
            "from training.models import ModelVersion; from training.services import request_training; "
            "print(request_training(ModelVersion.Trigger.COMMAND)[0].pk)"
        )
        queued_at = time.perf_counter()
        version = int(site.manage("shell", "-c", command).split()[-1])
        while db.version(version)[0] == "queued" and time.perf_counter() - queued_at < 600:
            time.sleep(0.2)
        row["retrain_started_after_s"] = time.perf_counter() - queued_at
        row["batch_during_retrain"] = enroll_batch(api, db, batch2, "b")
        row["batch_during_retrain"]["retrain_state_after"] = list(db.version(version))
        while db.version(version)[0] in ("queued", "training") and time.perf_counter() - queued_at < retrain_timeout:
            time.sleep(1)
        status, stage = db.version(version)
        row["retrain"] = {
            "status": status,
            "stage": stage,
            "seconds": time.perf_counter() - queued_at,
            "finished": status not in ("queued", "training"),
            "peak_rss_mb": peak_rss_of_tree(training.pid),
        }
    finally:
        stop(default)
        stop(training)
    return row


def varied_probes(api: Api, photos: list[Path]) -> list[float]:
    latencies = []
    for photo in photos:
        try:
            latencies.append(api.recognize(photo)[0])
        except urllib.error.HTTPError as err:  # a photo the detector finds no face in is answered 4xx
            if err.code >= 500:
                raise
    return latencies
