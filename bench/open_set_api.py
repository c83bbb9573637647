"""The product's own open-set benchmark through the API (issue 15 part 5): FaceNet alone vs fused.

    .venv/bin/python -m bench.open_set_api --lfw ../shared/datasets/lfw [--people 150] [--strangers 150]
        [--embedders facenet facenet+dlib] [--photos 1 3] [--json out.json] [--no-central-subject]

Protocol (BENCHMARKS.md, "Open set through the API"): people of LFW ``people.txt`` folds 6-10 only:
the fusion (``fit_fusion``: pairs.txt folds 1-5, whose people are people.txt's folds 1-5) and the
LFW impostor tails (``calibrate_open_set``: folds 1-5) never saw them. Of those with at least four
photos, ``random.Random(SEED).sample`` picks the enrolled people; of the others (any number of
photos), the strangers. Each run is a real server (daphne) on a fresh SQLite database with the
embedder under test: every enrolled person is created through ``POST /api/v1/people/`` and their
first photo (or first three) uploaded through ``POST /api/v1/people/<id>/faces/`` (processed in the
request, ``Q_SYNC``: the served detector, face selection (with the central-subject rule, the
default; ``--no-central-subject`` turns it off), quality checks, embedder and mislabel check
against the gallery enrolled so far). Then ``POST /api/v1/recognize/`` with each enrolled person's fourth
photo and each stranger's first photo; the face nearest the image centre is the probe's (LFW is
centred). Named end to end: the probe's match is the person (a person all of whose photos were
refused counts as not named). Strangers matched: the probe's match is anybody.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .api import Server, _multipart, _token

SEED = 15
MIN_PHOTOS = 4  # three to enroll, the fourth to probe


def people_folds(lfw: Path) -> list[list[str]]:
    lines = (lfw / "people.txt").read_text().split("\n")
    folds, i = [], 1
    for _ in range(int(lines[0])):
        count = int(lines[i])
        folds.append([line.split("\t")[0] for line in lines[i + 1 : i + 1 + count]])
        i += 1 + count
    return folds


def photos(lfw: Path, name: str) -> list[Path]:
    return sorted((lfw / "images_deepfunneled" / name).glob("*.jpg"))


def split(lfw: Path, people: int, strangers: int, seed: int = SEED) -> tuple[list[str], list[str]]:
    """(enrolled, strangers): people only in folds 6-10, sampled with ``seed``."""
    folds = people_folds(lfw)
    first = {p for f in folds[:5] for p in f}
    second = sorted({p for f in folds[5:] for p in f} - first)
    counts = {p: len(photos(lfw, p)) for p in second}
    rng = random.Random(seed)
    enrolled = sorted(rng.sample([p for p in second if counts[p] >= MIN_PHOTOS], people))
    others = [p for p in second if p not in set(enrolled) and counts[p] >= 1]
    return enrolled, sorted(rng.sample(others, strangers))


class Client:
    def __init__(self, server: Server, token: str):
        self.base = f"http://127.0.0.1:{server.port}/api/v1"
        self.headers = {"Authorization": f"Token {token}"}

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, dict]:
        request = urllib.request.Request(self.base + path, data=body, headers={**self.headers, "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def post_json(self, path: str, data: dict) -> tuple[int, dict]:
        return self.post(path, json.dumps(data).encode(), "application/json")

    def upload(self, path: str, photo: Path) -> tuple[int, dict]:
        body, content_type = _multipart("image", photo.name, photo.read_bytes())
        return self.post(path, body, content_type)


def central_face(faces: list[dict], side: int = 250) -> dict | None:
    def offset(face):
        x, y, w, h = face["box"]
        return (x + w / 2 - side / 2) ** 2 + (y + h / 2 - side / 2) ** 2

    return min(faces, key=offset, default=None)


def run_one(
    lfw: Path, embedder: str, n_photos: int, enrolled: list[str], strangers: list[str], workdir: Path, central: bool = True
) -> dict:
    """One server with ``embedder``: enroll ``n_photos`` per person, then probe; the counts, and
    each upload's verdict and each probe's outcome (``details``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = Server("mtcnn-graph", workdir)
    server.env.update(
        FACE_EMBEDDER=embedder,
        FACE_ENROLL_CENTRAL_SUBJECT="1" if central else "0",
        Q_SYNC="1",  # each upload is processed in its request, as an operator's enrollment would be before probing
        TRAINING_RETRAIN_ON_ENROLLMENT="0",  # nearest neighbour over the gallery: no training run needed
        THROTTLE_STAFF="1000000/min",
        THROTTLE_ENROLL="1000000/min",
    )
    server.manage("migrate", "--noinput")
    token = _token(server)
    server.start(timeout=900)  # the fused server loads three networks; a busy machine takes minutes
    client = Client(server, token)
    verdicts: dict[str, int] = {}
    uploads, probes = [], []  # the details: which photo was lost and why, which probe was not named
    accepted_people = 0
    enroll_ms, recognize_ms = [], []
    started = time.perf_counter()
    try:
        ids = {}
        for name in enrolled:
            status, person = client.post_json("/people/", {"name": name.replace("_", " "), "legal_basis": "explicit_consent"})
            assert status == 201, (status, person)
            ids[name] = person["id"]
            accepted = False
            for photo in photos(lfw, name)[:n_photos]:
                t = time.perf_counter()
                status, face = client.upload(f"/people/{person['id']}/faces/", photo)
                enroll_ms.append(1000 * (time.perf_counter() - t))
                verdict = face.get("reason_code") or face.get("status") if status == 201 else f"http_{status}"
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                uploads.append(
                    {
                        "photo": f"{name}/{photo.name}",
                        "verdict": verdict,
                        "sharpness": face.get("sharpness"),
                        "box": face.get("box"),
                        "faces": len(face.get("faces") or []) or (1 if face.get("box") else 0),
                        "face_choice": face.get("face_choice"),
                        "face_choice_reason": face.get("face_choice_reason"),
                        "reason": face.get("reason") if verdict not in ("accepted",) else "",
                    }
                )
                accepted |= status == 201 and face.get("status") == "accepted"
            accepted_people += accepted
        enrolled_seconds = time.perf_counter() - started
        by_id = {v: k for k, v in ids.items()}
        named, wrong, unknown, no_face = 0, 0, 0, 0
        for name in enrolled:
            t = time.perf_counter()
            status, body = client.upload("/recognize/", photos(lfw, name)[MIN_PHOTOS - 1])
            recognize_ms.append(1000 * (time.perf_counter() - t))
            face = central_face(body.get("faces", [])) if status == 200 else None
            if face is None:
                no_face += 1
                outcome = "no_face"
            elif face["match"] is None:
                unknown += 1
                outcome = "unknown"
            elif by_id.get(face["match"]["person_id"]) == name:
                named += 1
                outcome = "named"
            else:
                wrong += 1
                outcome = f"named as {by_id.get(face['match']['person_id'])}"
            top = (face or {}).get("match") or {}
            probes.append(
                {
                    "probe": f"{name}/{photos(lfw, name)[MIN_PHOTOS - 1].name}",
                    "enrolled": name in ids
                    and any(u["photo"].startswith(name + "/") and u["verdict"] == "accepted" for u in uploads),
                    "outcome": outcome,
                    "similarity": top.get("similarity"),
                }
            )
        matched_strangers, stranger_no_face = 0, 0
        for name in strangers:
            t = time.perf_counter()
            status, body = client.upload("/recognize/", photos(lfw, name)[0])
            recognize_ms.append(1000 * (time.perf_counter() - t))
            face = central_face(body.get("faces", [])) if status == 200 else None
            if face is None:
                stranger_no_face += 1
            elif face["match"] is not None:
                matched_strangers += 1
                probes.append(
                    {
                        "probe": f"{name}/{photos(lfw, name)[0].name}",
                        "stranger": True,
                        "outcome": f"matched to {by_id.get(face['match']['person_id'])}",
                        "similarity": face["match"].get("similarity"),
                    }
                )
        last = body
    finally:
        server.stop()
    return {
        "embedder": embedder,
        "served_embedder": last.get("embedder"),
        "photos_per_person": n_photos,
        "people": len(enrolled),
        "people_enrolled": accepted_people,
        "verdicts": verdicts,
        "named": named,
        "named_wrong_person": wrong,
        "probe_unknown": unknown,
        "probe_no_face": no_face,
        "strangers": len(strangers),
        "strangers_matched": matched_strangers,
        "stranger_no_face": stranger_no_face,
        "threshold": last.get("threshold"),
        "gallery_size": last.get("gallery_size"),
        "expected_false_accepts_per_search": last.get("expected_false_accepts_per_search"),
        "enroll_ms_median": round(statistics.median(enroll_ms), 1),
        "recognize_ms_median": round(statistics.median(recognize_ms), 1),
        "enroll_seconds": round(enrolled_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "central_subject": central,
        "details": {"uploads": uploads, "probes": probes},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--people", type=int, default=150)
    parser.add_argument("--strangers", type=int, default=150)
    parser.add_argument("--embedders", nargs="+", default=["facenet", "facenet+dlib"])
    parser.add_argument("--photos", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--no-central-subject",
        action="store_true",
        help="FACE_ENROLL_CENTRAL_SUBJECT=0: photos of several faces are rejected (several_faces), as before issue 15 part 4.",
    )
    args = parser.parse_args()
    enrolled, strangers = split(args.lfw, args.people, args.strangers, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="open-set-api-") as tmp:
        for n_photos in args.photos:
            for embedder in args.embedders:  # side by side: the embedders alternate within each photo count
                workdir = Path(tmp) / f"{embedder}-{n_photos}"
                row = run_one(args.lfw, embedder, n_photos, enrolled, strangers, workdir, central=not args.no_central_subject)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "details"}), flush=True)
                lost = [u for u in row["details"]["uploads"] if u["verdict"] != "accepted"]
                for u in lost:
                    print(f"  lost at enrollment: {u['photo']}: {u['verdict']} (sharpness {u['sharpness']}) {u['reason'][:160]}")
                for u in row["details"]["uploads"]:
                    if u["face_choice_reason"]:
                        print(f"  face taken: {u['photo']}: {u['face_choice_reason']} -> {u['verdict']}")
                for p in row["details"]["probes"]:
                    if p["outcome"] != "named":
                        print(
                            f"  probe: {p['probe']}: {p['outcome']} (enrolled {p.get('enrolled')}, similarity {p['similarity']})"
                        )
                if args.json:
                    args.json.write_text(
                        json.dumps({"seed": args.seed, "enrolled": enrolled, "strangers": strangers, "rows": rows}, indent=1)
                    )
    print()
    print(
        "| embedder | photos | enrolled (accepted) | named end to end | wrong person | strangers matched | threshold | recognize p50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['embedder']} | {r['photos_per_person']} | {r['people_enrolled']} / {r['people']} | "
            f"**{r['named']} / {r['people']}** ({100 * r['named'] / r['people']:.1f}%) | {r['named_wrong_person']} | "
            f"**{r['strangers_matched']} / {r['strangers']}** ({100 * r['strangers_matched'] / r['strangers']:.1f}%) | "
            f"{r['threshold']} | {r['recognize_ms_median']} ms |"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
