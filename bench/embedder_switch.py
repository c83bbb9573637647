"""An embedder switch on a site of ~1,000 enrolled LFW faces (issue 15 part 2), timed.

    .venv/bin/python -m bench.embedder_switch --lfw ../shared/datasets/lfw [--faces 1000] [--to facenet+dlib] [--embed-runtime tflite]

A fresh site (SQLite, its own media and var/ under a temporary folder) enrolls LFW photos with
``manage.py import_faces`` (people of at least two photos, sorted by name, at most four photos
each, until --faces photos): real detection, crops, regions and FaceNet embeddings. Then
``manage.py switch_embedder <to> --wait`` runs the switch in a child process while this one reads
its progress row every second; the evaluation is printed as the switch recorded it; then
``switch_embedder --rollback`` is timed. Load averages are sampled before and after.

FaceNet runs on FACE_EMBED_RUNTIME (--embed-runtime, default tflite) for the enrollment and the
switch alike, dlib's descriptor on FACE_DLIB_RUNTIME (the settings' default, tflite). The models'
one-time conversion to TFLite (once per machine, cached in TRAINING_CACHE_DIR) is done and timed
apart before the switch, so the switch's time is what a site that already served once pays.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# a child process builds the target's pipeline and embeds one face (the TFLite conversions, once per machine)
WARM = """
import time
from recognition import pipelines
from recognition.engine.images import decode_image
t = time.perf_counter()
pipe = pipelines.pipeline({kind!r})
rgb = decode_image(open({photo!r}, "rb").read())
face = pipe.detect(rgb)[0]
pipe.embed_faces([rgb], [face])
print(f"(in-process {{time.perf_counter() - t:.1f}} s)")
"""


def manage(env: dict, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--to", default="facenet+dlib")
    parser.add_argument("--embed-runtime", choices=("tflite", "keras"), default="tflite")
    parser.add_argument("--keep", type=Path, default=None, help="use (and keep) this folder for the site")
    args = parser.parse_args()
    args.lfw = args.lfw.resolve()  # the site's photos are symlinks to it

    base = (args.keep or Path(tempfile.mkdtemp(prefix="switch-bench-"))).resolve()
    base.mkdir(parents=True, exist_ok=True)
    db = base / "db.sqlite3"
    env = {
        **os.environ,
        "SQLITE_PATH": str(db),
        "MEDIA_ROOT": str(base / "media"),
        "GALLERY_SNAPSHOT_DIR": str(base / "gallery"),
        "Q_SYNC": "1",
        "TRAINING_RETRAIN_ON_ENROLLMENT": "0",
        "FACE_EMBEDDER": "facenet",
        "FACE_EMBED_RUNTIME": args.embed_runtime,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    print(f"site: {base}; load average {os.getloadavg()}")
    if not db.exists():
        manage(env, "migrate", "--noinput")
        people = base / "people"
        people.mkdir(exist_ok=True)
        count = 0
        for person in sorted((args.lfw / "images_deepfunneled").iterdir()):
            photos = sorted(person.glob("*.jpg"))[:4]
            if len(photos) < 2 or count >= args.faces:
                continue
            photos = photos[: args.faces - count]
            (people / person.name).mkdir(exist_ok=True)
            for photo in photos:
                target = people / person.name / photo.name
                if not target.exists():
                    target.symlink_to(photo)
            count += len(photos)
        seconds, out = manage(env, "import_faces", str(people), "--legal-basis", "explicit_consent")
        print(f"import_faces: {count} photos in {seconds:.0f} s\n{out.strip().splitlines()[-1] if out.strip() else ''}")
    enrolled = (
        sqlite3.connect(db)
        .execute(
            "select count(*) from people_faceimage f join people_person p on p.id = f.person_id "
            "where f.status = 'accepted' and p.is_active and f.embedding is not null"
        )
        .fetchone()[0]
    )
    print(f"enrolled faces: {enrolled}; load average {os.getloadavg()}")
    seconds, out = manage(
        env, "shell", "-c", WARM.format(kind=args.to, photo=str(next((args.lfw / "images_deepfunneled").glob("*/*.jpg"))))
    )
    print(
        f"warm-up (models of {args.to} built, converted to TFLite if not cached, one face embedded): {seconds:.1f} s {out.strip()}"
    )

    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "manage.py", "switch_embedder", args.to, "--wait"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples = []
    while child.poll() is None:
        time.sleep(1)
        try:
            row = (
                sqlite3.connect(db, timeout=1)
                .execute(
                    "select status, done, total from recognition_embedderswitch where embedder = ? order by id desc limit 1",
                    (args.to,),
                )
                .fetchone()
            )
        except sqlite3.OperationalError:
            continue
        if row:
            samples.append((round(time.perf_counter() - started, 1), *row))
    out, err = child.communicate()
    switch_seconds = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"switch failed:\n{out}\n{err}")
    print(f"switch to {args.to}: {switch_seconds:.1f} s (child process, model loading included)")
    step = max(1, len(samples) // 12)
    for at, status, done, total in samples[::step] + samples[-1:]:
        print(f"  {at:>7.1f} s  {status:<12} {done:>5} / {total}")
    embedding = [(at, done) for at, status, done, _ in samples if status == "reembedding" and done > 0]
    if len(embedding) >= 2 and embedding[-1][0] > embedding[0][0]:
        (t0, d0), (t1, d1) = embedding[0], embedding[-1]
        print(
            f"  re-embedding rate: {(d1 - d0) / (t1 - t0):.2f} faces/s ({d1 - d0} faces in {t1 - t0:.0f} s, after the first batch)"
        )
    print(out.strip())
    row = (
        sqlite3.connect(db)
        .execute(
            "select evaluation, started_at, finished_at, activated_at from recognition_embedderswitch "
            "where embedder = ? order by id desc limit 1",
            (args.to,),
        )
        .fetchone()
    )
    evaluation = json.loads(row[0])
    print(f"started {row[1]} finished {row[2]} activated {row[3]}; load average {os.getloadavg()}")
    for role in ("old", "new"):
        r = evaluation[role]
        print(
            f"  {role} {r['embedder']:<18} threshold {r['threshold']:.4f}  FRR {r['not_found']}/{r['genuine_searches']}"
            f"  FAR {r['false_accepts']}/{r['impostor_searches']}  ({r['seconds']} s)"
        )
    print(f"  rule: {evaluation['rule']}")
    seconds, out = manage(env, "switch_embedder", "--rollback")
    print(f"rollback: {seconds:.1f} s (process start included)\n{out.strip()}")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
