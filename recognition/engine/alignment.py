"""Cropping and aligning a detected face to the embedder's 160x160 input."""

from __future__ import annotations

import cv2
import numpy as np

from .detection import DetectedFace

# Where the five landmarks sit in a well-aligned 112x112 face (the ArcFace template), scaled to
# the output size below. Eyes level, face centred: the similarity transform only rotates, scales
# and shifts, so a face is never sheared.
_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def align_face(rgb: np.ndarray, face: DetectedFace, size: int = 160, method: str = "box", margin: float = 0.05) -> np.ndarray:
    """Return a (size, size, 3) uint8 RGB crop of ``face``.

    method "box": the detector's box widened by ``margin`` (fraction of its size) on each side,
    squared, resized (how FaceNet's training crops were made); "similarity": landmarks warped onto
    a fixed template (rotation-normalised, plus a margin of the same spirit).
    """
    if method == "similarity":
        return _align_similarity(rgb, face.landmarks, size, margin)
    return _crop_box(rgb, face.box, size, margin)


def _crop_box(rgb: np.ndarray, box, size: int, margin: float) -> np.ndarray:
    x, y, w, h = box
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(w, h) * (1.0 + 2.0 * margin)
    # An affine warp of the square crop: regions outside the image become black instead of
    # shrinking the crop, so faces at the image edge keep their scale.
    s = size / side
    matrix = np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]], dtype=np.float32)
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(rgb, matrix, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _align_similarity(rgb: np.ndarray, landmarks: np.ndarray, size: int, margin: float) -> np.ndarray:
    inner = size / (1.0 + 2.0 * margin)
    template = _TEMPLATE_112 * (inner / 112.0) + (size - inner) / 2.0
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), template, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks are degenerate")
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
