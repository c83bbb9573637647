"""A head-turn liveness challenge checked from the five MTCNN landmarks across frames.

The person is asked to turn their head to their left or right. The yaw cue is where the nose sits
between the eyes, in units of the eye distance: it moves when a head turns, but not when a flat
photo is held still, tilted or swung about (swinging a photo squeezes the face horizontally, which
scales the nose offset and the eye distance alike and leaves their ratio unchanged). Plain Python
over numpy; no Django.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

# Landmark order: left_eye, right_eye, nose, mouth_left, mouth_right (as in detection.LANDMARK_NAMES).
LEFT_EYE, RIGHT_EYE, NOSE = 0, 1, 2
DIRECTIONS = ("left", "right")


def yaw_cue(landmarks: np.ndarray) -> float:
    """Horizontal nose offset from the eyes' midpoint over the eye distance, for (5, 2) landmarks.

    About 0 for a frontal face. In an unmirrored camera frame it grows positive when the person
    turns to *their* left (the nose moves toward the image's right) and negative to their right.
    """
    points = np.asarray(landmarks, np.float64)
    eyes_mid = (points[LEFT_EYE] + points[RIGHT_EYE]) / 2.0
    eye_distance = float(np.linalg.norm(points[RIGHT_EYE] - points[LEFT_EYE]))
    if eye_distance < 1e-6:
        return 0.0
    return float((points[NOSE][0] - eyes_mid[0]) / eye_distance)


@dataclass
class HeadTurnChallenge:
    """Pass when the yaw cue moves by ``min_turn`` from the resting baseline in the asked direction."""

    direction: str = field(default_factory=lambda: random.choice(DIRECTIONS))
    min_turn: float = 0.2
    baseline_frames: int = 2
    baseline: list[float] = field(default_factory=list)
    passed: bool = False
    peak: float = 0.0  # the largest turn in the asked direction so far

    def update(self, landmarks: np.ndarray) -> bool:
        """Feed one frame's landmarks; True once the challenge is passed."""
        if self.passed:
            return True
        cue = yaw_cue(landmarks)
        if len(self.baseline) < self.baseline_frames:
            self.baseline.append(cue)
            return False
        rest = float(np.median(self.baseline))
        turn = (cue - rest) if self.direction == "left" else (rest - cue)
        self.peak = max(self.peak, turn)
        self.passed = turn >= self.min_turn
        return self.passed

    @property
    def progress(self) -> float:
        """How far along the asked turn the person got, in [0, 1]."""
        return 1.0 if self.passed else float(np.clip(self.peak / self.min_turn, 0.0, 1.0))
