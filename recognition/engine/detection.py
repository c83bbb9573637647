"""Face detection with MTCNN (the ``mtcnn`` package's bundled weights)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class DetectedFace:
    """One face in original-image pixels.

    box: (x, y, w, h) floats; landmarks: (5, 2) float32 in LANDMARK_NAMES order; score in [0, 1].
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    extra: dict = field(default_factory=dict)

    def box_ints(self) -> list[int]:
        x, y, w, h = self.box
        return [int(round(x)), int(round(y)), int(round(w)), int(round(h))]

    def landmarks_dict(self) -> dict[str, list[float]]:
        return {name: [round(float(px), 1), round(float(py), 1)] for name, (px, py) in zip(LANDMARK_NAMES, self.landmarks)}


class MTCNNDetector:
    """The stock ``mtcnn.MTCNN`` detector behind a downscaling front.

    Images whose longer side exceeds ``max_side`` are shrunk for detection and the boxes and
    landmarks mapped back to original pixels: MTCNN's pyramid cost grows with the pixel count,
    and faces big enough to recognize survive the shrink.
    """

    name = "mtcnn"

    def __init__(self, max_side: int = 1024, min_face_size: int = 20, min_score: float = 0.9):
        self.max_side = max_side
        self.min_face_size = min_face_size
        self.min_score = min_score
        self._load()

    def _load(self) -> None:
        from mtcnn import MTCNN

        self._mtcnn = MTCNN()
        # mtcnn keeps per-call state in Python objects; serialise calls so threads cannot interleave.
        self._lock = threading.Lock()

    def _detect_raw(self, rgb: np.ndarray, min_face_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> boxes (N, 4) x, y, w, h; scores (N,); landmarks (N, 5, 2), all in ``rgb``'s pixels."""
        with self._lock:
            raw = self._mtcnn.detect_faces(rgb, min_face_size=min_face_size)
        boxes = np.array([item["box"] for item in raw], np.float32).reshape(-1, 4)
        scores = np.array([item["confidence"] for item in raw], np.float32)
        landmarks = np.array([[item["keypoints"][name] for name in LANDMARK_NAMES] for item in raw], np.float32)
        return boxes, scores, landmarks.reshape(-1, 5, 2)

    def detect(self, rgb: np.ndarray, min_face_size: int | None = None) -> list[DetectedFace]:
        """(H, W, 3) uint8 RGB -> faces sorted by area, largest first.

        ``min_face_size`` (px, default the detector's) bounds the pyramid: a larger one is faster.
        """
        height, width = rgb.shape[:2]
        min_face_size = min_face_size or self.min_face_size
        scale = min(1.0, self.max_side / max(height, width))
        small = (
            rgb if scale == 1.0 else cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        )
        boxes, scores, landmarks = self._detect_raw(small, max(12, int(min_face_size * scale)))
        faces = [
            DetectedFace(box=tuple(float(v) for v in box / scale), landmarks=marks / scale, score=float(score))
            for box, score, marks in zip(boxes, scores, landmarks)
            if score >= self.min_score
        ]
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces


class GraphMTCNNDetector(MTCNNDetector):
    """The same MTCNN weights and cascade run as one compiled TensorFlow graph (``fast_mtcnn``).

    Several times faster than the stock package and thread-safe without a lock; boxes are floats
    rather than the stock's rounded integers.
    """

    name = "mtcnn-graph"

    def _load(self) -> None:
        from .fast_mtcnn import FastMTCNN, MTCNNSettings

        self._mtcnn = FastMTCNN(MTCNNSettings(min_face_size=self.min_face_size))

    def _detect_raw(self, rgb: np.ndarray, min_face_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, landmarks = self._mtcnn.detect(rgb, min_face_size=min_face_size)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        return xywh, scores, landmarks


def make_detector(kind: str = "mtcnn-graph", **options) -> MTCNNDetector:
    """``"mtcnn-graph"`` (the compiled cascade) or ``"mtcnn"`` (the stock package)."""
    detectors = {cls.name: cls for cls in (MTCNNDetector, GraphMTCNNDetector)}
    if kind not in detectors:
        raise ValueError(f"unknown detector {kind!r}; choose one of {sorted(detectors)}")
    return detectors[kind](**options)
