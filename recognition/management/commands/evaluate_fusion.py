"""LFW 10-fold accuracy of FaceNet, dlib's descriptor, and their learned fusion (issue 15, step 1).

    python manage.py evaluate_fusion ../shared/datasets/lfw [--alignments landmarks predictor]
        [--pairs-per-fold 50] [--cache-dir var/cache] [--json out.json] [--dlib-runtime tflite]
        [--variants chip flip jitter10 flip+jitter10] [--criteria accuracy logloss tar separation]
        [--facenet-margins 0.1] [--cost-facenet-runtimes keras tflite]

FaceNet runs as the production pipeline is configured (detector, alignment); dlib's descriptor is
made from the same detections. Nothing here is served: the fusion is measured, not wired in.

``--variants`` adds what each improvement gives (issue 15), beside the rows above and on the same
folds: dlib's descriptor (landmark alignment, the served one) averaged over views of the chip
("flip": the chip and its mirror image; "jitterN": dlib's ``num_jitters=N``, N random jitters;
"flip+jitterN": all of them), FaceNet with other crop margins (``--facenet-margins``), each fused
with every weight-selection criterion of ``--criteria``; and the per-face cost of each.
"""

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from recognition import services
from recognition.engine.detection import DetectedFace
from recognition.engine.dlib_descriptor import ALIGNMENTS, RUNTIMES, ChipViews, DlibDescriptor
from recognition.engine.fusion import CRITERIA
from recognition.engine.lfw import Pair
from recognition.engine.lfw_fusion import describe_lfw_images, detect_lfw_faces, evaluate, per_face_cost
from recognition.engine.lfw_fusion_variants import (
    describe_lfw_views,
    embed_lfw_crops,
    evaluate_variants,
    variant_cost,
    variant_descriptors,
)
from recognition.engine.lfw_run import embed_lfw_images
from recognition.engine.pipeline import FacePipeline
from recognition.management.lfw import lfw_pairs


@dataclass(frozen=True)
class Measured:
    """The pairs' images as measured once for every row: detections, FaceNet embeddings (as they are
    and mirrored) and dlib's descriptors per alignment ({alignment: {image: descriptor}})."""

    pipeline: FacePipeline
    lfw_dir: Path
    cache_dir: Path
    pairs: list[Pair]
    faces: dict[str, DetectedFace]
    plain: dict[str, np.ndarray]
    mirrored: dict[str, np.ndarray]
    descriptors: list[DlibDescriptor]
    dlib: dict[str, dict[str, np.ndarray]]


