"""LFW 10-fold evaluation of FaceNet fused with dlib's descriptor (issue 15, step 1).

FaceNet's embeddings come from ``lfw_run.embed_lfw_images`` (the same cache as ``evaluate_lfw``);
dlib's descriptors are made here from the same detector's boxes and landmarks, cached per
alignment. Every learned part (alignment choice, z statistics, fusion weight, meta-learner,
threshold) is fitted on the 9 training folds and tested on the held-out one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .alignment import align_face
from .detection import DetectedFace
from .dlib_descriptor import MODEL_FILES, DlibDescriptor
from .fusion import CrossValidated, ScoreFusion, best_threshold, cross_validate, fuse_templates, mcnemar, tar_at_far
from .images import decode_image
from .lfw import Pair
from .lfw_cache import cache_file, read_rows, write_rows
from .lfw_run import flipped_embeddings, lfw_face
from .pipeline import FacePipeline


def detect_lfw_faces(
    pipeline: FacePipeline, lfw_dir: Path, files: list[str], cache_dir: Path | None, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, DetectedFace], int]:
    """The central face of each image ({relative path: face}; LFW's centre face where the detector
    found none) and the number of such misses; cached per detector configuration."""
    cfg = pipeline.config
    cache = cache_file(
        cache_dir, "lfw-detections", (pipeline.detector.name, cfg.detect_max_side, cfg.min_face_size, cfg.min_detection_score)
    )
    stored = read_rows(cache, files)
    if stored is not None:
        if progress:
            progress(len(files))
        faces = {
            name: DetectedFace(box=tuple(float(v) for v in box), landmarks=marks, score=float(score))
            for name, box, marks, score in zip(files, stored["boxes"], stored["landmarks"], stored["scores"])
        }
        return faces, int(stored["misses"])
    faces, misses = {}, 0
    for name in files:
        _, faces[name], missed = lfw_face(pipeline, lfw_dir, name)
        misses += missed
        if progress:
            progress(1)
    write_rows(
        cache,
        files,
        boxes=np.array([faces[n].box for n in files], np.float32),
        landmarks=np.stack([faces[n].landmarks for n in files]).astype(np.float32),
        scores=np.array([faces[n].score for n in files], np.float32),
        misses=misses,
    )
    return faces, misses


def describe_lfw_images(
    descriptor: DlibDescriptor,
    lfw_dir: Path,
    faces: dict[str, DetectedFace],
    cache_dir: Path | None,
    progress: Callable[[int], None] | None = None,
    batch: int = 64,
) -> dict[str, np.ndarray]:
    """dlib descriptors of the given faces ({relative path: (128,) float32 unit}), chips batched.

    Cached per alignment and model files, with the detections they were made from: a later run on
    any subset of the images, from the same detections, reads them back."""
    files = sorted(faces)
    boxes = np.array([faces[f].box for f in files], np.float32)
    landmarks = np.stack([faces[f].landmarks for f in files]).astype(np.float32)
    cache = cache_file(cache_dir, f"lfw-dlib-{descriptor.alignment}", (descriptor.name, sorted(MODEL_FILES.values())), 8)
    stored = read_rows(cache, files, made_from={"boxes": boxes, "landmarks": landmarks})
    if stored is not None:
        if progress:
            progress(len(files))
        return dict(zip(files, stored["vectors"]))
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(files), batch):
        names = files[start : start + batch]
        chips = np.concatenate([descriptor.chips(decode_image((Path(lfw_dir) / n).read_bytes()), [faces[n]]) for n in names])
        vectors.update(zip(names, descriptor.describe_chips(chips)))
        if progress:
            progress(len(names))
    write_rows(cache, files, vectors=np.stack([vectors[f] for f in files]), boxes=boxes, landmarks=landmarks)
    return vectors


def pair_cosines(embeddings: dict[str, np.ndarray], pairs: list[Pair]) -> np.ndarray:
    left = np.stack([embeddings[p.left] for p in pairs]).astype(np.float64)
    right = np.stack([embeddings[p.right] for p in pairs]).astype(np.float64)
    return np.einsum("ij,ij->i", left, right)


def single_score(scores: np.ndarray):
    """``cross_validate``'s ``fit`` for a score used as it is: nothing learned but the threshold."""
    return lambda train: (None, lambda mask: scores[mask])


