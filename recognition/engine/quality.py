"""Is a detected face good enough to enroll? Size and sharpness checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# The face is measured at this size: blur is judged relative to the face, as the embedder sees it.
SHARPNESS_SIDE = 64


@dataclass(frozen=True)
class QualityRules:
    min_face_px: int = 60  # the shorter side of the face box, in original pixels
    min_sharpness: float = 60.0  # see sharpness(): variance of the Laplacian of the face at 64x64 (BENCHMARKS.md)
    dominant_ratio: float = 4.0  # a face this many times larger (in area) than the next one is "the" face


def face_square(rgb: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The square around a face box's centre, of the box's longer side, in the image's own pixels
    (edge pixels repeated where it leaves the image)."""
    x, y, w, h = (float(v) for v in box)
    side = max(1, int(round(max(w, h))))
    left, top = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    height, width = rgb.shape[:2]
    pad = max(0, -left, -top, left + side - width, top + side - height)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    return rgb[top : top + side, left : left + side]


def sharpness(rgb: np.ndarray, box: Sequence[float]) -> float:
    """How sharp a face is, relative to its size: the variance of the Laplacian of the face's
    square (``face_square``: ``box`` is x, y, w, h in ``rgb``'s pixels, no margin) resized to
    64x64 grey, by pixel-area averaging when shrunk.

    Low means blurry. Measured at one size whatever the face's, because the variance of the
    Laplacian falls steeply when an image is enlarged and rises when it is shrunk without
    averaging: on the 160x160 aligned crop it was measured on before, a small sharp face
    (enlarged) scored like a large face blurred by several pixels (BENCHMARKS.md, "Enrollment
    yield through the API")."""
    square = face_square(rgb, box)
    interp = cv2.INTER_AREA if square.shape[0] > SHARPNESS_SIDE else cv2.INTER_LINEAR
    face = cv2.resize(square, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=interp)
    return float(cv2.Laplacian(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
