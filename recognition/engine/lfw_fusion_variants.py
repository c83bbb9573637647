"""What each improvement of the FaceNet + dlib fusion gives on LFW (issue 15): dlib's views of a face
(mirror image, dlib's jitter), the fusion weight's selection criterion, FaceNet's crop margin.

Same protocol as ``lfw_fusion.evaluate`` (everything learned on the 9 training folds, the 10th
scored once); the extra dlib views are cached per image beside the plain descriptors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .alignment import align_face
from .detection import DetectedFace
from .dlib_descriptor import DESCRIPTOR_DIM, JITTER_SEED, MODEL_FILES, ChipViews, DlibDescriptor, chip_view, combine_views
from .fusion import CRITERIA, ScoreFusion, best_threshold, cross_validate, mcnemar
from .images import decode_image
from .lfw import Pair
from .lfw_cache import cache_file, read_rows, write_rows
from .lfw_fusion import median_ms_per_item, pair_cosines, single_score, summary_row
from .lfw_run import flipped_embeddings
from .pipeline import FacePipeline


def describe_lfw_views(
    descriptor: DlibDescriptor,
    lfw_dir: Path,
    faces: dict[str, DetectedFace],
    jitters: int,
    cache_dir: Path | None,
    seed: int = JITTER_SEED,
    progress: Callable[[int], None] | None = None,
    batch: int = 64,
    plain: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """{relative path: (2 + jitters, 128) float32 unit descriptors}: the chip, its mirror image, then
    ``jitters`` jitters of it (``dlib_descriptor.chip_view``: jitter k is the same for every face,
    as the served embedder makes it). Each view is cached apart (per descriptor, seed and detections), so asking for more
    jitters later describes only the new ones."""
    files = sorted(faces)
    boxes = np.array([faces[f].box for f in files], np.float32)
    made_by = (descriptor.name, sorted(MODEL_FILES.values()), seed)
    views = np.zeros((len(files), 2 + jitters, DESCRIPTOR_DIM), np.float32)
    todo = []
    first = 0
    if plain is not None:  # the chip's own descriptors, already made (``lfw_fusion.describe_lfw_images``)
        views[:, 0] = np.stack([plain[f] for f in files])
        first = 1
    for view in range(first, 2 + jitters):
        cache = cache_file(cache_dir, f"lfw-dlib-view{view}-{descriptor.alignment}", made_by, 8)
        stored = read_rows(cache, files, made_from={"boxes": boxes})
        if stored is not None:
            views[:, view] = stored["vectors"]
        else:
            todo.append((view, cache))
    if todo:
        wanted = [view for view, _ in todo]
        for start in range(0, len(files), batch):
            names = files[start : start + batch]
            chips = [descriptor.chips(decode_image((Path(lfw_dir) / n).read_bytes()), [faces[n]])[0] for n in names]
            stacked = np.stack([chip_view(chip, view, seed) for chip in chips for view in wanted])
            described = descriptor.describe_chips(stacked).reshape(len(names), len(wanted), -1)
            views[start : start + len(names)][:, wanted] = described
            if progress:
                progress(len(names))
        for view, cache in todo:
            write_rows(cache, files, vectors=views[:, view], boxes=boxes)
    elif progress:
        progress(len(files))
    return dict(zip(files, views))


def variant_descriptors(views: dict[str, np.ndarray], variant: ChipViews) -> dict[str, np.ndarray]:
    """The descriptors of ``variant`` from ``describe_lfw_views``' views."""
    names = list(views)
    stacked = np.stack([views[n][variant.indices] for n in names])
    return dict(zip(names, combine_views(stacked)))


