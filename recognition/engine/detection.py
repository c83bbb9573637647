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
    and faces big enough to recognise survive the shrink.
    """

    name = "mtcnn"

    def __init__(self, max_side: int = 1024, min_face_size: int = 20, min_score: float = 0.9):
        from mtcnn import MTCNN

        self._mtcnn = MTCNN()
        self.max_side = max_side
        self.min_face_size = min_face_size
        self.min_score = min_score
        # mtcnn keeps per-call state in Python objects; serialise calls so threads cannot interleave.
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """(H, W, 3) uint8 RGB -> faces sorted by area, largest first."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = (
            rgb if scale == 1.0 else cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        )
        with self._lock:
            raw = self._mtcnn.detect_faces(small, min_face_size=max(12, int(self.min_face_size * scale)))
        faces = []
        for item in raw:
            if item["confidence"] < self.min_score:
                continue
            x, y, w, h = (float(v) / scale for v in item["box"])
            kp = item["keypoints"]
            landmarks = np.array([kp[name] for name in LANDMARK_NAMES], dtype=np.float32) / scale
            faces.append(DetectedFace(box=(x, y, w, h), landmarks=landmarks, score=float(item["confidence"])))
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces
