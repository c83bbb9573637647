"""Fit the served fusion of FaceNet and dlib's descriptor on LFW's training folds (issue 15).

    python manage.py fit_fusion ../shared/datasets/lfw [--folds 1 2 3 4 5] [--out recognition/data/fusion_facenet_dlib.json]

    python manage.py fit_fusion ../shared/datasets/lfw --thresholds   # after calibrate_open_set --embedder facenet+dlib

The pairs of ``pairs.txt`` folds 1-5 (3,000 pairs) only: their people are people.txt's folds 1-5,
the same people the LFW impostor tail is made from (``calibrate_open_set``), so every person of
folds 6-10 stays unseen by the fusion and the thresholds (``bench/open_set_api.py`` enrolls and
probes them). Writes the cosine weight and the thresholds on the fused inner product, with how
they were found; the file is what the fused embedder (``facenet+dlib``) serves with.

It always fits the fused embedder, whichever embedder is served or wanted (FACE_EMBEDDER): its
FaceNet half is FaceNet as the settings configure it (runtime, alignment), which is the same for
every embedder, and reading the fused pipeline's own config would need the very file this writes.
``--thresholds`` checks both LFW tails (OPEN_SET_LFW_TAIL, OPEN_SET_LFW_TAIL_FUSED) against the
FaceNet and the fused embedder of the calibration being completed.
"""

import json
import time
from dataclasses import replace
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recognition import pipelines
from recognition.engine.dlib_descriptor import DlibDescriptor
from recognition.engine.fused import FUSED_EMBEDDER
from recognition.engine.lfw_fusion import describe_lfw_images, detect_lfw_faces, fit_served_fusion
from recognition.engine.lfw_run import embed_lfw_images
from recognition.engine.pipeline import facenet_config
from recognition.management.lfw import lfw_pairs
from training.open_set import lfw_tail_path