def embed_lfw_crops(
    pipeline: FacePipeline,
    lfw_dir: Path,
    faces: dict[str, DetectedFace],
    margin: float,
    cache_dir: Path | None,
    progress: Callable[[int], None] | None = None,
    batch: int = 64,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """FaceNet embeddings of the given detections cropped with another ``margin`` (box + margin, as
    ``align_face``), as they are and mirrored: the same as ``lfw_run.embed_lfw_images`` with that
    margin, from cached detections instead of detecting again."""
    files = sorted(faces)
    cfg = pipeline.config
    cache = cache_file(
        cache_dir, "lfw-crop-embeddings", (cfg.facenet_name, cfg.align_method, margin, cfg.weights_path, cfg.embed_runtime)
    )
    stored = read_rows(cache, files)
    if stored is not None:
        if progress:
            progress(len(files))
        return dict(zip(files, stored["vectors"])), dict(zip(files, stored["mirrored"]))
    plain, mirrored = {}, {}
    for start in range(0, len(files), batch):
        names = files[start : start + batch]
        crops = np.stack(
            [
                align_face(decode_image((Path(lfw_dir) / n).read_bytes()), faces[n], method=cfg.align_method, margin=margin)
                for n in names
            ]
        )
        plain.update(zip(names, pipeline.embedder.embed(crops, flip=False)))
        mirrored.update(zip(names, pipeline.embedder.embed(np.ascontiguousarray(crops[:, :, ::-1]), flip=False)))
        if progress:
            progress(len(names))
    write_rows(cache, files, vectors=np.stack([plain[f] for f in files]), mirrored=np.stack([mirrored[f] for f in files]))
    return plain, mirrored


def _weighted_sum(facenet: np.ndarray, dlib: np.ndarray, same: np.ndarray, criterion: str):
    def fit(train):
        model = ScoreFusion.fit(facenet[train], dlib[train], same[train], criterion=criterion)
        return model, lambda mask: model.score(facenet[mask], dlib[mask])

    return fit


def _chosen_on_training_folds(facenet: np.ndarray, dlib_scores: dict[str, np.ndarray], same: np.ndarray, criteria: list[str]):
    """The dlib variant and weight criterion chosen on the training folds too (the fused model's
    best accuracy there, at its own threshold; ties to the first listed, i.e. fewer views), so
    that picking among the variants is itself held out."""

    def fit(train):
        best = None
        for variant, dlib in dlib_scores.items():
            for criterion in criteria:
                model = ScoreFusion.fit(facenet[train], dlib[train], same[train], criterion=criterion)
                held_in = best_threshold(model.score(facenet[train], dlib[train]), same[train])[1]
                if best is None or held_in > best[0]:
                    best = (held_in, variant, criterion, model)
        _, variant, criterion, model = best
        dlib = dlib_scores[variant]
        return (variant, criterion, model), lambda mask: model.score(facenet[mask], dlib[mask])

    return fit


def evaluate_variants(
    facenet: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
    dlib: dict[str, dict[str, np.ndarray]],
    pairs: list[Pair],
    criteria: list[str] = CRITERIA,
    baseline: tuple[str, str] = ("box0.05", "chip"),
) -> list[dict]:
    """Rows: each FaceNet crop alone (without and with flip), each dlib variant alone, and every
    FaceNet crop x flip x dlib variant x weight criterion fused by the z-weighted sum.

    ``facenet`` maps a crop label to (plain, mirrored) embeddings; ``dlib`` a variant label to its
    descriptors (landmark alignment). McNemar of each fused row against FaceNet of the same crop and
    flip, and against ``baseline`` (crop, dlib variant) fused with the "accuracy" criterion (today's
    fusion), the same flip."""
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    facenet_scores = {}
    for crop, (plain, mirrored) in facenet.items():
        flipped = flipped_embeddings(plain, mirrored)
        facenet_scores[crop] = {"no flip": pair_cosines(plain, pairs), "flip": pair_cosines(flipped, pairs)}
    dlib_scores = {label: pair_cosines(vectors, pairs) for label, vectors in dlib.items()}

    def row(label: str, run, **extra) -> dict:
        return {**summary_row(label, run, same), "correct": run.correct, **extra}

    rows, alone = [], {}
    for crop, by_flip in facenet_scores.items():
        for flip, scores in by_flip.items():
            alone[crop, flip] = run = cross_validate(single_score(scores), same, folds)
            rows.append(row(f"FaceNet {crop}, {flip}", run, kind="facenet", crop=crop, flip=flip))
    for variant, scores in dlib_scores.items():
        run = cross_validate(single_score(scores), same, folds)
        rows.append(row(f"dlib {variant}", run, kind="dlib", variant=variant))
    fused = {}
    for crop, by_flip in facenet_scores.items():
        for flip, scores in by_flip.items():
            for variant, d in dlib_scores.items():
                for criterion in criteria:
                    run = cross_validate(_weighted_sum(scores, d, same, criterion), same, folds)
                    fused[crop, flip, variant, criterion] = run
                    fixed, broken, p = mcnemar(run.correct, alone[crop, flip].correct)
                    rows.append(
                        row(
                            f"fused: FaceNet {crop} {flip} + dlib {variant}, weight by {criterion}",
                            run,
                            kind="fused",
                            crop=crop,
                            flip=flip,
                            variant=variant,
                            criterion=criterion,
                            weights=[m.weight for m in run.models],
                            cosine_weights=[m.cosine_weight for m in run.models],
                            vs_facenet={"fixed": fixed, "broken": broken, "p": p},
                        )
                    )
    for crop, by_flip in facenet_scores.items():
        for flip, scores in by_flip.items():
            run = cross_validate(_chosen_on_training_folds(scores, dlib_scores, same, list(criteria)), same, folds)
            fixed, broken, p = mcnemar(run.correct, alone[crop, flip].correct)
            rows.append(
                row(
                    f"fused: FaceNet {crop} {flip} + dlib variant and criterion chosen on the 9 training folds",
                    run,
                    kind="fused",
                    crop=crop,
                    flip=flip,
                    chosen=[f"{variant} by {criterion}" for variant, criterion, _ in run.models],
                    weights=[m.weight for _, _, m in run.models],
                    cosine_weights=[m.cosine_weight for _, _, m in run.models],
                    vs_facenet={"fixed": fixed, "broken": broken, "p": p},
                )
            )
    for r in rows:
        if r.get("kind") == "fused" and (baseline[0], r["flip"], baseline[1], "accuracy") in fused:
            base = fused[baseline[0], r["flip"], baseline[1], "accuracy"]
            fixed, broken, p = mcnemar(r["correct"], base.correct)
            r["vs_fused_today"] = {"fixed": fixed, "broken": broken, "p": p}
    for r in rows:
        r["correct"] = None
        del r["correct"]
    return rows


def variant_cost(
    pipeline: FacePipeline,
    descriptor: DlibDescriptor,
    variants: list[ChipViews],
    lfw_dir: Path,
    faces: dict[str, DetectedFace],
    n_faces: int = 64,
    repeats: int = 5,
    facenet_runtimes: dict[str, object] | None = None,
) -> dict[str, float]:
    """Median ms per face (``repeats`` interleaved runs of ``n_faces`` faces in one batch): FaceNet
    (crop + network, without and with flip; on each of ``facenet_runtimes``, {label: embedder}) and
    dlib's chip, views (mirror, jitter warps) and network for each variant."""
    names = sorted(faces)[:n_faces]
    images = {n: decode_image((Path(lfw_dir) / n).read_bytes()) for n in names}
    cfg = pipeline.config
    embedders = facenet_runtimes or {"facenet": pipeline.embedder}

    def facenet(embedder, flip: bool):
        crops = np.stack([align_face(images[n], faces[n], method=cfg.align_method, margin=cfg.align_margin) for n in names])
        embedder.embed(crops, flip=flip)

    def dlib_run(variant: ChipViews):
        descriptor.describe_views(np.concatenate([descriptor.chips(images[n], [faces[n]]) for n in names]), variant)

    jobs: dict[str, Callable[[], None]] = {}
    for label, embedder in embedders.items():
        jobs[label] = lambda e=embedder: facenet(e, False)
        jobs[f"{label} flip"] = lambda e=embedder: facenet(e, True)
    for variant in variants:
        jobs[f"dlib {variant.label}"] = lambda v=variant: dlib_run(v)
    return median_ms_per_item(jobs, repeats, len(names))
