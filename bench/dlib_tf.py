"""dlib's face descriptor on dlib-bin, TensorFlow and TFLite: the same descriptors? how fast? (issue 15)

    .venv/bin/python -m bench.dlib_tf --lfw ../shared/datasets/lfw match --images 300
    .venv/bin/python -m bench.dlib_tf --lfw ../shared/datasets/lfw speed --chips 32 --rounds 5
    .venv/bin/python -m bench.dlib_tf --lfw ../shared/datasets/lfw pairs [--folds 10] [--per-fold N]

``match``: chips of LFW images (the first image of each of the first ``--images`` people, faces
found by the product's detector, dlib's chip from MTCNN's landmarks as the fused embedder makes it)
described by all three runtimes; cosines between their descriptors. ``speed``: ms per chip of each
runtime, one chip per call and in batches of 8 and 32, the runtimes taking turns (interleaved, so
load from other processes hits all alike), medians. ``pairs``: LFW's 10-fold verification on
``pairs.txt`` (``--folds`` of its 10 folds) with dlib-bin's descriptors and with TFLite's, the same
detections and chips; accuracy, TAR at FAR 0.1%, pairs decided differently, and the lowest cosine
between the two runtimes' descriptors over every image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CACHE = Path(__file__).resolve().parent.parent / "var" / "cache"


def descriptors(runtimes: list[str]):
    from recognition.engine.dlib_descriptor import DlibDescriptor

    return {r: DlibDescriptor("landmarks", runtime=r, cache_dir=CACHE) for r in runtimes}


def lfw_chips(lfw: Path, count: int) -> np.ndarray:
    """(count, 150, 150, 3) chips: the first image of each person (sorted) in which a face is found."""
    from recognition.engine.dlib_descriptor import landmark_chips
    from recognition.engine.images import decode_image
    from recognition.engine.pipeline import shared_pipeline

    pipeline = shared_pipeline()
    chips = []
    for person in sorted((lfw / "images_deepfunneled").iterdir()):
        first = sorted(person.glob("*.jpg"))[0]
        rgb = decode_image(first.read_bytes())
        found = pipeline.detect(rgb)
        if found:
            chips.append(landmark_chips(rgb, found[:1])[0])
        if len(chips) == count:
            break
    return np.stack(chips)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def raw(descriptor, chips: np.ndarray) -> np.ndarray:
    """The network's raw 128-d output (``describe_chips`` L2-normalises it)."""
    return np.asarray(descriptor._network(chips), np.float64)


def match(args) -> None:
    chips = lfw_chips(args.lfw, args.images)
    nets = descriptors(["dlib", "tf", "tflite"])
    out = {name: np.concatenate([raw(d, chips[i : i + 32]) for i in range(0, len(chips), 32)]) for name, d in nets.items()}
    print(f"{len(chips)} LFW chips (one per person, MTCNN landmarks alignment); load average {os.getloadavg()[0]:.1f}")
    print(
        "| runtimes | lowest cosine | 1 - lowest cosine | median 1 - cosine | largest abs difference (raw) | median norm ratio |"
    )
    print("|---|---|---|---|---|---|")
    for a, b in (("dlib", "tf"), ("dlib", "tflite"), ("tf", "tflite")):
        c = cosines(out[a], out[b])
        ratio = np.linalg.norm(out[b], axis=1) / np.linalg.norm(out[a], axis=1)
        print(
            f"| {a} vs {b} | {c.min():.9f} | {1 - c.min():.1e} | {1 - np.median(c):.1e} | "
            f"{np.abs(out[a] - out[b]).max():.2e} | {np.median(ratio):.6f} |"
        )


