"""Which detected face of a photo is the person's: the dominant one, one chosen by index or box,
or the central subject of a portrait. Plain geometry over ``DetectedFace`` boxes.

Faces are numbered in **reading order**: left to right by the centre of their box (top to bottom
where two centres share a column), so index 0 is the leftmost face. The order depends only on the
boxes, not on face sizes or detection scores, so a client that saw the boxes can name a face by
its index and the same photo gives the same numbering again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .detection import DetectedFace

Box = tuple[float, float, float, float]  # x, y, w, h in original-image pixels


def reading_order(faces: Sequence[DetectedFace]) -> list[DetectedFace]:
    """``faces`` left to right by box centre (then top to bottom): the order of ``face_index``."""
    return sorted(faces, key=lambda f: (round(f.box[0] + f.box[2] / 2), round(f.box[1] + f.box[3] / 2), -f.box[2] * f.box[3]))


def area(box: Sequence[float]) -> float:
    return max(0.0, float(box[2])) * max(0.0, float(box[3]))


def overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes, in [0, 1]."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return float(inter / (area(a) + area(b) - inter))


def best_overlap(faces: Sequence[DetectedFace], box: Sequence[float]) -> tuple[int, float] | None:
    """The index (in ``faces``' order) of the face overlapping ``box`` most and its overlap (IoU);
    None when no face overlaps it at all."""
    scored = [(overlap(face.box, box), i) for i, face in enumerate(faces)]
    best, index = max(scored, default=(0.0, -1))
    return (index, best) if best > 0 else None


def area_ratio(face: DetectedFace, faces: Sequence[DetectedFace]) -> float:
    """``face``'s box area over the largest other face's in ``faces`` (inf when it is alone)."""
    others = [area(other.box) for other in faces if other is not face]
    return area(face.box) / max(1.0, max(others)) if others else math.inf


def dominant(faces: Sequence[DetectedFace], ratio: float) -> DetectedFace | None:
    """The largest face when it is at least ``ratio`` times the next one's area (or alone)."""
    if not faces:
        return None
    by_size = sorted(faces, key=lambda f: area(f.box), reverse=True)
    if len(by_size) == 1 or area(by_size[0].box) >= ratio * max(1.0, area(by_size[1].box)):
        return by_size[0]
    return None


@dataclass(frozen=True)
class CentralRule:
    """A portrait's subject: the largest face, at least ``min_ratio`` times the next one's area,
    whose box centre lies within ``max_offset`` of the image centre (as a fraction of the image's
    half-diagonal: 0 is the centre, 1 a corner), and the only face whose centre does. Measured on
    LFW in BENCHMARKS.md ("Enrollment yield")."""

    min_ratio: float = 1.2
    max_offset: float = 0.2


@dataclass(frozen=True)
class CentralSubject:
    face: DetectedFace
    ratio: float  # its area over the next largest face's
    offset: float  # its centre's distance from the image centre, over the half-diagonal


def centre_offset(box: Sequence[float], image_shape: Sequence[int]) -> float:
    """Distance of the box centre from the image centre over the image's half-diagonal."""
    height, width = image_shape[:2]
    dx = box[0] + box[2] / 2 - width / 2
    dy = box[1] + box[3] / 2 - height / 2
    return math.hypot(dx, dy) / (math.hypot(width, height) / 2)


def central_subject(faces: Sequence[DetectedFace], image_shape: Sequence[int], rule: CentralRule) -> CentralSubject | None:
    """The clear subject of a portrait with background faces, by ``rule``; None when none is clear."""
    if len(faces) < 2:
        return None
    by_size = sorted(faces, key=lambda f: area(f.box), reverse=True)
    ratio = area_ratio(by_size[0], by_size)
    offset = centre_offset(by_size[0].box, image_shape)
    alone = all(centre_offset(other.box, image_shape) > rule.max_offset for other in by_size[1:])
    if ratio >= rule.min_ratio and offset <= rule.max_offset and alone:
        return CentralSubject(by_size[0], ratio, offset)
    return None
