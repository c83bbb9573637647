"""Open set per search on people no fusion weight was chosen on: FaceNet, today's fused embedder and
the fused "dlib chip + mirror, weight by log-loss" variant side by side (issue 15).

The protocol is ``bench/open_set.py``'s, on real people only: LFW ``people.txt`` folds 6-10 people
(``lfw_run.open_set_split``: 700 with two or more images, first enrolled and second their probe;
1,000 with one image, never enrolled; enrolled people left out of a gallery are strangers too), a
threshold for ``target`` false accepts per search from each embedder's own impostor tail of the
1,500 folds 1-5 people, the same galleries (same seeds) for every embedder. The fusion weights come
from LFW ``pairs.txt`` folds 1-5 only: today's served cosine weight (``fusion_facenet_dlib.json``)
and, for the variant, ``ScoreFusion.fit(criterion="logloss")`` on FaceNet's cosines without flip
and dlib's chip + mirror descriptors of those pairs. Nothing is tuned on folds 6-10; nothing served
changes.

    FACE_EMBED_RUNTIME=tflite FACE_DLIB_RUNTIME=tflite TF_CPP_MIN_LOG_LEVEL=3 \\
        .venv/bin/python -m bench.open_set_variants --lfw ../shared/datasets/lfw [--draws 20] [--json out.json]

FaceNet embeddings of the pairs, detections and dlib views are read from ``evaluate_fusion``'s
caches in TRAINING_CACHE_DIR when present; the open-set people's are made here (own cache folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _best(queries: np.ndarray, gallery: np.ndarray, score=None) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ gallery.T if score is None else score(queries, gallery)
    arg = scores.argmax(axis=1)
    return scores[np.arange(len(queries)), arg], arg


def _facenet_plain(pipe, lfw_dir: Path, faces: dict, cache: Path, batch: int = 64) -> dict[str, np.ndarray]:
    """FaceNet embeddings without flip of the given detections (as ``lfw_run.embed_lfw_images``), cached."""
    from recognition.engine.alignment import align_face
    from recognition.engine.images import decode_image

    files = sorted(faces)
    if cache.exists():
        stored = np.load(cache, allow_pickle=False)
        if list(stored["names"]) == files:
            return dict(zip(files, stored["vectors"]))
    cfg, out = pipe.config, {}
    for start in range(0, len(files), batch):
        names = files[start : start + batch]
        crops = np.stack(
            [
                align_face(decode_image((lfw_dir / n).read_bytes()), faces[n], method=cfg.align_method, margin=cfg.align_margin)
                for n in names
            ]
        )
        out.update(zip(names, pipe.embedder.embed(crops, flip=False)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, names=np.array(files), vectors=np.stack([out[f] for f in files]))
    return out


def gallery_draws(n_enrolled: int, size: int, draws: int):
    """The galleries of ``size`` people among ``n_enrolled``: (chosen rows, left-out rows) per draw; the
    first is ``bench/open_set.py``'s seed, and a gallery of every enrolled person is drawn once."""
    real = min(size, n_enrolled)
    for draw in range(draws if real < n_enrolled else 1):
        seed = size if draw == 0 else [size, draw]
        chosen = np.sort(np.random.default_rng(seed).choice(n_enrolled, real, replace=False))
        yield chosen, np.setdiff1d(np.arange(n_enrolled), chosen)


def open_set_rows(
    embeddings: np.ndarray,
    split,
    row: dict,
    sizes,
    target: float,
    draws: int = 1,
    tail=None,
    score=None,
    size_factor: float = 1.0,
) -> list[dict]:
    """Per gallery size: counts pooled over ``draws`` galleries (``gallery_draws``). ``tail``: the
    impostor tail the threshold comes from (default: the calibration people's raw cosines);
    ``score(queries, gallery) -> (Q, G)``: the scores searched (default: cosines); ``size_factor``:
    the threshold is calibrated for that many times the gallery's size (an effective size)."""
    from recognition.engine.open_set import ImpostorTail, calibrate, cross_person_scores

    if tail is None:
        calib = np.array([row[f] for f in split.calibration])
        labels = np.arange(len(calib))  # one image per calibration person
        tail = ImpostorTail.from_scores(cross_person_scores(embeddings[calib], labels, max_faces=len(calib)))
    enrolled = embeddings[[row[g] for g, _ in split.enrolled]]
    probes = embeddings[[row[p] for _, p in split.enrolled]]
    strangers = embeddings[[row[s] for s in split.strangers]]
    results = []
    for size in sizes:
        real = min(size, len(enrolled))
        t = calibrate([tail], real * size_factor, target, floor=-1.0).threshold
        pooled = {"people": size, "draws": 0, "threshold": round(float(t), 4), "tail_pairs": tail.n_pairs}
        for key in ("enrolled", "named", "named_wrong", "rank1", "strangers", "false_accepts"):
            pooled[key] = 0
        s_all, g_all = [], []
        for draw, (chosen, left_out) in enumerate(gallery_draws(len(enrolled), size, draws)):
            gallery = enrolled[chosen]
            stranger_probes = np.concatenate([strangers, probes[left_out]])
            s_best, _ = _best(stranger_probes, gallery, score)
            g_best, g_arg = _best(probes[chosen], gallery, score)
            correct = g_arg == np.arange(real)
            named = correct & (g_best >= t)
            pooled["draws"] += 1
            pooled["enrolled"] += int(real)
            pooled["named"] += int(named.sum())
            pooled["named_wrong"] += int((~correct & (g_best >= t)).sum())
            pooled["rank1"] += int(correct.sum())
            pooled["strangers"] += len(stranger_probes)
            pooled["false_accepts"] += int((s_best >= t).sum())
            if draw == 0:
                pooled["named_mask"] = named  # for McNemar: the first gallery only
            s_all.append(s_best)
            g_all.append(np.where(correct, g_best, -np.inf))
        # diagnostic only (chosen on these people): named at the threshold whose pooled measured
        # stranger rate is the target, so the embedders are compared at one false-accept rate
        s_all, g_all = np.concatenate(s_all), np.concatenate(g_all)
        t_eq = float(np.sort(s_all)[::-1][max(int(np.floor(target * len(s_all))) - 1, 0)]) + 1e-6
        pooled["equal_far_threshold"] = round(t_eq, 4)
        pooled["equal_far_accepts"] = int((s_all >= t_eq).sum())
        pooled["equal_far_named"] = int((g_all >= t_eq).sum())
        pooled["equal_far_named_mask"] = g_all[:real] >= t_eq  # the first gallery's probes
        results.append(pooled)
    return results


