"""Write the impostor score tail of LFW strangers for an embedder (the open set's calibration when no
training run has recorded the site's own people, and beside theirs when one has).

    python manage.py calibrate_open_set ../shared/datasets/lfw [--embedder facenet+dlib] [--out ...]

The embedder is the one served now (the database's active record, ``pipelines.served_kind()``),
or the one named by --embedder: e.g. a switch's target, calibrated before the switch is asked
for. Never FACE_EMBEDDER alone: that setting is what the site *wants*, and while a switch to it is
pending (or was blocked, or rolled back) a tail made for it would be written where the served
embedder's is expected. FaceNet of the mirrored crop has no tail of its own (it is calibrated on
FaceNet's), so it is refused.

The people of LFW folds 1-5 (``people.txt``; a fixed-seed sample of --people, one image each) are
embedded as the served pipeline embeds a photo, every pair of them is scored, and only the upper
tail of those scores is written: no image, name or embedding. Folds 6-10 are left for the check
(``benchmark --only open-set``). Embeddings are cached under TRAINING_CACHE_DIR.
"""

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recognition import pipelines
from recognition.engine.fused import FUSED_EMBEDDER
from recognition.engine.lfw_fusion import fused_people_embeddings
from recognition.engine.lfw_run import embed_lfw_people, open_set_split
from recognition.engine.open_set import ImpostorTail, cross_person_scores
from training.open_set import lfw_tail_path

# the embedders with a tail of their own (the mirrored FaceNet uses FaceNet's)
CALIBRATED = ("facenet", FUSED_EMBEDDER)


class Command(BaseCommand):
    help = "Write the impostor score tail of LFW strangers (folds 1-5) for the served embedder (or --embedder)."

    def add_arguments(self, parser):
        parser.add_argument("lfw_dir", type=Path)
        parser.add_argument(
            "--out",
            type=Path,
            default=None,
            help="default: OPEN_SET_LFW_TAIL (OPEN_SET_LFW_TAIL_FUSED for the fused embedder)",
        )
        parser.add_argument(
            "--embedder",
            choices=CALIBRATED,
            default=None,
            help="the embedder to calibrate (default: the one served now, not FACE_EMBEDDER)",
        )
        parser.add_argument("--people", type=int, default=1500, help="people of folds 1-5 sampled (one image each)")

    def handle(self, lfw_dir: Path, out: Path | None, people: int, embedder: str | None = None, **options):
        if not (lfw_dir / "people.txt").exists():
            raise CommandError(f"{lfw_dir} is not the LFW folder (no people.txt)")
        kind = embedder or pipelines.refresh_served_kind()
        if kind not in CALIBRATED:
            raise CommandError(
                f"{kind} (served now) has no LFW tail of its own: it is calibrated on FaceNet's; "
                f"name the embedder to calibrate with --embedder ({' or '.join(CALIBRATED)})."
            )
        try:
            config = pipelines.pipeline_config(kind)
        except ImproperlyConfigured as err:
            raise CommandError(str(err)) from err
        out = out or lfw_tail_path(kind)
        if out is None:
            raise CommandError(f"No LFW tail is configured for {kind} (OPEN_SET_LFW_TAIL / _FUSED is empty): give --out.")
        started = time.perf_counter()
        split = open_set_split(lfw_dir, max_calibration=people)
        pipe = pipelines.pipeline_for(config)
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