class Command(BaseCommand):
    help = "Print LFW 10-fold accuracy of FaceNet, dlib's descriptor and their fusion learned on the training folds."

    def add_arguments(self, parser):
        parser.add_argument("lfw_dir", type=Path)
        parser.add_argument("--alignments", nargs="+", choices=ALIGNMENTS, default=["landmarks", "predictor"])
        parser.add_argument(
            "--pairs-per-fold", type=int, default=None, help="Use the first N same and N different pairs of each fold."
        )
        parser.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="Where embeddings and detections are cached (default: var/cache, outside version control).",
        )
        parser.add_argument("--timing-faces", type=int, default=64, help="Faces per batch in the per-face cost measurement.")
        parser.add_argument("--json", dest="json_path", type=Path, default=None)
        parser.add_argument(
            "--dlib-runtime",
            choices=RUNTIMES,
            default=None,
            help="Where dlib's network runs (default FACE_DLIB_RUNTIME; the same descriptors, one cache).",
        )
        parser.add_argument(
            "--variants",
            nargs="+",
            type=ChipViews.parse,
            default=[],
            help="dlib views to evaluate (landmark alignment): chip, flip, jitterN, flip+jitterN.",
        )
        parser.add_argument("--criteria", nargs="+", choices=CRITERIA, default=["accuracy"], help="Fusion weight selection.")
        parser.add_argument("--facenet-margins", nargs="+", type=float, default=[], help="Other FaceNet crop margins.")
        parser.add_argument(
            "--cost-facenet-runtimes",
            nargs="+",
            choices=["keras", "tflite"],
            default=None,
            help="FaceNet runtimes timed beside the dlib variants (default: the configured one).",
        )

    def handle(
        self,
        lfw_dir: Path,
        alignments,
        pairs_per_fold=None,
        cache_dir=None,
        timing_faces=64,
        json_path=None,
        dlib_runtime=None,
        variants=(),
        criteria=("accuracy",),
        facenet_margins=(),
        cost_facenet_runtimes=None,
        **options,
    ):
        pairs = lfw_pairs(lfw_dir, per_fold=pairs_per_fold, min_folds=2)
        cache_dir = cache_dir or Path(settings.BASE_DIR) / "var" / "cache"
        files = sorted({p.left for p in pairs} | {p.right for p in pairs})
        pipeline = services.pipeline()
        self.stdout.write(f"{len(pairs)} pairs, {len(files)} images; {pipeline.detector.name} + {pipeline.embedder_name}")

        started = time.perf_counter()
        with tqdm(total=len(files), unit="img", desc="Detections") as bar:
            faces, misses = detect_lfw_faces(pipeline, lfw_dir, files, cache_dir, progress=bar.update)
        with tqdm(total=len(files), unit="img", desc="FaceNet") as bar:
            plain, mirrored, misses = embed_lfw_images(
                pipeline, lfw_dir, pairs, cache_dir=cache_dir, progress=bar.update, faces=(faces, misses)
            )
        dlib_runtime = dlib_runtime or settings.FACE_DLIB_RUNTIME
        # the TFLite runtime's converted network is kept where the served one's is, not per --cache-dir
        descriptors = [
            DlibDescriptor(alignment, runtime=dlib_runtime, cache_dir=settings.TRAINING_CACHE_DIR) for alignment in alignments
        ]
        dlib = {}
        for descriptor in descriptors:
            with tqdm(total=len(files), unit="img", desc=descriptor.name) as bar:
                dlib[descriptor.alignment] = describe_lfw_images(descriptor, lfw_dir, faces, cache_dir, progress=bar.update)
        if variants:
            measured = Measured(pipeline, lfw_dir, cache_dir, pairs, faces, plain, mirrored, descriptors, dlib)
            variant_rows, variant_costs = self.variants(measured, variants, criteria, facenet_margins, dlib_runtime)
        embedding_seconds = time.perf_counter() - started

        result = evaluate(plain, mirrored, dlib, pairs)
        cost = per_face_cost(pipeline, descriptors, lfw_dir, faces, n_faces=timing_faces)
        result.update(pairs=len(pairs), images=len(files), misses=misses, per_face_ms=cost, embedding_seconds=embedding_seconds)
        if variants:
            result["variants"] = variant_rows
            result["variant_per_face_ms"] = variant_costs(timing_faces, cost_facenet_runtimes)

        self.stdout.write("")
        self.stdout.write("| method | accuracy (10-fold) | errors | TAR @ FAR 0.1% | TAR @ FAR 1% | vs FaceNet (McNemar) |")
        self.stdout.write("|---|---|---|---|---|---|")
        for row in result["rows"]:
            versus = ""
            if "mcnemar" in row:
                m = row["mcnemar"]
                versus = f"{m['fixed']} fixed / {m['broken']} broken, p = {m['p']:.3g}"
            self.stdout.write(
                f"| {row['label']} | {100 * row['accuracy_mean']:.2f}% ± {100 * row['accuracy_std']:.2f} | {row['errors']} | "
                f"{100 * row['tar_far_0.001']:.2f}% | {100 * row['tar_far_0.01']:.2f}% | {versus} |"
            )
        self.stdout.write("")
        for row in result["rows"]:
            if "weights" in row:
                chosen = {a: row["alignments"].count(a) for a in sorted(set(row["alignments"]))}
                self.stdout.write(
                    f"{row['label']}: z-weight on FaceNet per fold {row['weights']} "
                    f"(cosine weight {min(row['cosine_weights']):.3f}-{max(row['cosine_weights']):.3f}); alignment chosen {chosen}"
                )
        for alignment, choice in result["alignment_choice"].items():
            self.stdout.write(
                f"dlib ({alignment}) alone, best accuracy on the 9 training folds, mean of the 10 splits: "
                f"{100 * choice['train_accuracy_mean']:.3f}%"
            )
        for flip, check in result["concatenation"].items():
            self.stdout.write(
                f"fused template (FaceNet {flip}, fold 0's weight v = {check['cosine_weight']:.4f}): "
                f"max |<t1, t2> - (v cos_facenet + (1-v) cos_dlib)| = {check['max_abs_inner_minus_weighted_sum']:.2e}, "
                f"decisions differing from the z-score sum: {check['decisions_differing']} of {len(pairs)}"
            )
        for alignment, corr in result["correlation"].items():
            self.stdout.write(
                f"score correlation FaceNet (no flip) vs dlib ({alignment}): genuine {corr['genuine']:.2f}, impostor {corr['impostor']:.2f}"
            )
        facenet_ms = cost["facenet"]
        self.stdout.write(f"per-face cost, median of 5 runs of {timing_faces} faces in one batch (crop/chip + network):")
        for name, ms in cost.items():
            self.stdout.write(f"  {name}: {ms:.1f} ms/face ({ms / facenet_ms:.2f}x FaceNet)")
        self.stdout.write(
            f"detector missed {misses} of {len(files)} images (centre face used); embeddings {embedding_seconds:.0f} s"
        )
        if variants:
            self.print_variants(result["variants"], result["variant_per_face_ms"], timing_faces)
        if json_path:
            json_path.write_text(json.dumps(result, indent=2))

    def variants(
        self, measured: Measured, variants: list[ChipViews], criteria: list[str], margins: list[float], dlib_runtime: str
    ):
        """The variants' rows (``evaluate_variants``) and a function timing them."""
        m = measured
        # the served alignment (MTCNN's landmarks): the one loaded above, or its own
        descriptor = next((d for d in m.descriptors if d.alignment == "landmarks"), None) or DlibDescriptor(
            "landmarks", runtime=dlib_runtime, cache_dir=settings.TRAINING_CACHE_DIR
        )
        jitters = max(v.jitters for v in variants)
        with tqdm(total=len(m.faces), unit="img", desc=f"dlib views (mirror, {jitters} jitters)") as bar:
            views = describe_lfw_views(
                descriptor, m.lfw_dir, m.faces, jitters, m.cache_dir, progress=bar.update, plain=m.dlib.get("landmarks")
            )
        by_variant = {v.spec: variant_descriptors(views, v) for v in variants}
        crop = f"box{m.pipeline.config.align_margin:g}"
        facenet = {crop: (m.plain, m.mirrored)}
        for margin in margins:
            with tqdm(total=len(m.faces), unit="img", desc=f"FaceNet box{margin:g}") as bar:
                facenet[f"box{margin:g}"] = embed_lfw_crops(
                    m.pipeline, m.lfw_dir, m.faces, margin, m.cache_dir, progress=bar.update
                )
        rows = evaluate_variants(facenet, by_variant, m.pairs, criteria=list(criteria), baseline=(crop, "chip"))

        def cost(n_faces, runtimes):
            from recognition.engine.pipeline import make_embedder

            embedders = {}
            for runtime in runtimes or [m.pipeline.config.embed_runtime]:
                embedders[f"facenet ({runtime})"] = (
                    m.pipeline.embedder
                    if runtime == m.pipeline.config.embed_runtime
                    else make_embedder(replace(m.pipeline.config, embed_runtime=runtime))
                )
            return variant_cost(
                m.pipeline, descriptor, list(variants), m.lfw_dir, m.faces, n_faces=n_faces, facenet_runtimes=embedders
            )

        return rows, cost

    def print_variants(self, rows, cost, timing_faces):
        def versus(m):
            return f"{m['fixed']} fixed / {m['broken']} broken, p = {m['p']:.3g}" if m else ""

        self.stdout.write("")
        self.stdout.write("What each improvement gave (same folds):")
        self.stdout.write(
            "| method | accuracy (10-fold) | errors | TAR @ FAR 0.1% | TAR @ FAR 1% | vs FaceNet, same crop and flip | vs fused today, same flip | z-weights |"
        )
        self.stdout.write("|---|---|---|---|---|---|---|---|")
        for row in rows:
            weights = f"{min(row['weights']):.3f}-{max(row['weights']):.3f}" if "weights" in row else ""
            self.stdout.write(
                f"| {row['label']} | {100 * row['accuracy_mean']:.2f}% ± {100 * row['accuracy_std']:.2f} | {row['errors']} | "
                f"{100 * row['tar_far_0.001']:.2f}% | {100 * row['tar_far_0.01']:.2f}% | {versus(row.get('vs_facenet'))} | "
                f"{versus(row.get('vs_fused_today'))} | {weights} |"
            )
        for row in rows:
            if "chosen" in row:
                self.stdout.write(f"{row['label']}: per fold {row['chosen']}")
        self.stdout.write(f"per-face cost, median of 5 interleaved runs of {timing_faces} faces in one batch:")
        facenets = {name: ms for name, ms in cost.items() if name.startswith("facenet") and not name.endswith("flip")}
        # the yardstick: FaceNet alone as served today (the keras runtime, when timed)
        yardstick = "facenet (keras)" if "facenet (keras)" in facenets else next(iter(facenets))
        today = facenets[yardstick]
        for name, ms in cost.items():
            self.stdout.write(f"  {name}: {ms:.1f} ms/face ({ms / today:.2f}x {yardstick})")
        for name, ms in cost.items():
            if name.startswith("dlib"):
                for label, f in facenets.items():
                    self.stdout.write(
                        f"  fused = {label} + {name}: {f + ms:.1f} ms/face = {(f + ms) / today:.2f}x {yardstick}, "
                        f"{(f + ms) / f:.2f}x {label}"
                    )
