"""Per-face cost of the served embedders: FaceNet alone vs FaceNet fused with dlib (issue 15).

    .venv/bin/python -m bench.fused_cost --lfw ../shared/datasets/lfw [--faces 64] [--repeats 5]
        [--dlib-runtimes dlib tflite] [--facenet-runtime keras|tflite]

The same detected faces (LFW images, not timed: detection is the same for both embedders) go
through ``FacePipeline.embed_faces``: FaceNet's crop and network, or FaceNet's crop, dlib's chip
and both networks fused, with dlib in the request thread and FaceNet in a helper thread
(``parallel``) or one after the other; dlib's network on each of ``--dlib-runtimes`` (dlib-bin, or
the same network in TensorFlow / TFLite: ``FACE_DLIB_RUNTIME``). In one batch of ``--faces`` faces,
and one face per call (what a recognize request with one face pays). Medians of ``--repeats``
interleaved runs, so load changes on a shared machine hit every row alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dlib-runtimes", nargs="+", default=["dlib", "tflite"], choices=["dlib", "tf", "tflite"])
    parser.add_argument("--facenet-runtime", default="keras", choices=["keras", "tflite"])
    args = parser.parse_args()

    from recognition.engine.images import decode_image
    from recognition.engine.pipeline import FacePipeline, PipelineConfig, shared_pipeline

    cache = Path(__file__).resolve().parent.parent / "var" / "cache"
    base = PipelineConfig(embed_runtime=args.facenet_runtime, embed_cache_dir=cache)
    plain = shared_pipeline(base)
    fused = {
        runtime: FacePipeline(
            replace(base, embedder="facenet+dlib", fusion_weight=0.2, dlib_runtime=runtime),
            detector=plain.detector,
            embedder=plain.embedder,
        )
        for runtime in args.dlib_runtimes
    }
    root = args.lfw / "images_deepfunneled"
    files = sorted(p for d in sorted(root.iterdir())[:400] for p in sorted(d.glob("*.jpg"))[:1])
    images, faces = [], []
    for path in files:
        rgb = decode_image(path.read_bytes())
        found = plain.detect(rgb)
        if found:
            images.append(rgb)
            faces.append(found[0])
        if len(faces) == args.faces:
            break

    def batch(pipe, parallel=True):
        if pipe.fused is not None:
            pipe.fused_parallel = parallel
        pipe.embed_faces(images, faces, flip=False)

    def single(pipe, parallel=True):
        if pipe.fused is not None:
            pipe.fused_parallel = parallel
        for rgb, face in zip(images, faces):
            pipe.embed_faces([rgb], [face], flip=False)

    jobs = {"FaceNet, batch": lambda: batch(plain)}
    for runtime, pipe in fused.items():
        jobs[f"fused, dlib on {runtime} (parallel), batch"] = lambda pipe=pipe: batch(pipe, True)
        jobs[f"fused, dlib on {runtime} (sequential), batch"] = lambda pipe=pipe: batch(pipe, False)
    jobs["FaceNet, one face per call"] = lambda: single(plain)
    for runtime, pipe in fused.items():
        jobs[f"fused, dlib on {runtime} (parallel), one face per call"] = lambda pipe=pipe: single(pipe, True)
        jobs[f"fused, dlib on {runtime} (sequential), one face per call"] = lambda pipe=pipe: single(pipe, False)
    for job in jobs.values():
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            started = time.perf_counter()
            job()
            times[name].append(1000 * (time.perf_counter() - started) / len(faces))
    medians = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"{len(faces)} LFW faces, FaceNet on {args.facenet_runtime}, median of {args.repeats} interleaved runs; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| embedding (crop/chip + network) | ms per face | vs FaceNet alone, same mode |")
    print("|---|---|---|")
    for name, ms in medians.items():
        base = medians["FaceNet, batch" if "batch" in name else "FaceNet, one face per call"]
        print(f"| {name} | {ms:.1f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
