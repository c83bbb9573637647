"""The compiled-graph MTCNN: the same faces as the stock package, found several times faster."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bench import frames as F
from bench.timing import interleaved
from recognition.engine.detection import GraphMTCNNDetector, MTCNNDetector


@pytest.fixture(scope="module")
def detectors():
    return MTCNNDetector(), GraphMTCNNDetector()


@pytest.fixture(scope="module")
def probe_frames():
    return F.probe_frames()


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def test_graph_detector_finds_every_face_the_stock_one_finds(detectors, probe_frames):
    stock, graph = detectors
    for frame in probe_frames:
        stock_faces, graph_faces = stock.detect(frame.rgb), graph.detect(frame.rgb)
        for face in stock_faces:
            best = max((iou(face.box, g.box) for g in graph_faces), default=0.0)
            assert best >= 0.5, f"{frame.name}: stock face at {face.box_ints()} missed by the graph detector"
        assert len(graph_faces) >= min(len(stock_faces), frame.faces), frame.name


def test_graph_detector_landmarks_agree_with_stock(detectors, probe_frames):
    stock, graph = detectors
    frame = next(f for f in probe_frames if f.name == "obama1.jpg")
    (s,), (g,) = stock.detect(frame.rgb), graph.detect(frame.rgb)
    # within 2% of the face's width (the stock rounds to whole pixels and may keep another box)
    np.testing.assert_allclose(g.landmarks, s.landmarks, atol=0.02 * s.box[2])
    # greedy NMS may keep a better-scoring candidate for the same face, never a worse one
    assert g.score >= s.score - 1e-3


def test_graph_detector_is_several_times_faster_than_stock(detectors, probe_frames):
    stock, graph = detectors
    frames = [f for f in probe_frames if f.name in ("obama1.jpg", "two_people.jpg", "kit_with_rose.jpg")]
    comparison = interleaved("detect", lambda f: stock.detect(f.rgb), lambda f: graph.detect(f.rgb), frames, rounds=3)
    # The benchmark target is 5x (BENCHMARKS.md); the machine running the tests is shared, so the
    # test only insists on a clear margin.
    assert comparison.speedup >= 2.0, f"only {comparison.speedup:.2f}x: {comparison.product_median:.0f} ms per frame"


def test_graph_detector_handles_blank_tiny_and_odd_sized_images(detectors):
    _, graph = detectors
    assert graph.detect(np.full((480, 640, 3), 128, np.uint8)) == []
    assert graph.detect(np.zeros((8, 8, 3), np.uint8)) == []
    assert graph.detect(np.zeros((13, 1000, 3), np.uint8)) == []


def test_graph_detector_gives_the_same_answer_from_many_threads(detectors, probe_frames):
    _, graph = detectors
    frames = probe_frames[:6]
    expected = [[f.box for f in graph.detect(frame.rgb)] for frame in frames]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda frame: [f.box for f in graph.detect(frame.rgb)], frames * 2))
    for boxes, want in zip(got, expected * 2):
        np.testing.assert_allclose(boxes, want, atol=1e-3)
