"""Is a detected face good enough to enroll? Size and sharpness checks."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class QualityRules:
    min_face_px: int = 60  # the shorter side of the face box, in original pixels
    min_sharpness: float = 20.0  # variance of the Laplacian of the aligned 160x160 grey crop
    dominant_ratio: float = 4.0  # a face this many times larger (in area) than the next one is "the" face


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of an aligned (160, 160, 3) uint8 crop; low means blurry."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())
