"""Open set per search, checked on LFW people the calibration never saw.

The LFW impostor tail is made from folds 1-5 (``calibrate_open_set``); here people only in folds
6-10 are enrolled (first image in the gallery, second image as their probe) or are strangers (one
image, never enrolled). Galleries of several sizes (one face per person; past the 700 real people,
synthetic faces shaped like them, ``bench.synthetic``): the share of strangers whose best score
reaches the threshold (false accepts per search) against the 1% target, and the share of enrolled
people's probes named correctly at it, beside the fixed per-pair threshold (FACE_MATCH_THRESHOLD).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _best(queries: np.ndarray, gallery: np.ndarray, chunk: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """Best score and its gallery row per query (exact, float32)."""
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.zeros(len(queries), np.int64)
    for start in range(0, len(gallery), chunk):
        scores = queries @ gallery[start : start + chunk].T
        i = scores.argmax(axis=1)
        s = scores[np.arange(len(queries)), i]
        better = s > best
        best[better], arg[better] = s[better], i[better] + start
    return best, arg


def run(lfw_dir: Path, out, sizes=(100, 700, 1_000, 10_000, 100_000), target: float = 0.01) -> dict:
    from django.conf import settings

    from recognition import pipelines
    from recognition.engine.lfw_run import embed_lfw_people, open_set_split
    from recognition.engine.open_set import ImpostorTail, calibrate, cross_person_scores

    from .synthetic import EmbeddingModel

    split = open_set_split(lfw_dir)
    pipe = pipelines.pipeline()
    _, labels_, embeddings = embed_lfw_people(pipe, lfw_dir, settings.TRAINING_CACHE_DIR, files=split.files)
    row = {f: i for i, f in enumerate(split.files)}
    calib = np.array([row[f] for f in split.calibration])
    tail = ImpostorTail.from_scores(cross_person_scores(embeddings[calib], labels_[calib], max_faces=len(calib)))
    enrolled = embeddings[[row[g] for g, _ in split.enrolled]]
    probes = embeddings[[row[p] for _, p in split.enrolled]]
    strangers = embeddings[[row[s] for s in split.strangers]]
    # synthetic faces shaped like the enrolled real people (each has two images)
    model = EmbeddingModel.fit(np.concatenate([enrolled, probes]), np.tile(np.arange(len(enrolled)), 2))
    floor = float(settings.FACE_MATCH_THRESHOLD)
    out(
        f"\n## Open set per search (LFW folds 6-10, never used for the tail: {len(split.enrolled)} enrolled people "
        f"with a second image as probe, {len(split.strangers)} strangers; tail from {len(calib)} people of folds 1-5, "
        f"{tail.n_pairs} pairs; target {target:.0%} per search)\n"
    )
    out(
        "| gallery (people = faces) | real / synthetic | calibrated | in force | expected FA/search | "
        f"measured FA/search | identification | at fixed {floor:.2f}: FA/search | identification |"
    )
    out("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for size in sizes:
        real = min(size, len(enrolled))
        rng = np.random.default_rng(size)
        chosen = np.sort(rng.choice(len(enrolled), real, replace=False))
        synthetic, _ = model.sample(size - real, 1, seed=size) if size > real else (np.zeros((0, 128), np.float32), None)
        gallery = np.concatenate([enrolled[chosen], synthetic]).astype(np.float32)
        # strangers: the never-enrolled people, and the enrolled people left out of this gallery
        left_out = np.setdiff1d(np.arange(len(enrolled)), chosen)
        stranger_probes = np.concatenate([strangers, probes[left_out]])
        calibrated = calibrate([tail], len(gallery), target, floor=floor)
        t = calibrated.threshold
        s_best, _ = _best(stranger_probes, gallery)
        g_best, g_arg = _best(probes[chosen], gallery)
        correct = g_arg == np.arange(real)
        entry = {
            "people": size,
            "real": real,
            "synthetic": size - real,
            "calibrated": round(calibrated.calibrated, 4),
            "threshold": round(t, 4),
            "expected_far": calibrated.expected_far,
            "strangers": len(stranger_probes),
            "measured_far": float(np.mean(s_best >= t)),
            "identification": float(np.mean(correct & (g_best >= t))),
            "fixed_far": float(np.mean(s_best >= floor)),
            "fixed_identification": float(np.mean(correct & (g_best >= floor))),
        }
        results.append(entry)
        out(
            f"| {size:,} | {real} / {size - real:,} | {calibrated.calibrated:.3f} | {t:.3f} | {entry['expected_far']:.2%} | "
            f"{entry['measured_far']:.2%} ({int(np.sum(s_best >= t))}/{len(stranger_probes)}) | "
            f"{entry['identification']:.1%} | {entry['fixed_far']:.2%} | {entry['fixed_identification']:.1%} |"
        )
    return {"tail_pairs": tail.n_pairs, "results": results}