def summary_row(label: str, run: CrossValidated, same: np.ndarray) -> dict:
    """A row of the comparison: accuracy over the held-out folds (mean, std), errors, and TAR at FAR
    0.1% and 1% over the pooled held-out scores."""
    return {
        "label": label,
        "accuracy_mean": run.accuracy_mean,
        "accuracy_std": run.accuracy_std,
        "errors": int((~run.correct).sum()),
        "tar_far_0.001": tar_at_far(run.scores, same, 0.001)[1],
        "tar_far_0.01": tar_at_far(run.scores, same, 0.01)[1],
    }


def _chosen_alignment(dlib_scores: dict[str, np.ndarray], same: np.ndarray, train: np.ndarray) -> str:
    """The alignment whose dlib scores alone are more accurate on the training folds."""
    return max(dlib_scores, key=lambda name: (best_threshold(dlib_scores[name][train], same[train])[1], name))


def _weighted_sum(facenet: np.ndarray, dlib_scores: dict[str, np.ndarray], same: np.ndarray):
    def fit(train):
        alignment = _chosen_alignment(dlib_scores, same, train)
        dlib = dlib_scores[alignment]
        model = ScoreFusion.fit(facenet[train], dlib[train], same[train])
        return (alignment, model), lambda mask: model.score(facenet[mask], dlib[mask])

    return fit


def _meta_learner(facenet: np.ndarray, dlib_scores: dict[str, np.ndarray], same: np.ndarray):
    """Logistic regression on the two cosines (the predecessor's stacking, on scores)."""
    from sklearn.linear_model import LogisticRegression

    def fit(train):
        alignment = _chosen_alignment(dlib_scores, same, train)
        features = np.stack([facenet, dlib_scores[alignment]], axis=1)
        model = LogisticRegression(C=1e4).fit(features[train], same[train])
        return (alignment, model), lambda mask: model.decision_function(features[mask])

    return fit


