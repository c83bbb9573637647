"""Enrollment yield on LFW: how many single-photo enrollments survive, with and without the
importer's central-subject rule, and the data the rule's constants were chosen from.

    .venv/bin/python bench/enrollment_yield.py --lfw ../shared/datasets/lfw            # hold-out, before/after
    .venv/bin/python bench/enrollment_yield.py --lfw ../shared/datasets/lfw --tune     # the rule's tuning data

The protocol (BENCHMARKS.md, "Enrollment yield"): LFW people with at least two photos, sorted by
name; ``random.Random(SEED).sample(people, 150)`` is the hold-out, each enrolled with their first
photo (sorted by file name). The hold-out is enrolled twice, each time into a fresh SQLite
database, through the real enrollment path (``manage.py import_faces``: the served detector,
quality checks, embedder and the mislabel check against the gallery enrolled so far), once with
``--no-central-subject`` (before) and once with the rule (after).

``--tune`` looks at the other people only (never the hold-out): every face of their first photo,
with their second photo's largest face as the reference for which face is theirs, and prints, for
the photos today's rule rejects (several_faces), how many a rule "largest face >= k x the next's
area, centre within d of the image centre" would take, and how many of those it would get wrong.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
SEED = 12
HOLDOUT = 150
PYTHON = sys.executable
MATCH_THRESHOLD = 0.55  # FACE_MATCH_THRESHOLD's default


def people_with_two_photos(lfw: Path) -> list[str]:
    images = lfw / "images_deepfunneled"
    return sorted(p.name for p in images.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2)


def holdout(lfw: Path, seed: int = SEED, size: int = HOLDOUT) -> list[str]:
    return sorted(random.Random(seed).sample(people_with_two_photos(lfw), size))


def photos(lfw: Path, name: str) -> list[Path]:
    return sorted((lfw / "images_deepfunneled" / name).glob("*.jpg"))


def enroll(lfw: Path, people: list[str], workdir: Path, central: bool) -> dict:
    """Import each person's first photo into a fresh database; the import's summary, parsed."""
    folder = workdir / "people"
    if not folder.exists():
        for name in people:
            (folder / name).mkdir(parents=True)
            shutil.copy(photos(lfw, name)[0], folder / name)
    label = "after" if central else "before"
    env = {
        **os.environ,
        "SQLITE_PATH": str(workdir / f"{label}.sqlite3"),
        "MEDIA_ROOT": str(workdir / f"media-{label}"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("DATABASE_URL", None)

    def manage(*args: str) -> str:
        return subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout

    manage("migrate", "--noinput")
    started = time.perf_counter()
    command = ["import_faces", str(folder), "--legal-basis", "explicit_consent", "--verbosity", "0"]
    summary = manage(*command, *([] if central else ["--no-central-subject"]))
    seconds = time.perf_counter() - started
    counts = re.search(r"(\d+) accepted, (\d+) rejected, (\d+) held for review", summary)
    reasons = dict((code, int(n)) for code, n in re.findall(r"(\w+) x(\d+)", summary.split("Reasons:")[-1].split("\n")[0]))
    central_taken = re.search(r"Central subject taken in (\d+) photos", summary)
    return {
        "accepted": int(counts[1]),
        "rejected": int(counts[2]),
        "review": int(counts[3]),
        "reasons": reasons if "Reasons:" in summary else {},
        "central": int(central_taken[1]) if central_taken else 0,
        "seconds": round(seconds, 1),
        "central_lines": [line for line in summary.splitlines() if "took the central subject" in line],
    }


def taken_faces_match(lfw: Path, database: Path) -> list[tuple[str, float]]:
    """For each face the central-subject rule took: its person's folder and the cosine similarity of
    its embedding to the largest face of the person's second photo (is it really them?)."""
    import sqlite3

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from recognition.engine.images import ImageLimits, decode_image
    from recognition.engine.pipeline import shared_pipeline

    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT p.notes, f.embedding FROM people_faceimage f JOIN people_person p ON p.id = f.person_id "
            "WHERE f.face_choice = 'central' AND f.embedding IS NOT NULL ORDER BY p.notes"
        ).fetchall()
    pipe = shared_pipeline()
    matches = []
    for notes, blob in rows:
        folder = notes.removeprefix("Imported from ").rstrip("/")
        second = decode_image(photos(lfw, folder)[1].read_bytes(), ImageLimits())
        reference = pipe.analyse(second, max_faces=1)[0].embedding
        matches.append((folder, float(np.frombuffer(blob, np.float32) @ reference)))
    return matches


