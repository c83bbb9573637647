"""Detection: the product's compiled-graph MTCNN vs the stock ``mtcnn.MTCNN().detect_faces``."""

from __future__ import annotations

from pathlib import Path

from . import frames as F
from .timing import interleaved, table_header

MIN_SCORE = 0.9  # the product's FACE_MIN_DETECTION_SCORE, applied to both


def run(lfw_dir: Path | None, n_lfw: int, out) -> dict:
    from mtcnn import MTCNN

    from recognition.engine.detection import GraphMTCNNDetector

    stock = MTCNN()
    graph = {size: GraphMTCNNDetector(min_face_size=size, min_score=MIN_SCORE) for size in (20, 40)}

    def stock_boxes(frame, min_face):
        return [r["box"] for r in stock.detect_faces(frame.rgb, min_face_size=min_face) if r["confidence"] >= MIN_SCORE]

    def graph_boxes(frame, min_face):
        return [f.box for f in graph[min_face].detect(frame.rgb)]

    probe = F.probe_frames()
    lfw = F.lfw_frames(lfw_dir, n_lfw) if lfw_dir else []
    every = probe + lfw
    out(f"\n## Detection on {len(every)} 640x480 frames ({len(probe)} probes letterboxed, {len(lfw)} LFW photos on a wall)\n")
    out(table_header("stock detect_faces", "product mtcnn-graph"))
    results = {}
    for label, min_base, min_prod in (
        ("min face 20 px, both", 20, 20),
        ("min face 40 px, both", 40, 40),
        ("stock at 20 px vs product live setting 40 px", 20, 40),
    ):
        cmp = interleaved(label, lambda f, m=min_base: stock_boxes(f, m), lambda f, m=min_prod: graph_boxes(f, m), every)
        out(cmp.row())
        results[label] = {"stock_ms": cmp.baseline_median, "graph_ms": cmp.product_median, "speedup": cmp.speedup}

    out("\n| detector | min face | LFW recall | probe faces found | detections on probes |\n|---|---|---|---|---|")
    expected = sum(f.faces for f in probe)
    for name, fn in (("stock", stock_boxes), ("mtcnn-graph", graph_boxes)):
        for min_face in (20, 40):
            lfw_hits = sum(any(F.hit(b, f.boxes[0]) for b in fn(f, min_face)) for f in lfw)
            probe_counts = [len(fn(f, min_face)) for f in probe]
            found = sum(min(n, f.faces) for n, f in zip(probe_counts, probe))
            recall = lfw_hits / len(lfw) if lfw else float("nan")
            out(f"| {name} | {min_face} | {recall:.4f} ({lfw_hits}/{len(lfw)}) | {found}/{expected} | {sum(probe_counts)} |")
            results[f"recall {name} {min_face}"] = {"lfw": recall, "probe_found": found, "probe_expected": expected}
    return results
