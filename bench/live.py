"""The per-frame live pipeline (detect + align + embed + match) and embedding throughput."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import frames as F
from .timing import Comparison, elapsed_ms, interleaved, table_header


def _fixture_gallery(pipeline, extra: int = 10_000):
    """The ten fixture people (real embeddings) plus ``extra`` synthetic faces, in the product's Gallery."""
    from recognition.engine.matching import Gallery

    from .synthetic import EmbeddingModel

    embeddings, labels = [], []
    for person_id, folder in enumerate(sorted(p for p in F.PEOPLE.iterdir() if p.is_dir()), start=1):
        for path in sorted(folder.iterdir()):
            faces = pipeline.analyse(F.read_rgb(path), max_faces=1)
            if faces:
                embeddings.append(faces[0].embedding)
                labels.append(person_id)
    real = np.stack(embeddings)
    synthetic, synthetic_people = EmbeddingModel.fit_fallback(real, np.array(labels)).sample(extra // 5, 5, seed=3)
    all_embeddings = np.concatenate([real, synthetic])
    all_labels = np.concatenate([np.array(labels), synthetic_people + 1000])
    gallery = Gallery()
    gallery.replace(all_embeddings, all_labels)
    return gallery, all_embeddings, all_labels


def run(lfw_dir: Path, n_frames: int, out) -> dict:
    from mtcnn import MTCNN

    from recognition.engine.alignment import align_face
    from recognition.engine.detection import LANDMARK_NAMES, DetectedFace
    from recognition.engine.pipeline import FacePipeline, PipelineConfig

    product = FacePipeline(PipelineConfig())
    live = FacePipeline(PipelineConfig(min_face_size=40))
    stock = MTCNN()
    gallery, matrix, labels = _fixture_gallery(product)

    def product_frame(frame, pipe=product):
        faces = pipe.analyse(frame.rgb)
        if faces:
            gallery.search(np.stack([f.embedding for f in faces]), top_k=5, threshold=0.55)
        return len(faces)

    def naive_frame(frame):
        # the obvious way with the stock package: detect, then embed and match face by face
        found = 0
        for r in stock.detect_faces(frame.rgb):
            if r["confidence"] < 0.9:
                continue
            marks = np.array([r["keypoints"][n] for n in LANDMARK_NAMES], np.float32)
            crop = align_face(frame.rgb, DetectedFace(tuple(float(v) for v in r["box"]), marks, r["confidence"]))
            embedding = product.embedder.embed(crop[None])[0]
            scores = matrix @ embedding
            labels[np.argsort(-scores)[:5]]
            found += 1
        return found

    one = F.lfw_frames(lfw_dir, n_frames, seed=5)
    three = F.group_frames(lfw_dir, max(2, n_frames // 2), faces=3)
    out(f"\n## Live pipeline per 640x480 frame (gallery of {len(gallery):,} faces)\n")
    out(table_header("naive stock pipeline", "product pipeline"))
    results = {}
    for label, frames in (("one face", one), ("three faces", three)):
        cmp = interleaved(f"{label} (min face 20)", naive_frame, product_frame, frames)
        live_ms = [elapsed_ms(lambda f=f: product_frame(f, live)) for f in frames]
        out(cmp.row())
        out(Comparison(f"{label}, product live setting (min face 40)", cmp.baseline_ms, live_ms).row())
        results[label] = {
            "naive_ms": cmp.baseline_median,
            "product_ms": cmp.product_median,
            "product_fps": 1000 / cmp.product_median,
            "live_ms": float(np.median(live_ms)),
            "live_fps": 1000 / float(np.median(live_ms)),
            "speedup": cmp.speedup,
        }
    for label, r in results.items():
        out(
            f"- {label}: product {r['product_fps']:.1f} frames/s, live setting {r['live_fps']:.1f} frames/s "
            f"(naive {1000 / r['naive_ms']:.1f} frames/s)"
        )
    return results


def run_embedding(lfw_dir: Path, n_faces: int, out) -> dict:
    from recognition.engine.embedding import FaceEmbedder

    crops = F.centre_crops(lfw_dir, n_faces)
    results = {}
    out(f"\n## Embedding throughput ({n_faces} LFW face crops, FaceNet IR-v1, 2 CPU cores)\n")
    out("| embedder | one face per call | one batch of all faces | batched speed-up |\n|---|---|---|---|")
    for flip in (True, False):
        embedder = FaceEmbedder(flip=flip, batch_across_calls=False)
        cmp = interleaved(
            embedder.name,
            lambda _, e=embedder: [e.embed(c[None]) for c in crops],
            lambda _, e=embedder: e.embed(crops),
            [None] * 4,
        )
        single_fps = n_faces / (cmp.baseline_median / 1000)
        batched_fps = n_faces / (cmp.product_median / 1000)
        out(f"| {embedder.name} | {single_fps:.1f} faces/s | {batched_fps:.1f} faces/s | {cmp.speedup:.2f}x |")
        results[embedder.name] = {"single_fps": single_fps, "batched_fps": batched_fps}

    # the same network in the TFLite interpreter (XNNPACK), as exported for edge clients
    from django.conf import settings

    from recognition.engine.facenet import WEIGHTS_SHA256
    from training.engine.export import TFLiteEmbedder, cached_embedder_tflite

    graph = FaceEmbedder(flip=False)
    lite = TFLiteEmbedder(cached_embedder_tflite(graph.model, WEIGHTS_SHA256, settings.TRAINING_CACHE_DIR, flip=False), threads=2)
    cmp = interleaved(
        f"{n_faces} faces, one per call",
        lambda _: [graph.embed(c[None]) for c in crops],
        lambda _: [lite.embed(c[None]) for c in crops],
        [None] * 4,
    )
    agreement = float(np.min(np.sum(graph.embed(crops) * np.concatenate([lite.embed(c[None]) for c in crops]), axis=1)))
    out("\n" + table_header("TensorFlow graph (product)", "TFLite interpreter, XNNPACK"))
    out(cmp.row())
    out(f"(lowest cosine between the two runtimes' embeddings of the same crop: {agreement:.5f})")
    results["tflite"] = {
        "graph_ms": cmp.baseline_median,
        "tflite_ms": cmp.product_median,
        "speedup": cmp.speedup,
        "min_cosine": agreement,
    }

    # concurrent requests, one face each: separate forward passes vs the cross-call batcher
    from concurrent.futures import ThreadPoolExecutor

    clients = 8
    plain, batching = FaceEmbedder(batch_across_calls=False), FaceEmbedder(batch_across_calls=True)

    def burst(embedder):
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda c: embedder.embed(c[None]), crops))

    cmp = interleaved(
        f"{n_faces} one-face calls from {clients} threads", lambda _: burst(plain), lambda _: burst(batching), [None] * 3
    )
    out("\n" + table_header("one forward pass per call", "batched across calls"))
    out(cmp.row())
    results["concurrent"] = {"plain_ms": cmp.baseline_median, "batched_ms": cmp.product_median, "speedup": cmp.speedup}
    return results