def embed_open_set_people(pipe, descriptor, lfw: Path, own_cache: Path, log=print):
    """``lfw_run.open_set_split``'s people, detected once: (split, their files "images_deepfunneled/...",
    {file: face}, detector misses, FaceNet embeddings without flip (N, 128) in files' order, {file: dlib chip
    descriptor}), cached in ``own_cache``."""
    from recognition.engine.lfw_fusion import describe_lfw_images, detect_lfw_faces
    from recognition.engine.lfw_run import open_set_split

    started = time.time()
    split = open_set_split(lfw)
    files = [f"images_deepfunneled/{f}" for f in split.files]
    faces, misses = detect_lfw_faces(pipe, lfw, files, own_cache)
    log(f"open-set images: {len(files)} detected ({misses} misses) ({time.time() - started:.0f} s)")
    plain = _facenet_plain(pipe, lfw, faces, own_cache / "facenet-plain.npz")
    log(f"FaceNet done ({time.time() - started:.0f} s)")
    chips = describe_lfw_images(descriptor, lfw, faces, own_cache)
    log(f"dlib done ({time.time() - started:.0f} s)")
    return split, files, faces, misses, np.stack([plain[x] for x in files]).astype(np.float32), chips


def _mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    from recognition.engine.fusion import mcnemar

    return mcnemar(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 700])
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--draws", type=int, default=1, help="Random galleries per size below every enrolled person (pooled).")
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    import django

    django.setup()
    from django.conf import settings

    from recognition import pipelines
    from recognition.engine.dlib_descriptor import ChipViews, DlibDescriptor
    from recognition.engine.fusion import ScoreFusion, best_threshold, fuse_templates
    from recognition.engine.lfw import read_pairs
    from recognition.engine.lfw_fusion import describe_lfw_images, detect_lfw_faces, pair_cosines
    from recognition.engine.lfw_fusion_variants import describe_lfw_views, variant_descriptors
    from recognition.engine.lfw_run import embed_lfw_images
    from recognition.pipelines import fusion_calibration

    started = time.time()
    lfw = args.lfw
    cache_dir = Path(settings.TRAINING_CACHE_DIR)
    own_cache = cache_dir / "open-set-variants"
    pipe = pipelines.pipeline("facenet")
    descriptor = DlibDescriptor("landmarks", runtime=settings.FACE_DLIB_RUNTIME, cache_dir=cache_dir)
    chip, flip = ChipViews.parse("chip"), ChipViews.parse("flip")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    # 1. the fusion weights, from LFW pairs.txt folds 1-5 only
    pairs = [p for p in read_pairs(lfw) if p.fold < 5]
    same = np.array([p.same for p in pairs])
    pair_files = sorted({p.left for p in pairs} | {p.right for p in pairs})
    faces, misses = detect_lfw_faces(pipe, lfw, pair_files, cache_dir)
    plain, _, _ = embed_lfw_images(pipe, lfw, pairs, cache_dir=cache_dir, faces=(faces, misses))
    d_chip = describe_lfw_images(descriptor, lfw, faces, cache_dir)
    views = describe_lfw_views(descriptor, lfw, faces, 0, cache_dir, plain=d_chip)
    f_cos = pair_cosines(plain, pairs)
    chip_cos = pair_cosines(variant_descriptors(views, chip), pairs)
    flip_cos = pair_cosines(variant_descriptors(views, flip), pairs)
    served_v = round(float(fusion_calibration.get()["cosine_weight"]), 4)  # as pipelines.pipeline_config
    refit_today = ScoreFusion.fit(f_cos, chip_cos, same, criterion="accuracy")
    variant = ScoreFusion.fit(f_cos, flip_cos, same, criterion="logloss")
    log(
        f"pairs folds 1-5: {len(pairs)} pairs, {len(pair_files)} images; served v {served_v:.4f} "
        f"(refit here by accuracy: z {refit_today.weight:.3f}, v {refit_today.cosine_weight:.4f}); "
        f"chip+mirror by log-loss: z {variant.weight:.3f}, v {variant.cosine_weight:.4f} ({time.time() - started:.0f} s)"
    )
    fits = {
        "served_v": served_v,
        "refit_today_z": refit_today.weight,
        "refit_today_v": refit_today.cosine_weight,
        "variant_z": variant.weight,
        "variant_v": variant.cosine_weight,
        "pairs_accuracy_in_sample": {
            "facenet": best_threshold(f_cos, same)[1],
            "fused_today": best_threshold(served_v * f_cos + (1 - served_v) * chip_cos, same)[1],
            "fused_chip_mirror": best_threshold(variant.cosine_weight * f_cos + (1 - variant.cosine_weight) * flip_cos, same)[1],
        },
    }

    # 2. the open-set people (folds 6-10) and the calibration people (folds 1-5), embedded here
    split, files, people_faces, people_misses, f, d_people_chip = embed_open_set_people(pipe, descriptor, lfw, own_cache, log)
    people_views = describe_lfw_views(descriptor, lfw, people_faces, 0, own_cache, plain=d_people_chip)
    log(f"dlib views done ({time.time() - started:.0f} s)")
    dc = variant_descriptors(people_views, chip)
    df = variant_descriptors(people_views, flip)
    dc = np.stack([dc[x] for x in files])
    df = np.stack([df[x] for x in files])
    embedders = {
        "FaceNet alone": f,
        f"fused today (dlib chip, v {served_v:.4f})": fuse_templates(f, dc, served_v),
        f"fused dlib chip + mirror, log-loss v {variant.cosine_weight:.4f}": fuse_templates(f, df, variant.cosine_weight),
    }
    row = {x.split("/", 1)[1]: i for i, x in enumerate(files)}  # "Name/Name_0001.jpg", as the split names them
    out = {"fits": fits, "misses": people_misses, "split": {"enrolled": len(split.enrolled), "strangers": len(split.strangers)}}
    results = {name: open_set_rows(e, split, row, args.sizes, args.target, args.draws) for name, e in embedders.items()}
    print(
        f"\n{len(split.enrolled)} enrolled people (folds 6-10, 2nd image as probe), {len(split.strangers)} strangers; "
        f"tails from {len(split.calibration)} people of folds 1-5; target {args.target:.0%} per search\n"
    )
    print(
        "| gallery (draws) | embedder | threshold in force | **named** (of enrolled) | wrong person | rank-1 | **strangers accepted** |"
    )
    print("|---|---|---|---|---|---|---|")
    for i, size in enumerate(args.sizes):
        for name, rows in results.items():
            r = rows[i]
            print(
                f"| {size} ({r['draws']}) | {name} | {r['threshold']:.3f} | {r['named']}/{r['enrolled']} ({r['named'] / r['enrolled']:.1%}) | "
                f"{r['named_wrong']} | {r['rank1']}/{r['enrolled']} | {r['false_accepts']}/{r['strangers']} "
                f"({r['false_accepts'] / r['strangers']:.2%}) |"
            )
    print(
        "\nDiagnostic, chosen on these people (not a deployable threshold): named when each embedder's "
        f"threshold is set so that {args.target:.0%} of these strangers' searches are accepted\n"
    )
    print("| gallery (draws) | embedder | threshold | strangers accepted | named |")
    print("|---|---|---|---|---|")
    for i, size in enumerate(args.sizes):
        for name, rows in results.items():
            r = rows[i]
            print(
                f"| {size} ({r['draws']}) | {name} | {r['equal_far_threshold']:.3f} | {r['equal_far_accepts']}/{r['strangers']} | "
                f"{r['equal_far_named']}/{r['enrolled']} ({r['equal_far_named'] / r['enrolled']:.1%}) |"
            )
    names = list(results)
    out["mcnemar_named"] = {}
    for i, size in enumerate(args.sizes):
        for a, b in ((2, 1), (2, 0), (1, 0)):
            fixed, broken, p = _mcnemar(results[names[a]][i]["named_mask"], results[names[b]][i]["named_mask"])
            print(
                f"gallery {size} (first draw): {names[a]} vs {names[b]}: named {fixed} more / {broken} fewer, exact McNemar p = {p:.3g}"
            )
            out["mcnemar_named"][f"{size}: {names[a]} vs {names[b]}"] = {"fixed": fixed, "broken": broken, "p": p}
    for rows in results.values():
        for r in rows:
            del r["named_mask"], r["equal_far_named_mask"]
    out["results"] = results
    out["seconds"] = time.time() - started
    print(f"\n{out['seconds']:.0f} s; fits: {json.dumps(fits)}")
    if args.json_path:
        args.json_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