def evaluate(
    facenet_plain: dict[str, np.ndarray],
    facenet_mirrored: dict[str, np.ndarray],
    dlib: dict[str, dict[str, np.ndarray]],
    pairs: list[Pair],
) -> dict:
    """Every row of the comparison, cross-validated on the same folds.

    ``dlib`` maps an alignment name to its descriptors. Returns {"rows": [...], "concatenation":
    {...}, "correlation": {...}}; each row has accuracy mean/std, TAR at FAR 0.1% and 1% over the
    pooled held-out scores, errors, and McNemar against FaceNet with the same flip setting.
    """
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    names = list(facenet_plain)
    flipped = flipped_embeddings(facenet_plain, facenet_mirrored)
    facenet = {"no flip": pair_cosines(facenet_plain, pairs), "flip": pair_cosines(flipped, pairs)}
    dlib_scores = {alignment: pair_cosines(vectors, pairs) for alignment, vectors in dlib.items()}

    runs: list[tuple[str, str, CrossValidated]] = []
    for flip, scores in facenet.items():
        runs.append((f"FaceNet ({flip})", flip, cross_validate(single_score(scores), same, folds)))
    for alignment, scores in dlib_scores.items():
        runs.append((f"dlib ({alignment} alignment)", "", cross_validate(single_score(scores), same, folds)))
    for flip, scores in facenet.items():
        runs.append(
            (
                f"fused: z-weighted sum, FaceNet {flip}",
                flip,
                cross_validate(_weighted_sum(scores, dlib_scores, same), same, folds),
            )
        )
        runs.append(
            (
                f"fused: logistic regression, FaceNet {flip}",
                flip,
                cross_validate(_meta_learner(scores, dlib_scores, same), same, folds),
            )
        )

    baselines = {flip: run for label, flip, run in runs if label == f"FaceNet ({flip})"}
    rows = []
    for label, flip, run in runs:
        row = summary_row(label, run, same)
        if run.models and isinstance(run.models[0], tuple):
            row["alignments"] = [alignment for alignment, _ in run.models]
            if isinstance(run.models[0][1], ScoreFusion):
                row["weights"] = [m.weight for _, m in run.models]
                row["cosine_weights"] = [m.cosine_weight for _, m in run.models]
        if flip and not label.startswith("FaceNet"):
            fixed, broken, p = mcnemar(run.correct, baselines[flip].correct)
            row["mcnemar"] = {"fixed": fixed, "broken": broken, "p": p}
        rows.append(row)

    # The fused template: one 256-d vector per face whose inner product gives the same decisions.
    check = {}
    for flip, embeddings in (("no flip", facenet_plain), ("flip", flipped)):
        run = next(r for label, f, r in runs if f == flip and label.startswith("fused: z-weighted"))
        alignment, model = run.models[0]  # fold 0's model
        fused = {
            n: v
            for n, v in zip(
                names,
                fuse_templates(
                    np.stack([embeddings[n] for n in names]), np.stack([dlib[alignment][n] for n in names]), model.cosine_weight
                ),
            )
        }
        inner = pair_cosines(fused, pairs)
        weighted = model.cosine_weight * facenet[flip] + (1 - model.cosine_weight) * dlib_scores[alignment]
        z = model.score(facenet[flip], dlib_scores[alignment])
        threshold = best_threshold(z[folds != 0], same[folds != 0])[0]
        check[flip] = {
            "cosine_weight": model.cosine_weight,
            "max_abs_inner_minus_weighted_sum": float(np.max(np.abs(inner - weighted))),
            "decisions_differing": int(np.sum((z >= threshold) != (inner >= model.cosine_threshold(threshold) - 1e-6))),
        }

    # how each alignment of dlib's descriptor does on the training folds (what chooses it)
    alignment_choice = {
        alignment: {
            "train_accuracy_mean": float(
                np.mean([best_threshold(scores[folds != k], same[folds != k])[1] for k in np.unique(folds)])
            )
        }
        for alignment, scores in dlib_scores.items()
    }

    correlation = {}
    base = facenet["no flip"]
    for alignment, scores in dlib_scores.items():
        correlation[alignment] = {
            "genuine": float(np.corrcoef(base[same], scores[same])[0, 1]),
            "impostor": float(np.corrcoef(base[~same], scores[~same])[0, 1]),
        }
    return {"rows": rows, "concatenation": check, "correlation": correlation, "alignment_choice": alignment_choice}


def per_face_cost(
    pipeline: FacePipeline,
    descriptors: list[DlibDescriptor],
    lfw_dir: Path,
    faces: dict[str, DetectedFace],
    n_faces: int = 64,
    repeats: int = 5,
) -> dict[str, float]:
    """Median ms per face (over ``repeats`` runs, ``n_faces`` faces in one batch) of FaceNet (crop +
    embedding, without and with flip) and of each dlib descriptor (chip + descriptor), in one process."""
    names = sorted(faces)[:n_faces]
    images = {n: decode_image((Path(lfw_dir) / n).read_bytes()) for n in names}
    cfg = pipeline.config

    def facenet(flip: bool):
        crops = np.stack([align_face(images[n], faces[n], method=cfg.align_method, margin=cfg.align_margin) for n in names])
        pipeline.embedder.embed(crops, flip=flip)

    def dlib_run(descriptor):
        descriptor.describe_chips(np.concatenate([descriptor.chips(images[n], [faces[n]]) for n in names]))

    jobs = {"facenet": lambda: facenet(False), "facenet flip": lambda: facenet(True)}
    jobs.update({d.name: (lambda d=d: dlib_run(d)) for d in descriptors})
    return median_ms_per_item(jobs, repeats, len(names))


