"""The edge kiosk's per-frame cost on a fused site against a FaceNet site, side by side.

    .venv/bin/python -m bench.edge_fused_cost [--rounds 5]

The edge recognizer's pipeline (``edge.recognizer.TFLitePipeline``: MTCNN detection, then the
crops, and for the fused pair the chips, through the pair's TFLite networks) for a FaceNet pair and
a fused pair made from the machine's converted files (``var/cache``: FaceNet's and dlib's .tflite,
as a training run exports them), on the same fixture probes, interleaved (``bench.timing``).
Reported: median ms per frame (detection + embedding) and per face (the embedding alone), and the
ratio fused / FaceNet. Matching is left out: the same inner products, at 256 instead of 128 numbers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
PROBES = ("obama1.jpg", "obama_and_biden.jpg", "kit_with_rose.jpg", "two_people.jpg", "alex_lacamoire1.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "cache")
    args = parser.parse_args()

    from bench.timing import interleaved
    from edge.recognizer import TFLitePipeline
    from edge.sync import DLIB_FILE, MODEL_FILE
    from recognition.engine.images import decode_image
    from training.engine.export import fused_template

    facenet = next(args.cache_dir.glob("facenet-*.tflite"), None)
    dlib = next(args.cache_dir.glob("dlib-resnet-*.tflite"), None)
    if facenet is None or dlib is None:
        raise SystemExit(f"no converted FaceNet and dlib .tflite in {args.cache_dir}: train once with FACE_EMBEDDER=facenet+dlib")
    frames = [decode_image((ROOT / "tests" / "fixtures" / "faces" / "probes" / name).read_bytes()) for name in PROBES]
    with tempfile.TemporaryDirectory() as folder:
        pipelines = {}
        for name, template in (("facenet", None), ("fused", fused_template(0.5, "", ""))):
            pair = Path(folder) / name
            pair.mkdir()
            os.symlink(facenet, pair / MODEL_FILE)
            os.symlink(dlib, pair / DLIB_FILE)
            labels = {"alignment": {"method": "box", "margin": 0.05, "size": 160}, **({"template": template} if template else {})}
            pipelines[name] = TFLitePipeline(pair, labels)
        detections = [pipelines["facenet"].detector.detect(rgb) for rgb in frames]
        for pipeline in pipelines.values():  # warm up: interpreters allocated for every batch size
            for rgb, faces in zip(frames, detections):
                pipeline.analyse(rgb, faces)

        def frame(name):
            return lambda rgb: pipelines[name].analyse(rgb, pipelines[name].detector.detect(rgb))

        def embed(name):
            return lambda i: pipelines[name].analyse(frames[i], detections[i])

        per_frame = interleaved("frame", frame("facenet"), frame("fused"), frames, args.rounds)
        per_face = interleaved("embedding", embed("facenet"), embed("fused"), range(len(frames)), args.rounds)
    faces = sum(len(d) for d in detections) / len(frames)
    print(f"{len(frames)} probes, {faces:.1f} faces a frame on average, {args.rounds} interleaved rounds, {os.cpu_count()} cores")
    print("| per frame | FaceNet pair (median ms) | fused pair (median ms) | fused / FaceNet |\n|---|---|---|---|")
    for label, comparison in (("detection + embedding", per_frame), ("embedding of the frame's faces", per_face)):
        print(f"| {label} | {comparison.baseline_median:.1f} | {comparison.product_median:.1f} | {1 / comparison.speedup:.2f}x |")


if __name__ == "__main__":
    main()
