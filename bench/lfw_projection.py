"""Does a linear projection learned on the training folds' people (WCCN: within-class covariance
normalisation) raise LFW verification, alone or fused? (issue 15; offline study, nothing served.)

A projection ``x -> normalise(W (x - m))`` keeps one template per face and one inner-product index,
so it could be served like the fused template. ``W = (S_w + lambda * mean_eig * I)^(-1/2)``, S_w the
within-person covariance of the training people's unit embeddings, m their mean.

Protocol: LFW ``pairs.txt``, all 6,000 pairs, the caches of ``evaluate_fusion`` (FaceNet TFLite with
its mirror, dlib's landmark chip). For each of the 10 splits, the projection is fitted on the images
of the 9 training folds' people (pairs.txt's folds are disjoint in people; checked), its lambda chosen
by leave-one-fold-out inside those 9 folds (fit on 8, score the 9th's pairs; pooled log-loss, or
accuracy), and the threshold on the 9 folds; the 10th fold is scored once. Fused rows: the two
projected (or raw) cosines in ``ScoreFusion`` (weight by log-loss on the 9 folds), or the
concatenation ``[f, d]`` projected as one vector.

Each split's lambda is its own, so the TAR of the pooled held-out scores mixes projections of
different scales: read it for rows whose lambda does not move between splits.

    FACE_EMBED_RUNTIME=tflite FACE_DLIB_RUNTIME=tflite TF_CPP_MIN_LOG_LEVEL=3 \\
        .venv/bin/python -m bench.lfw_projection --lfw ../shared/datasets/lfw --cache-dir var/cache \\
        [--lambdas 1 3 10 30 100 1e6] [--no-centre] [--rows "fused FaceNet"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

LAMBDAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def person(path: str) -> str:
    return path.split("/")[-2]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fit_wccn(x: np.ndarray, labels: np.ndarray, lam: float, centre: bool = True):
    """(W, m): W = (S_w + lam * mean eigenvalue * I)^(-1/2); S_w from people with two or more images.
    ``labels``: integer person codes."""
    m = x.mean(axis=0) if centre else np.zeros(x.shape[1])
    codes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(codes), x.shape[1]))
    np.add.at(sums, inverse, x)
    means = sums / counts[:, None]
    several = counts[inverse] >= 2
    r = (x - means[inverse])[several]
    sw = r.T @ r / len(r)
    eig, vec = np.linalg.eigh(sw)
    eig = eig + lam * eig.mean()
    return vec @ np.diag(eig**-0.5) @ vec.T, m


def project(x: np.ndarray, model) -> np.ndarray:
    w, m = model
    return unit((x - m) @ w.T)


def main(argv=None):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--lambdas", nargs="+", type=float, default=list(LAMBDAS), help="The ridge grid, in mean eigenvalues.")
    parser.add_argument("--no-centre", action="store_true", help="Do not subtract the training mean.")
    parser.add_argument("--rows", nargs="+", default=None, help="Only the rows whose label starts with one of these.")
    args = parser.parse_args(argv)

    import django

    django.setup()
    from django.conf import settings

    from recognition import services
    from recognition.engine.dlib_descriptor import DlibDescriptor
    from recognition.engine.embedding import combine_flipped
    from recognition.engine.fusion import ScoreFusion, best_threshold, logistic_log_loss, mcnemar, tar_at_far
    from recognition.engine.lfw_fusion import describe_lfw_images, detect_lfw_faces
    from recognition.engine.lfw_run import embed_lfw_images
    from recognition.management.lfw import lfw_pairs

    pairs = lfw_pairs(args.lfw, min_folds=2)
    files = sorted({p.left for p in pairs} | {p.right for p in pairs})
    pipeline = services.pipeline()
    faces, misses = detect_lfw_faces(pipeline, args.lfw, files, args.cache_dir)
    plain, mirrored, _ = embed_lfw_images(pipeline, args.lfw, pairs, cache_dir=args.cache_dir, faces=(faces, misses))
    descriptor = DlibDescriptor("landmarks", runtime=settings.FACE_DLIB_RUNTIME, cache_dir=settings.TRAINING_CACHE_DIR)
    dlib = describe_lfw_images(descriptor, args.lfw, faces, args.cache_dir)

    index = {f: i for i, f in enumerate(files)}
    names = np.array([person(f) for f in files])
    labels = np.unique(names, return_inverse=True)[1]
    fold_of_image = np.full(len(files), -1)
    fold_of_person: dict[str, set] = {}
    for p in pairs:
        for f in (p.left, p.right):
            fold_of_image[index[f]] = p.fold
            fold_of_person.setdefault(person(f), set()).add(p.fold)
    shared = [n for n, s in fold_of_person.items() if len(s) > 1]
    print(f"{len(pairs)} pairs, {len(files)} images, {len(fold_of_person)} people; people in several folds: {len(shared)}")

    left = np.array([index[p.left] for p in pairs])
    right = np.array([index[p.right] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    feats = {
        "facenet": np.stack([plain[f] for f in files]).astype(np.float64),
        "facenet_flip": combine_flipped(np.stack([plain[f] for f in files]), np.stack([mirrored[f] for f in files])).astype(
            np.float64
        ),
        "dlib": np.stack([dlib[f] for f in files]).astype(np.float64),
    }
    feats["concat"] = np.concatenate([feats["facenet"], feats["dlib"]], axis=1)
    feats["concat_flip"] = np.concatenate([feats["facenet_flip"], feats["dlib"]], axis=1)

    def cosines(x, mask):
        return np.einsum("ij,ij->i", x[left[mask]], x[right[mask]])

    def people_of(fold_set):
        inside = {n for n, s in fold_of_person.items() if s <= fold_set}
        return np.array([n in inside for n in names])

    people_cache = {}

    def fit_projection(name, fold_set, lam):
        key = frozenset(fold_set)
        if key not in people_cache:
            people_cache[key] = people_of(fold_set)
        rows = people_cache[key]
        x = unit(feats[name])
        return fit_wccn(x[rows], labels[rows], lam, centre=not args.no_centre)

    def projected_scores(name, model, mask):
        y = project(unit(feats[name]), model)
        return cosines(y, mask)

    def choose_lambda(name, train_folds, criterion):
        """Leave one training fold out: fit on 8, score the 9th; pooled criterion."""
        best = None
        for lam in args.lambdas:
            scores, truth = [], []
            for j in train_folds:
                model = fit_projection(name, set(train_folds) - {j}, lam)
                mask = folds == j
                scores.append(projected_scores(name, model, mask))
                truth.append(same[mask])
            s, t = np.concatenate(scores), np.concatenate(truth)
            value = -logistic_log_loss(s, t) if criterion == "logloss" else best_threshold(s, t)[1]
            if best is None or value > best[0]:
                best = (value, lam)
        return best[1]

    all_folds = sorted(set(folds.tolist()))
    results = {}

    def run(label, scorer):
        """scorer(train_folds, test_mask, train_mask) -> (train scores, test scores, info)."""
        if args.rows and not label.startswith(tuple(args.rows)):
            return
        held = np.zeros(len(pairs))
        correct = np.zeros(len(pairs), bool)
        accs, infos = [], []
        for k in all_folds:
            train, test = folds != k, folds == k
            s_train, s_test, info = scorer([f for f in all_folds if f != k], train, test)
            threshold, _ = best_threshold(s_train, same[train])
            held[test] = s_test
            correct[test] = (s_test >= threshold) == same[test]
            accs.append(correct[test].mean())
            infos.append(info)
        row = dict(
            accuracy=float(np.mean(accs)),
            std=float(np.std(accs)),
            errors=int((~correct).sum()),
            tar_0001=tar_at_far(held, same, 0.001)[1],
            tar_001=tar_at_far(held, same, 0.01)[1],
            info=infos,
            correct=correct,
        )
        results[label] = row
        print(
            f"| {label} | {100 * row['accuracy']:.2f}% ± {100 * row['std']:.2f} | {row['errors']} | "
            f"{100 * row['tar_0001']:.2f}% | {100 * row['tar_001']:.2f}% | {infos} |",
            flush=True,
        )

    def raw(name):
        x = unit(feats[name])
        return lambda tf, train, test: (cosines(x, train), cosines(x, test), None)

    def wccn(name, criterion="logloss", lam=None):
        def scorer(tf, train, test):
            chosen = lam if lam is not None else choose_lambda(name, tf, criterion)
            model = fit_projection(name, set(tf), chosen)
            return projected_scores(name, model, train), projected_scores(name, model, test), chosen

        return scorer

    def fused(fn_name, d_name, project_them, criterion="logloss"):
        """``project_them``: True (both), False (neither) or the name of the one projected."""

        def scorer(tf, train, test):
            info = []
            parts = []
            for name in (fn_name, d_name):
                if project_them is True or project_them == name:
                    chosen = choose_lambda(name, tf, "logloss")
                    model = fit_projection(name, set(tf), chosen)
                    parts.append(projected_scores(name, model, np.ones(len(pairs), bool)))
                    info.append(chosen)
                else:
                    parts.append(cosines(unit(feats[name]), np.ones(len(pairs), bool)))
            f, d = parts
            model = ScoreFusion.fit(f[train], d[train], same[train], criterion=criterion)
            info.append(round(model.weight, 3))
            return model.score(f[train], d[train]), model.score(f[test], d[test]), info

        return scorer

    print("| method | accuracy | errors | TAR @ FAR 0.1% | TAR @ FAR 1% | per split (lambda, weight) |")
    print("|---|---|---|---|---|---|")
    for name in ("facenet", "facenet_flip", "dlib"):
        run(f"{name} raw", raw(name))
        run(f"{name} WCCN (lambda by log-loss)", wccn(name))
        run(f"{name} WCCN (lambda by accuracy)", wccn(name, "accuracy"))
    for flip in ("", "_flip"):
        run(f"fused{flip} raw cosines, weight by log-loss", fused(f"facenet{flip}", "dlib", False))
        run(f"fused{flip} WCCN cosines, weight by log-loss", fused(f"facenet{flip}", "dlib", True))
        run(f"fused{flip} FaceNet WCCN + dlib raw, weight by log-loss", fused(f"facenet{flip}", "dlib", f"facenet{flip}"))
        run(f"concat{flip} raw", raw(f"concat{flip}"))
        run(f"concat{flip} WCCN (lambda by log-loss)", wccn(f"concat{flip}"))

    for flip in ("", "_flip") if not args.rows else ():
        base = results[f"fused{flip} raw cosines, weight by log-loss"]["correct"]
        for label, row in results.items():
            if label.startswith(("fused", "concat")) and flip in label:
                fixed, broken, p = mcnemar(row["correct"], base)
                print(f"{label}: vs fused{flip} raw: {fixed} fixed / {broken} broken, p = {p:.3g}")
        fbase = results[f"facenet{flip} raw"]["correct"]
        for label, row in results.items():
            fixed, broken, p = mcnemar(row["correct"], fbase)
            if flip in label or not flip:
                print(f"{label}: vs facenet{flip} raw: {fixed} fixed / {broken} broken, p = {p:.3g}")
    if args.json:
        args.json.write_text(
            json.dumps({k: {a: b for a, b in v.items() if a != "correct"} for k, v in results.items()}, indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())
