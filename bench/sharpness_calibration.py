"""Calibrating the enrollment blur gate (issue 15 part 4): does the sharpness measure reject faces
FaceNet embeds fine, and where does real blur start to cost recognition?

    .venv/bin/python -m bench.sharpness_calibration --lfw ../shared/datasets/lfw [--people 300] [--json out.json]

Data: LFW ``people.txt`` folds 1-5 only (the open-set benchmark, ``bench/open_set_api.py``, uses
folds 6-10: none of its people are seen here), people with at least two photos,
``random.Random(SEED).sample(people, N)``, their first ``--photos`` photos (sorted by file name);
plus the real photos of ``tests/fixtures/faces/people`` (large, sharp originals) as a check.

For each photo: the detected face nearest the image centre (the served detector), its FaceNet
embedding (the served FaceNet: box alignment, margin 0.05, no flip), and each sharpness measure
below. Then each person's first photo blurred by a Gaussian kernel whose sigma is a fraction ``r``
of the face's side (the same box, the blurred image re-encoded as JPEG, quality 90): its measures
and its embedding.

Recognition: a photo is "named" when its nearest photo among all the others (sharp originals) is
one of its own person's and their cosine similarity is at least ``--threshold`` (0.617: the
per-search threshold in force for a 120-face gallery in the open-set benchmark).

Measures (variance of the Laplacian of a grey face image, each at one scale):
- ``crop160``: the aligned 160x160 crop (the enrollment gate until issue 15 part 4). A face of s
  pixels is resampled by 160 / (1.1 s): small faces are upsampled (smoothed), large ones
  downsampled (sharpened), so the same blur gives a different value at each face size.
- ``face64``: the face's square (no margin) resized to 64x64 by area averaging
  (``recognition.engine.quality.sharpness``): blur measured relative to the face's size.
- ``face64_norm``: ``face64`` over the grey level variance of the same 64x64 image (x 100):
  contrast-invariant.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.open_set_api import people_folds  # noqa: E402
from recognition.engine.alignment import align_face  # noqa: E402
from recognition.engine.pipeline import PipelineConfig, shared_pipeline  # noqa: E402
from recognition.engine.quality import SHARPNESS_SIDE, face_square, sharpness  # noqa: E402

SEED = 4
BLUR_FRACTIONS = (0.01, 0.02, 0.03, 0.045, 0.06, 0.08)
FIXED_FACE64 = (20.0, 40.0, 60.0, 80.0, 100.0)


def laplacian_var(grey: np.ndarray) -> float:
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def measures(rgb: np.ndarray, crop: np.ndarray, box) -> dict:
    square = face_square(rgb, box)
    grey = cv2.cvtColor(cv2.resize(square, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    lap = sharpness(rgb, box)
    return {
        "crop160": laplacian_var(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)),
        "face64": lap,
        "face64_norm": 100 * lap / max(1.0, float(grey.astype(np.float64).var())),
    }


def read_rgb(path: Path) -> np.ndarray:
    from recognition.engine.images import decode_image

    return decode_image(path.read_bytes())


def jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def central(faces, shape):
    h, w = shape[:2]
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2 - w / 2) ** 2 + (f.box[1] + f.box[3] / 2 - h / 2) ** 2)


def sample(lfw: Path, people: int, per_person: int, seed: int = SEED) -> list[tuple[str, list[Path]]]:
    folds = people_folds(lfw)
    first = sorted({p for f in folds[:5] for p in f} - {p for f in folds[5:] for p in f})
    images = lfw / "images_deepfunneled"
    eligible = [p for p in first if len(list((images / p).glob("*.jpg"))) >= 2]
    chosen = sorted(random.Random(seed).sample(eligible, people))
    return [(p, sorted((images / p).glob("*.jpg"))[:per_person]) for p in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.617)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pipe = shared_pipeline(PipelineConfig())
    started = time.perf_counter()

    rows = []  # one per sharp photo: person, file, box side, measures, embedding
    people = sample(args.lfw, args.people, args.photos)
    fixtures = ROOT / "tests/fixtures/faces/people"
    people += [(f"fixture:{d.name}", sorted(d.iterdir())) for d in sorted(fixtures.iterdir()) if d.is_dir()]
    for person, paths in people:
        for path in paths:
            rgb = read_rgb(path)
            faces = pipe.detect(rgb)
            if not faces:
                continue
            face = central(faces, rgb.shape)
            crop = align_face(rgb, face, margin=0.05)
            rows.append(
                {"person": person, "file": path.name, "side": float(max(face.box[2:])), "face": face, "rgb": rgb, "crop": crop}
            )
    embeddings = pipe.embedder.embed(np.stack([r["crop"] for r in rows]))
    for r, e in zip(rows, embeddings):
        r["embedding"] = e
        r.update(measures(r["rgb"], r["crop"], r["face"].box))
    print(f"{len(rows)} sharp photos embedded in {time.perf_counter() - started:.0f} s", flush=True)

    blurred = []  # each person's first photo at each blur fraction
    for r in rows:
        if r["file"] != next(x["file"] for x in rows if x["person"] == r["person"]) or r["person"].startswith("fixture:"):
            continue
        for frac in BLUR_FRACTIONS:
            rgb = jpeg(cv2.GaussianBlur(r["rgb"], (0, 0), sigmaX=frac * r["side"]))
            crop = align_face(rgb, r["face"], margin=0.05)
            blurred.append(
                {
                    "person": r["person"],
                    "file": r["file"],
                    "frac": frac,
                    "side": r["side"],
                    "crop": crop,
                    **{f"_m_{k}": v for k, v in measures(rgb, crop, r["face"].box).items()},
                }
            )
    if blurred:
        for b, e in zip(blurred, pipe.embedder.embed(np.stack([b["crop"] for b in blurred]))):
            b["embedding"] = e
    print(f"{len(blurred)} blurred copies embedded, {time.perf_counter() - started:.0f} s", flush=True)

    lfw_rows = [r for r in rows if not r["person"].startswith("fixture:")]
    gallery = np.stack([r["embedding"] for r in lfw_rows])
    owners = np.array([r["person"] for r in lfw_rows])
    files = np.array([r["file"] for r in lfw_rows])

    def named(person: str, file: str, embedding: np.ndarray) -> tuple[bool, float]:
        sims = gallery @ embedding
        sims[(owners == person) & (files == file)] = -2  # not itself
        best = int(np.argmax(sims))
        own = sims[owners == person]
        return bool(owners[best] == person and sims[best] >= args.threshold), float(own.max()) if own.size else -1.0

    has_other = {p for p in owners if (owners == p).sum() >= 2}
    for r in lfw_rows:
        r["named"], r["own"] = named(r["person"], r["file"], r["embedding"]) if r["person"] in has_other else (None, None)
    for b in blurred:
        b["named"], b["own"] = named(b["person"], b["file"], b["embedding"]) if b["person"] in has_other else (None, None)

    keys = ("crop160", "face64", "face64_norm")
    report = {"people": len({r["person"] for r in lfw_rows}), "photos": len(lfw_rows), "threshold": args.threshold}
    evaluable = [r for r in lfw_rows if r["named"] is not None]
    report["named_rate_sharp"] = round(float(np.mean([r["named"] for r in evaluable])), 4)
    print(f"sharp LFW photos: {len(evaluable)} with another photo of their person; named {report['named_rate_sharp']:.1%}")
    print("face side px: median", np.median([r["side"] for r in lfw_rows]))

    # The old gate (crop160 < 20): how many does it reject, and are they recognised?
    for key in keys:
        values = np.array([r[key] for r in evaluable])
        print(f"\n{key}: sharp photos percentiles 1/5/10/50: {np.percentile(values, [1, 5, 10, 50]).round(2).tolist()}")
        corr = np.corrcoef(np.log([r["side"] for r in evaluable]), np.log(np.maximum(values, 1e-3)))[0, 1]
        print(f"  correlation of log({key}) with log(face side): {corr:.2f}")
    old = [r for r in evaluable if r["crop160"] < 20]
    kept = [r for r in evaluable if r["crop160"] >= 20]
    report["old_gate"] = {
        "rejected": len(old),
        "rejected_named": sum(r["named"] for r in old),
        "kept": len(kept),
        "kept_named": sum(r["named"] for r in kept),
        "rejected_median_side": float(np.median([r["side"] for r in old])) if old else None,
        "kept_median_side": float(np.median([r["side"] for r in kept])),
    }
    print("\nold gate (crop160 >= 20):", report["old_gate"])

    print("\nblurred copies, by sigma / face side:")
    report["blur"] = []
    for frac in BLUR_FRACTIONS:
        group = [b for b in blurred if b["frac"] == frac and b["named"] is not None]
        entry = {"frac": frac, "n": len(group), "named": round(float(np.mean([b["named"] for b in group])), 4)}
        entry["own_median"] = round(float(np.median([b["own"] for b in group])), 3)
        for key in keys:
            entry[key] = np.percentile([b[f"_m_{key}"] for b in group], [10, 50, 90]).round(2).tolist()
        report["blur"].append(entry)
        print(" ", entry)

    # For a candidate threshold t of each measure: sharp photos rejected (and how many of them named),
    # blurred copies accepted (and how many of those not named).
    report["thresholds"] = {}
    for key in keys:
        sharp_values = np.array([r[key] for r in evaluable])
        candidates = np.unique(np.percentile(sharp_values, [0.5, 1, 2, 3, 5, 7, 10, 15]).round(2))
        if key == "face64":  # the gate's own scale: round candidates too (FACE_ENROLL_MIN_SHARPNESS)
            candidates = np.unique(np.concatenate([candidates, FIXED_FACE64]))
        lines = []
        for t in candidates:
            rej = [r for r in evaluable if r[key] < t]
            line = {
                "t": float(t),
                "sharp_rejected": len(rej),
                "sharp_rejected_named": sum(r["named"] for r in rej),
                "sharp_rejected_photos": [f"{r['person']}/{r['file']}" for r in rej][:10],
            }
            for frac in BLUR_FRACTIONS:
                group = [b for b in blurred if b["frac"] == frac and b["named"] is not None]
                acc = [b for b in group if b[f"_m_{key}"] >= t]
                line[f"blur{frac}_accepted"] = f"{len(acc)}/{len(group)} ({sum(not b['named'] for b in acc)} not named)"
            lines.append(line)
        report["thresholds"][key] = lines
        print(f"\n{key} thresholds:")
        for line in lines:
            print(" ", line)

    fixtures_rows = [r for r in rows if r["person"].startswith("fixture:")]
    report["fixtures"] = [
        {"photo": f"{r['person'][8:]}/{r['file']}", "side": round(r["side"]), **{k: round(r[k], 2) for k in keys}}
        for r in fixtures_rows
    ]
    print("\nfixtures:")
    for f in report["fixtures"]:
        print(" ", f)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
