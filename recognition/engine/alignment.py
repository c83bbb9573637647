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


def face_region(rgb: np.ndarray, box, margin: float = 0.6, max_side: int = 400) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The face's box widened by ``margin`` (fraction of its side) on every side, squared, scaled
    down to at most ``max_side`` px: wide enough for every embedder's alignment (FaceNet's box crop,
    dlib's landmark chip), so a face can be embedded again once its photo is gone.

    Returns the (S, S, 3) uint8 region and ``(x0, y0, scale)``: a photo pixel (x, y) is at
    ((x - x0) * scale, (y - y0) * scale) in the region (outside the photo: black)."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    x0, y0 = x + w / 2.0 - side / 2.0, y + h / 2.0 - side / 2.0
    scale = min(1.0, max_side / side)
    out = max(1, int(round(side * scale)))
    matrix = np.array([[scale, 0.0, -scale * x0], [0.0, scale, -scale * y0]], dtype=np.float32)
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    region = cv2.warpAffine(rgb, matrix, (out, out), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return region, (float(x0), float(y0), float(scale))


def face_in_region(face: DetectedFace, region_box) -> DetectedFace:
    """``face`` (photo coordinates) in the coordinates of its region (see ``face_region``)."""
    x0, y0, scale = (float(v) for v in region_box)
    x, y, w, h = face.box
    landmarks = (np.asarray(face.landmarks, np.float32) - np.array([x0, y0], np.float32)) * scale
    return DetectedFace(box=((x - x0) * scale, (y - y0) * scale, w * scale, h * scale), landmarks=landmarks, score=face.score)
