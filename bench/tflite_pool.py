"""Memory of the fused embedder on TFLite under concurrent threads (the bounded interpreter pool).

    .venv/bin/python -m bench.tflite_pool [--threads 16] [--calls 6] [--save embeddings.npz]

The served fused embedder (``FACE_EMBEDDER=facenet+dlib``, FaceNet and dlib's network both on
TFLite: ``FACE_EMBED_RUNTIME=tflite``, ``FACE_DLIB_RUNTIME=tflite``) embeds the fixture people's
faces (detected once, not measured). After one warm-up call in the main thread, ``--threads``
threads start together and each embeds ``--calls`` faces, one per call (what a recognize request
or a check-in frame does, dlib's network in the calling thread as the fused embedder runs it); they
stay alive until the process's resident memory (VmRSS) has been read, as a server's request
threads do. Printed: RSS after the warm-up, its peak while the threads run (sampled every 20 ms),
after, and the wall time of all calls. ``--save`` writes every face's fused embedding (one face per
call and all in one batch, with and without flip) to compare two versions of the code bit for bit.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = ROOT / "tests" / "fixtures" / "faces" / "people"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--calls", type=int, default=6, help="faces each thread embeds, one per call")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "cache", help="the converted models (TRAINING_CACHE_DIR)")
    parser.add_argument("--save", type=Path, help="write the fused embeddings (.npz) to compare versions of the code")
    args = parser.parse_args()

    from recognition.engine.images import decode_image
    from recognition.engine.pipeline import FacePipeline, PipelineConfig

    # The fusion weight (here bench.fused_cost's 0.2) only weighs the two halves: it changes no memory.
    config = PipelineConfig(
        embedder="facenet+dlib", fusion_weight=0.2, embed_runtime="tflite", dlib_runtime="tflite", embed_cache_dir=args.cache
    )
    pipe = FacePipeline(config)
    images, faces = [], []
    for path in sorted(p for d in sorted(PEOPLE.iterdir()) for p in sorted(d.glob("*.jpg"))):
        rgb = decode_image(path.read_bytes())
        found = pipe.detect(rgb)
        if found:
            images.append(rgb)
            faces.append(found[0])
    pipe.embed_faces(images[:1], faces[:1])  # the warm-up call
    if args.save:
        per_face = [pipe.embed_faces([rgb], [f], flip=False)[1][0] for rgb, f in zip(images, faces)]
        np.savez(
            args.save,
            one_per_call=np.stack(per_face),
            batch=pipe.embed_faces(images, faces, flip=False)[1],
            batch_flip=pipe.embed_faces(images, faces, flip=True)[1],
        )

    before = rss_mb()
    start, done = threading.Barrier(args.threads + 1), threading.Barrier(args.threads + 1)
    errors: list[BaseException] = []

    def client(which: int) -> None:
        try:
            start.wait()
            for call in range(args.calls):
                k = (which * args.calls + call) % len(faces)
                pipe.embed_faces([images[k]], [faces[k]], flip=False)
        except BaseException as err:  # reported below: a thread's exception would otherwise be lost
            errors.append(err)
        finally:
            done.wait()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    start.wait()
    began, peak = time.perf_counter(), before
    while done.n_waiting < args.threads:
        peak = max(peak, rss_mb())
        time.sleep(0.02)
    elapsed = time.perf_counter() - began
    after = rss_mb()
    done.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    calls = args.threads * args.calls
    print(f"fused embedder (FaceNet + dlib, both TFLite), {len(faces)} fixture faces, {os.cpu_count()} cores")
    print(f"{args.threads} threads x {args.calls} calls (one face each): {calls} calls in {elapsed:.1f} s")
    print(f"RSS after warm-up {before:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB: growth {after - before:+.0f} MB")


if __name__ == "__main__":
    main()
