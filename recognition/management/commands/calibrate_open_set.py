"""Write the impostor score tail of LFW strangers for the served embedder (the open set's calibration
when no training run has recorded the site's own people, and beside theirs when one has).

    python manage.py calibrate_open_set ../shared/datasets/lfw [--out recognition/data/lfw_impostor_tail.json]

The people of LFW folds 1-5 (``people.txt``; a fixed-seed sample of --people, one image each) are
embedded as the served pipeline embeds a photo, every pair of them is scored, and only the upper
tail of those scores is written: no image, name or embedding. Folds 6-10 are left for the check
(``benchmark --only open-set``). Embeddings are cached under TRAINING_CACHE_DIR.
"""

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recognition import pipelines
from recognition.engine.lfw_fusion import fused_people_embeddings
from recognition.engine.lfw_run import embed_lfw_people, open_set_split
from recognition.engine.open_set import ImpostorTail, cross_person_scores
from training.open_set import lfw_tail_path


class Command(BaseCommand):
    help = "Write the impostor score tail of LFW strangers (folds 1-5) for the FACE_EMBEDDER embedder."

    def add_arguments(self, parser):
        parser.add_argument("lfw_dir", type=Path)
        parser.add_argument(
            "--out",
            type=Path,
            default=None,
            help="default: OPEN_SET_LFW_TAIL (OPEN_SET_LFW_TAIL_FUSED when FACE_EMBEDDER=facenet+dlib)",
        )
        parser.add_argument("--people", type=int, default=1500, help="people of folds 1-5 sampled (one image each)")

    def handle(self, lfw_dir: Path, out: Path | None, people: int, **options):
        if not (lfw_dir / "people.txt").exists():
            raise CommandError(f"{lfw_dir} is not the LFW folder (no people.txt)")
        out = out or lfw_tail_path(settings.FACE_EMBEDDER)
        started = time.perf_counter()
        split = open_set_split(lfw_dir, max_calibration=people)
        pipe = pipelines.pipeline(settings.FACE_EMBEDDER)  # the embedder named, served or not (a switch's target)
        with tqdm(total=len(split.calibration), desc="embedding", disable=None) as bar:
            if pipe.config.embedder == "facenet":
                _, labels, embeddings = embed_lfw_people(
                    pipe, lfw_dir, settings.TRAINING_CACHE_DIR, progress=bar.update, files=split.calibration
                )
            else:  # the fused embedder: its two halves, cached apart (a refitted weight re-uses them)
                _, labels, embeddings = fused_people_embeddings(pipe, lfw_dir, split.calibration, settings.TRAINING_CACHE_DIR)
        scores = cross_person_scores(embeddings, labels, max_faces=len(embeddings))
        tail = ImpostorTail.from_scores(scores, source=f"LFW folds 1-5: {len(embeddings)} people, {len(scores)} pairs")
        data = {
            "embedder": pipe.embedder_name,
            "protocol": (
                "LFW people.txt folds 1-5, a seed-0 sample of one image per person; every pair of different people "
                "scored (cosine). Only the upper tail of the scores is kept (no images, names or embeddings)."
            ),
            "images": len(embeddings),
            "tail": tail.as_dict(),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
        self.stdout.write(
            f"{out}: {len(scores)} impostor pairs of {len(embeddings)} people; top score {scores.max():.4f}; "
            f"p(>=0.55) = {tail.pair_far(0.55):.2e}; {time.perf_counter() - started:.0f} s"
        )