def median_ms_per_item(jobs: dict, repeats: int, items: int) -> dict[str, float]:
    """Each job (a callable doing ``items`` faces' work) warmed up once, then run ``repeats`` times,
    interleaved so that load changes hit every job alike: {name: median ms per item}."""
    for job in jobs.values():  # warm-up
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            started = time.perf_counter()
            job()
            times[name].append(1000 * (time.perf_counter() - started) / items)
    return {name: statistics.median(values) for name, values in times.items()}


def fit_served_fusion(
    facenet_plain: dict[str, np.ndarray],
    facenet_mirrored: dict[str, np.ndarray],
    dlib: dict[str, np.ndarray],
    pairs: list[Pair],
) -> dict:
    """The fusion the product serves, fitted once on ``pairs`` (LFW's training folds): the z-weighted
    sum's weight (``ScoreFusion.fit``) as a cosine weight v for ``fuse_templates``, and on the fused
    templates' inner products the best-accuracy threshold without flip (gallery embeddings) and
    with FaceNet's flip (the verify endpoint), beside FaceNet's own on the same pairs.

    Returns {"z_weight", "cosine_weight", "z_stats", "pairs", "folds"} and, for each score
    ("facenet", "facenet_flip", "dlib", "fused", "fused_flip"), its best threshold, accuracy and TAR
    at FAR 0.1%."""
    same = np.array([p.same for p in pairs])
    facenet = pair_cosines(facenet_plain, pairs)
    facenet_flip = pair_cosines(flipped_embeddings(facenet_plain, facenet_mirrored), pairs)
    dlib_cos = pair_cosines(dlib, pairs)
    fusion = ScoreFusion.fit(facenet, dlib_cos, same)
    v = fusion.cosine_weight
    fused = v * facenet + (1.0 - v) * dlib_cos
    fused_flip = v * facenet_flip + (1.0 - v) * dlib_cos
    out = {
        "z_weight": fusion.weight,
        "cosine_weight": v,
        "z_stats": {
            "facenet_mean": fusion.facenet_mean,
            "facenet_std": fusion.facenet_std,
            "dlib_mean": fusion.dlib_mean,
            "dlib_std": fusion.dlib_std,
        },
        "pairs": len(pairs),
        "folds": sorted({p.fold + 1 for p in pairs}),
    }
    for label, scores in (
        ("facenet", facenet),
        ("facenet_flip", facenet_flip),
        ("dlib", dlib_cos),
        ("fused", fused),
        ("fused_flip", fused_flip),
    ):
        threshold, accuracy = best_threshold(scores, same)
        out[label] = {
            "best_threshold": round(threshold, 4),
            "accuracy": round(accuracy, 5),
            "tar_far_0.001": round(tar_at_far(scores, same, 0.001)[1], 5),
        }
    return out


def fused_people_embeddings(
    fused_pipeline: FacePipeline, lfw_dir: Path, files: list[str], cache_dir: Path | None, images: str = "images_deepfunneled"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``lfw_run.embed_lfw_people`` for the fused pipeline, from its two halves cached apart
    (FaceNet's embeddings under FaceNet's own configuration, dlib's descriptors per detection), so
    a new cosine weight costs a concatenation, not a second pass over the images."""
    from .lfw_run import embed_lfw_people
    from .pipeline import facenet_config, shared_pipeline

    facenet_pipe = shared_pipeline(facenet_config(fused_pipeline.config))
    people, labels, facenet = embed_lfw_people(facenet_pipe, lfw_dir, cache_dir, images=images, files=files)
    faces, _ = detect_lfw_faces(facenet_pipe, lfw_dir, [f"{images}/{f}" for f in files], cache_dir)
    dlib = describe_lfw_images(fused_pipeline.fused.descriptor, lfw_dir, faces, cache_dir)
    descriptors = np.stack([dlib[f"{images}/{f}"] for f in files])
    return people, labels, fuse_templates(facenet, descriptors, fused_pipeline.fused.cosine_weight)