def tune(lfw: Path, seed: int, out) -> None:
    sys.path.insert(0, str(ROOT))
    from recognition.engine.images import ImageLimits, decode_image
    from recognition.engine.pipeline import shared_pipeline
    from recognition.engine.selection import area, centre_offset

    excluded = set(holdout(lfw, seed))
    tuning = [name for name in people_with_two_photos(lfw) if name not in excluded]
    pipe = shared_pipeline()
    rows = []  # (area ratio, centre offset, nearest other face's centre offset, largest face is the person's)
    for name in tuning:
        first, second = (decode_image(p.read_bytes(), ImageLimits()) for p in photos(lfw, name)[:2])
        faces = pipe.analyse(first)
        if len(faces) < 2:
            continue
        reference = pipe.analyse(second, max_faces=1)
        if not reference:
            continue
        by_size = sorted(faces, key=lambda f: area(f.face.box), reverse=True)
        similarities = [float(f.embedding @ reference[0].embedding) for f in by_size]
        ratio = area(by_size[0].face.box) / max(1.0, area(by_size[1].face.box))
        theirs = int(max(range(len(by_size)), key=similarities.__getitem__)) == 0 and similarities[0] > 0.4
        nearest_other = min(centre_offset(f.face.box, first.shape) for f in by_size[1:])
        rows.append((ratio, centre_offset(by_size[0].face.box, first.shape), nearest_other, theirs))
    # what the dominant-face rule (QualityRules.dominant_ratio) rejects; (ratio, offset, alone, theirs)
    several = [(r[0], r[1], r[2], r[3]) for r in rows if r[0] < 4.0]
    out(f"Tuning people (not in the hold-out): {len(tuning)}; first photos with 2+ faces: {len(rows)}; ")
    out(
        f"of these rejected as several_faces today: {len(several)}, the largest face being the person's in {sum(r[3] for r in several)}.\n"
    )
    offsets = [r[1] for r in several]
    out(
        f"- centre offset of the largest face when it is the person's: max {max((r[1] for r in several if r[3]), default=math.nan):.3f}"
    )
    out(f"- when it is not: {sorted(round(r[1], 3) for r in several if not r[3])}")
    out(f"- all offsets: median {sorted(offsets)[len(offsets) // 2]:.3f}\n")
    out("| k (area ratio) | d (centre offset) | taken | wrong face | taken, no other face within d | wrong face |")
    out("| --- | --- | --- | --- | --- | --- |")
    for k in (1.0, 1.2, 1.5, 2.0, 3.0):
        for d in (0.05, 0.1, 0.2, 0.3, 0.5):
            taken = [r for r in several if r[0] >= k and r[1] <= d]
            alone = [r for r in taken if r[2] > d]
            wrong, wrong_alone = (sum(1 for r in rs if not r[3]) for rs in (taken, alone))
            out(f"| {k} | {d} | {len(taken)} | {wrong} | {len(alone)} | {wrong_alone} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=ROOT.parent / "shared" / "datasets" / "lfw")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--tune", action="store_true", help="print the rule's tuning data (people outside the hold-out)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (databases, media)")
    args = parser.parse_args()
    out = print
    if args.tune:
        tune(args.lfw, args.seed, out)
        return
    people = holdout(args.lfw, args.seed)
    out(f"Hold-out: {len(people)} LFW people (seed {args.seed}), first photo each; e.g. {', '.join(people[:3])}\n")
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="enrollment-yield-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = {label: enroll(args.lfw, people, workdir, central) for label, central in (("before", False), ("after", True))}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out("| | enrolled (accepted) | several_faces | possible_mislabel | other rejections | central subject taken | time |")
    out("| --- | --- | --- | --- | --- | --- | --- |")
    for label, r in results.items():
        other = r["rejected"] - r["reasons"].get("several_faces", 0)
        out(
            f"| {label} | {r['accepted']} / {len(people)} | {r['reasons'].get('several_faces', 0)} | "
            f"{r['reasons'].get('possible_mislabel', 0)} | {other} | {r['central']} | {r['seconds']} s |"
        )
    out("")
    for line in results["after"]["central_lines"]:
        out(line)
    if args.keep:
        matches = taken_faces_match(args.lfw, workdir / "after.sqlite3")
        same = sum(1 for _, similarity in matches if similarity >= MATCH_THRESHOLD)
        out(
            f"\nTaken faces against the person's second photo: {same} of {len(matches)} at or above {MATCH_THRESHOLD} "
            f"(lowest {min((s for _, s in matches), default=float('nan')):.2f})"
        )


if __name__ == "__main__":
    main()