def speed(args) -> None:
    chips = lfw_chips(args.lfw, args.chips)
    nets = descriptors(["dlib", "tf", "tflite"])
    names = list(nets)
    modes = {"one chip per call": 1, "batches of 8": 8, f"batch of {len(chips)}": len(chips)}

    def run(name: str, batch: int) -> None:
        for i in range(0, len(chips), batch):
            nets[name].describe_chips(chips[i : i + batch])

    for name in names:  # warm-up: graphs traced, interpreters allocated for every batch size
        for batch in modes.values():
            run(name, batch)
    wall = {(mode, name): [] for mode in modes for name in names}
    cpu = {(mode, name): [] for mode in modes for name in names}
    for round_number in range(args.rounds):
        for mode, batch in modes.items():
            order = names[round_number % 3 :] + names[: round_number % 3]  # who goes first rotates
            for name in order:
                started, cpu_started = time.perf_counter(), time.process_time()
                run(name, batch)
                wall[mode, name].append(1000 * (time.perf_counter() - started) / len(chips))
                cpu[mode, name].append(1000 * (time.process_time() - cpu_started) / len(chips))
    print(
        f"{len(chips)} LFW chips, median of {args.rounds} interleaved rounds, ms per chip (wall / CPU of every "
        f"thread); load average {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} cores"
    )
    print("| mode | dlib-bin | TensorFlow | TFLite | dlib-bin / TensorFlow | dlib-bin / TFLite |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        w = {name: statistics.median(wall[mode, name]) for name in names}
        c = {name: statistics.median(cpu[mode, name]) for name in names}
        cells = " | ".join(f"{w[n]:.1f} / {c[n]:.1f}" for n in names)
        ratios = " | ".join(f"{w['dlib'] / w[n]:.1f}x / {c['dlib'] / c[n]:.1f}x" for n in ("tf", "tflite"))
        print(f"| {mode} | {cells} | {ratios} |")


def pairs(args) -> None:
    from recognition.engine.dlib_descriptor import landmark_chips
    from recognition.engine.fusion import tar_at_far
    from recognition.engine.images import decode_image
    from recognition.engine.lfw import read_pairs, ten_fold_accuracy
    from recognition.engine.lfw_fusion import detect_lfw_faces, pair_cosines
    from recognition.engine.pipeline import shared_pipeline

    chosen = [p for p in read_pairs(args.lfw) if p.fold < args.folds]
    if args.per_fold:  # the first N same-person and N different-person pairs of each fold
        taken: dict[tuple[int, bool], int] = {}
        subset = []
        for pair in chosen:
            if taken.get((pair.fold, pair.same), 0) < args.per_fold:
                taken[pair.fold, pair.same] = taken.get((pair.fold, pair.same), 0) + 1
                subset.append(pair)
        chosen = subset
    files = sorted({p.left for p in chosen} | {p.right for p in chosen})
    print(f"{len(chosen)} pairs (folds 0..{args.folds - 1}, per fold: {args.per_fold or 'all'}), {len(files)} images", flush=True)
    started = time.perf_counter()
    faces, misses = detect_lfw_faces(shared_pipeline(), args.lfw, files, CACHE)
    print(f"detections: {time.perf_counter() - started:.0f} s ({misses} misses: LFW's centre box)", flush=True)
    nets = descriptors(["dlib", "tflite"])
    vectors = {name: {} for name in nets}
    spent = dict.fromkeys(nets, 0.0)
    for start in range(0, len(files), 32):
        names = files[start : start + 32]
        chips = np.concatenate([landmark_chips(decode_image((args.lfw / n).read_bytes()), [faces[n]]) for n in names])
        for name, net in nets.items():
            began = time.perf_counter()
            vectors[name].update(zip(names, net.describe_chips(chips)))
            spent[name] += time.perf_counter() - began
        if start % 640 == 0:
            print(f"  {start + len(names)} / {len(files)} images; load average {os.getloadavg()[0]:.1f}", flush=True)
    same = np.array([p.same for p in chosen])
    folds = np.array([p.fold for p in chosen])
    c = cosines(np.stack([vectors["dlib"][f] for f in files]), np.stack([vectors["tflite"][f] for f in files]))
    print(f"lowest cosine dlib-bin vs TFLite over {len(files)} images: {c.min():.9f} (1 - cosine: {1 - c.min():.1e})")
    print("ms per chip in batches of 32: " + ", ".join(f"{n} {1000 * s / len(files):.1f}" for n, s in spent.items()))
    print(f"| runtime | {len(set(folds.tolist()))}-fold accuracy | mean threshold | TAR @ FAR 0.1% |")
    print("|---|---|---|---|")
    scores, decisions = {}, {}
    for name in nets:
        scores[name] = pair_cosines(vectors[name], chosen)
        result = ten_fold_accuracy(scores[name], same, folds)
        _, tar = tar_at_far(scores[name], same, 0.001)
        thresholds = np.array(result.fold_thresholds)[folds]
        decisions[name] = scores[name] >= thresholds
        print(
            f"| {name} | {100 * result.accuracy_mean:.2f}% ± {100 * result.accuracy_std:.2f} | {result.threshold_mean:.4f} | {100 * tar:.2f}% |"
        )
    differ = int((decisions["dlib"] != decisions["tflite"]).sum())
    print(
        f"pairs decided differently (each at its own fold thresholds): {differ} of {len(chosen)}; "
        f"largest score difference {np.abs(scores['dlib'] - scores['tflite']).max():.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("match")
    p.add_argument("--images", type=int, default=300)
    p = sub.add_parser("speed")
    p.add_argument("--chips", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p = sub.add_parser("pairs")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--per-fold", type=int, default=0, help="only the first N same and N different pairs of each fold")
    args = parser.parse_args()
    {"match": match, "speed": speed, "pairs": pairs}[args.command](args)


if __name__ == "__main__":
    main()