class Command(BaseCommand):
    help = "Fit the fused embedder's cosine weight and thresholds on LFW pairs.txt folds 1-5."

    def add_arguments(self, parser):
        parser.add_argument("lfw_dir", type=Path)
        parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
        parser.add_argument("--out", type=Path, default=None, help="default: FACE_FUSION_CALIBRATION")
        parser.add_argument("--cache-dir", type=Path, default=None, help="default: var/cache")
        parser.add_argument(
            "--thresholds",
            action="store_true",
            help="Add the fused thresholds to the calibration, from FaceNet's and the fused LFW impostor tails "
            "(run calibrate_open_set --embedder facenet+dlib first).",
        )

    def handle(self, lfw_dir: Path, folds, out=None, cache_dir=None, thresholds=False, **options):
        if thresholds:
            return self.fit_thresholds(Path(out or settings.FACE_FUSION_CALIBRATION))
        pairs = lfw_pairs(lfw_dir, folds=folds)
        out = out or Path(settings.FACE_FUSION_CALIBRATION)
        cache_dir = cache_dir or Path(settings.BASE_DIR) / "var" / "cache"
        files = sorted({p.left for p in pairs} | {p.right for p in pairs})
        # FaceNet alone, as the fused embedder runs it (the fused pipeline's FaceNet half; see the module)
        pipe = pipelines.pipeline_for(facenet_config(pipelines.pipeline_config("facenet")))
        started = time.perf_counter()
        with tqdm(total=len(files), unit="img", desc="FaceNet", disable=None) as bar:
            plain, mirrored, misses = embed_lfw_images(pipe, lfw_dir, pairs, cache_dir=cache_dir, progress=bar.update)
        with tqdm(total=len(files), unit="img", desc="Detections", disable=None) as bar:
            faces, _ = detect_lfw_faces(pipe, lfw_dir, files, cache_dir, progress=bar.update)
        descriptor = DlibDescriptor("landmarks")
        with tqdm(total=len(files), unit="img", desc=descriptor.name, disable=None) as bar:
            dlib = describe_lfw_images(descriptor, lfw_dir, faces, cache_dir, progress=bar.update)
        fitted = fit_served_fusion(plain, mirrored, dlib, pairs)
        data = {
            # what it was fitted for (the keys "facenet", "dlib", ... hold each score's statistics)
            "embedders": {"facenet": pipe.embedder_name, "dlib": descriptor.name},
            "protocol": (
                f"LFW pairs.txt folds {folds} ({len(pairs)} pairs, {len(files)} images; their people are people.txt's "
                f"same folds), the product's detector and FaceNet crop, dlib's chip from MTCNN's landmarks; the central "
                f"face of each image (LFW's centre box for the {misses} the detector missed). z-weight: grid 0..1 step "
                "0.025, best accuracy at its own best threshold (ties: better separated); cosine weight v = the same "
                "decision rule on v*cos_facenet + (1-v)*cos_dlib. Thresholds: best accuracy on these pairs."
            ),
            **fitted,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
        self.stdout.write(json.dumps(data, indent=1))
        self.stdout.write(f"{out}: {time.perf_counter() - started:.0f} s")

    def fit_thresholds(self, path: Path) -> None:
        """FaceNet's thresholds carried to the fused score at the same per-pair false-accept rate on
        the LFW strangers of people.txt folds 1-5 (both tails: the same 1,500 images); the mislabel
        margin (a difference of scores) scaled by the ratio of the two tails' spreads."""
        from recognition.engine.open_set import ImpostorTail

        try:
            data = json.loads(path.read_text())
            facenet = json.loads(lfw_tail_path("facenet").read_text())
            fused = json.loads(lfw_tail_path(FUSED_EMBEDDER).read_text())
            weight = round(float(data["cosine_weight"]), 4)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CommandError(f"--thresholds needs the fitted calibration {path} and both LFW tails: {err}") from err
        plain = facenet_config(pipelines.pipeline_config("facenet"))
        expected = {
            "facenet": plain.embedder_name,
            "fused": replace(plain, embedder=FUSED_EMBEDDER, fusion_weight=weight).embedder_name,
        }
        for label, tail in (("facenet", facenet), ("fused", fused)):
            if tail.get("embedder") != expected[label]:
                raise CommandError(
                    f"the {label} LFW tail was made by {tail.get('embedder')}, not {expected[label]} "
                    f"(calibrate_open_set --embedder {'facenet' if label == 'facenet' else FUSED_EMBEDDER})"
                )
        f_tail, u_tail = ImpostorTail.from_dict(facenet["tail"]), ImpostorTail.from_dict(fused["tail"])
        match_p = f_tail.pair_far(float(settings.FACE_MATCH_THRESHOLD))
        verify_p = f_tail.pair_far(float(settings.FACE_VERIFY_THRESHOLD))
        data["thresholds"] = {
            "match": round(u_tail.threshold_at_pair_far(match_p), 4),
            "verify": round(u_tail.threshold_at_pair_far(verify_p), 4),
            "mislabel_margin": round(float(settings.FACE_MISLABEL_MARGIN) * u_tail.scale / f_tail.scale, 4),
            "how": (
                f"FaceNet's FACE_MATCH_THRESHOLD {settings.FACE_MATCH_THRESHOLD} (per-pair impostor rate {match_p:.2e}) and "
                f"FACE_VERIFY_THRESHOLD {settings.FACE_VERIFY_THRESHOLD} ({verify_p:.2e}) on the LFW strangers' tail "
                f"({facenet['embedder']}), each carried to the fused score with the same rate on the fused tail of the same "
                f"images ({fused['embedder']}); FACE_MISLABEL_MARGIN {settings.FACE_MISLABEL_MARGIN} times the ratio of "
                f"the tails' spreads ({u_tail.scale:.4f} / {f_tail.scale:.4f})."
            ),
        }
        path.write_text(json.dumps(data, indent=1) + "\n")
        self.stdout.write(json.dumps(data["thresholds"], indent=1))
