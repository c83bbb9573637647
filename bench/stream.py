"""One live check-in stream, frame after frame, as the /ws/identify/ consumer processes it.

Product: ``FaceStream`` (the consumer's engine: decode, detection of the whole frame every few
frames and around the followed faces in between, tracking, embedding of the faces that are due,
matching). Baseline: the naive stock pipeline on every frame (stock ``detect_faces``, every face
aligned, embedded and matched). Both get the same JPEG frames, taking turns frame by frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from . import frames as F
from .live import _fixture_gallery
from .timing import elapsed_ms


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


def run(lfw_dir: Path, n_streams: int, n_frames: int, out) -> dict:
    from mtcnn import MTCNN

    from recognition.engine.alignment import align_face
    from recognition.engine.detection import LANDMARK_NAMES, DetectedFace
    from recognition.engine.images import decode_image
    from recognition.engine.pipeline import FacePipeline, PipelineConfig
    from recognition.engine.stream import FaceStream, StreamSettings
    from recognition.engine.tracking import FaceTracker

    pipeline = FacePipeline(PipelineConfig())
    stock = MTCNN()
    gallery, matrix, labels = _fixture_gallery(pipeline)
    threshold = 0.55

    def naive(data: bytes) -> list[tuple]:
        rgb = decode_image(data)
        found = []
        for r in stock.detect_faces(rgb):
            if r["confidence"] < 0.9:
                continue
            marks = np.array([r["keypoints"][n] for n in LANDMARK_NAMES], np.float32)
            box = tuple(float(v) for v in r["box"])
            embedding = pipeline.embedder.embed(align_face(rgb, DetectedFace(box, marks, r["confidence"]))[None])[0]
            scores = matrix @ embedding
            labels[np.argsort(-scores)[:1]]
            found.append(box)
        return found

    naive_ms, product_ms, naive_hits, product_hits, embedded, full = [], [], 0, 0, 0, 0
    settings = StreamSettings()
    for s, path in enumerate(F.lfw_image_paths(lfw_dir, n_streams, seed=11)):
        stream = FaceStream(pipeline, FaceTracker(reembed_every=3), settings)
        frames = F.stream_frames(F.read_rgb(path), F.LFW_FACE_BOX, n_frames, seed=s)
        for k, frame in enumerate(frames):
            data = _jpeg(frame.rgb)
            result = {}

            def product(data=data, result=result, stream=stream):
                result["frame"] = stream.process(decode_image(data), gallery, threshold)

            def baseline(data=data, result=result):
                result["naive"] = naive(data)

            pair = [(naive_ms, baseline), (product_ms, product)]
            for times, fn in pair if k % 2 == 0 else pair[::-1]:
                times.append(elapsed_ms(fn))
            truth = frame.boxes[0]
            naive_hits += any(F.hit(b, truth) for b in result["naive"])
            product_hits += any(F.hit(t.box, truth) for t in result["frame"].tracks)
            embedded += result["frame"].embedded
            full += result["frame"].full_frame

    total = len(product_ms)
    naive_fps, product_fps = 1000 / float(np.mean(naive_ms)), 1000 / float(np.mean(product_ms))
    out(f"\n## One live stream, 640x480 JPEG frames, a face of ~140 px, gallery of {len(gallery):,} faces\n")
    out(
        f"{n_streams} streams x {n_frames} frames (a person drifting and swaying in front of the camera); "
        "frames/s = 1000 / mean ms per frame, one frame in flight.\n"
    )
    out("| pipeline | ms/frame median | ms/frame mean | frames/s | face found in frames | embeddings per frame |")
    out("|---|---|---|---|---|---|")
    out(
        f"| naive stock, every frame | {np.median(naive_ms):.1f} | {np.mean(naive_ms):.1f} | {naive_fps:.1f} | "
        f"{naive_hits}/{total} | 1.00 |"
    )
    out(
        f"| product stream (whole frame every {settings.full_every}, min face {settings.min_face_size} px; "
        f"re-embed every 3) | {np.median(product_ms):.1f} | {np.mean(product_ms):.1f} | {product_fps:.1f} | "
        f"{product_hits}/{total} | {embedded / total:.2f} |"
    )
    out(f"\nSpeed-up in frames/s: **{product_fps / naive_fps:.2f}x**; whole-frame searches: {full} of {total} frames.")
    return {
        "naive_ms_median": float(np.median(naive_ms)),
        "naive_fps": naive_fps,
        "product_ms_median": float(np.median(product_ms)),
        "product_fps": product_fps,
        "speedup": product_fps / naive_fps,
        "naive_found": naive_hits,
        "product_found": product_hits,
        "frames": total,
    }
