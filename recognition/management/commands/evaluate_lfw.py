"""LFW 10-fold verification accuracy of the production pipeline.

    python manage.py evaluate_lfw ../shared/datasets/lfw [--pairs-per-fold 50] [--cache-dir var/cache]

Uses the same detector, alignment and embedder settings as the running service.
"""

import json
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from recognition import services
from recognition.engine.lfw import ten_fold_accuracy
from recognition.engine.lfw_run import embed_lfw_images, flipped_embeddings
from recognition.management.lfw import lfw_pairs


class Command(BaseCommand):
    help = "Print the LFW 10-fold verification accuracy of the production pipeline."

    def add_arguments(self, parser):
        parser.add_argument("lfw_dir", type=Path)
        parser.add_argument(
            "--pairs-per-fold",
            type=int,
            default=None,
            help="Use the first N same and N different pairs of each fold (quick run).",
        )
        parser.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="Where embeddings are cached (default: var/cache, outside version control).",
        )
        parser.add_argument("--no-cache", action="store_true", help="Recompute embeddings even if cached.")
        parser.add_argument(
            "--json", dest="json_path", type=Path, default=None, help="Also write the result as JSON to this file."
        )

    def handle(self, lfw_dir: Path, pairs_per_fold=None, cache_dir=None, no_cache=False, json_path=None, **options):
        pairs = lfw_pairs(lfw_dir, per_fold=pairs_per_fold, min_folds=2)
        pipeline = services.pipeline()
        n_images = len({p.left for p in pairs} | {p.right for p in pairs})
        self.stdout.write(f"{len(pairs)} pairs, {n_images} images; pipeline {pipeline.detector.name} + {pipeline.embedder_name}")

        started = time.perf_counter()
        with tqdm(total=n_images, unit="img", desc="Embedding LFW") as bar:
            plain, mirrored, misses = embed_lfw_images(
                pipeline,
                lfw_dir,
                pairs,
                cache_dir=None if no_cache else cache_dir or Path(settings.BASE_DIR) / "var" / "cache",
                progress=bar.update,
            )
        elapsed = time.perf_counter() - started

        same = np.array([p.same for p in pairs])
        folds = np.array([p.fold for p in pairs])
        flipped = flipped_embeddings(plain, mirrored)
        # The verify endpoint compares two fresh faces, with flip TTA when FACE_VERIFY_FLIP_TTA is on;
        # recognition compares a face with gallery embeddings, which are made without it.
        verify_flip = settings.FACE_VERIFY_FLIP_TTA
        runs = {"verify": flipped if verify_flip else plain, "no_flip": plain, "flip": flipped}
        results = {}
        for label, embeddings in runs.items():
            similarities = np.array([float(embeddings[p.left] @ embeddings[p.right]) for p in pairs])
            results[label] = (ten_fold_accuracy(similarities, same, folds), similarities)

        self.stdout.write("")
        for label, title in (("no_flip", "without flip TTA (recognition: gallery embeddings)"), ("flip", "with flip TTA")):
            result = results[label][0]
            used = " <- the verify endpoint" if runs[label] is runs["verify"] else ""
            self.stdout.write(
                f"LFW 10-fold accuracy {title}: {100 * result.accuracy_mean:.2f}% +- {100 * result.accuracy_std:.2f}%{used}"
            )
        result, similarities = results["verify"]
        self.stdout.write(
            self.style.SUCCESS(
                f"LFW 10-fold accuracy (verify endpoint): {100 * result.accuracy_mean:.2f}% +- {100 * result.accuracy_std:.2f}%"
            )
        )
        self.stdout.write(f"AUC {result.auc:.5f}; best-accuracy threshold (mean of folds) {result.threshold_mean:.3f}")
        for far, threshold in result.far_thresholds.items():
            tar = float(np.mean(similarities[same] >= threshold))
            self.stdout.write(f"threshold for FAR <= {float(far):.1%} on impostor pairs: {threshold:.3f} (TAR {tar:.2%})")
        self.stdout.write(f"detector missed {misses} of {n_images} images (centre crop used); {elapsed:.0f} s")
        if json_path:
            payload = {
                **result.as_dict(),
                "pairs": len(pairs),
                "images": n_images,
                "misses": misses,
                "embedder": pipeline.embedder_name,
                "verify_flip": verify_flip,
                "no_flip": results["no_flip"][0].as_dict(),
                "flip": results["flip"][0].as_dict(),
            }
            json_path.write_text(json.dumps(payload, indent=2))
