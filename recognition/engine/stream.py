"""One camera stream, frame after frame: detect, follow, embed only what is due, match.

A webcam frame rarely holds a new face: the faces of the last frame are still there, a few pixels
away. So the whole frame is searched only every ``full_every`` frames (or when nothing is being
followed); in between, the detector runs on a small region around each followed face, with a
pyramid that starts at half that face's size. The tracker (tracking.py) carries identities between
embeddings. Plain Python over numpy; no Django.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detection import DetectedFace
from .matching import Gallery
from .pipeline import FacePipeline
from .tracking import FaceTracker, Track, iou


@dataclass(frozen=True)
class StreamSettings:
    min_face_size: int = 40  # px in the frame; enrollment needs 60 px faces, so smaller ones cannot match anyway
    full_every: int = 5  # search the whole frame at least every this many frames (new faces appear within it)
    region_margin: float = 0.5  # a followed face's search region: its box widened by this fraction of its side, each way
    region_min_face: float = 0.5  # ... searched for faces down to this fraction of the followed face's side
    region_min_iou: float = 0.3  # ... and the detection there must overlap the face's last box this much
    max_faces: int = 50


@dataclass
class StreamFrame:
    tracks: list[Track]  # one per face found, largest first
    embedded: int  # faces embedded in this frame
    full_frame: bool  # whether the whole frame was searched


class FaceStream:
    """The per-stream state: tracker and frame counter. One per connection; not thread-safe."""

    def __init__(self, pipeline: FacePipeline, tracker: FaceTracker, settings: StreamSettings = StreamSettings()):
        self.pipeline = pipeline
        self.tracker = tracker
        self.settings = settings
        self._since_full = settings.full_every  # the first frame is searched whole

    def process(self, rgb: np.ndarray, gallery: Gallery, threshold: float) -> StreamFrame:
        """(H, W, 3) uint8 RGB -> this frame's tracks; faces due for an embedding are embedded and matched."""
        faces, full = self.detect(rgb)
        faces = faces[: self.settings.max_faces]
        tracks, to_embed = self.tracker.update([f.box for f in faces], [f.landmarks for f in faces])
        if to_embed:
            analysed = self.pipeline.analyse(rgb, faces=[faces[i] for i in to_embed])
            results = gallery.search(np.stack([a.embedding for a in analysed]), top_k=1, threshold=threshold)
            for i, face, result in zip(to_embed, analysed, results):
                match = result.match
                best = result.candidates[0].similarity if result.candidates else None
                tracks[i].record_match(
                    match.person_id if match else None, best, match.face_key if match else None, face.embedding
                )
        return StreamFrame(tracks=tracks, embedded=len(to_embed), full_frame=full)

    def detect(self, rgb: np.ndarray) -> tuple[list[DetectedFace], bool]:
        """This frame's faces, largest first, and whether the whole frame was searched."""
        detector = self.pipeline.detector
        followed = [t.box for t in self.tracker.tracks if t.missed == 0]
        self._since_full += 1
        if not followed or self._since_full >= self.settings.full_every:
            self._since_full = 0
            return detector.detect(rgb, min_face_size=self.settings.min_face_size), True
        faces: list[DetectedFace] = []
        for box in followed:
            face = self._detect_near(rgb, box)
            if face is not None and all(iou(face.box, other.box) < 0.5 for other in faces):
                faces.append(face)
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces, False

    def _detect_near(self, rgb: np.ndarray, box) -> DetectedFace | None:
        """The followed face in its region this frame: the detection overlapping its last box most.

        Anything else the region holds is left to the next whole-frame search, which judges it on
        the whole frame (a region search sees parts of faces cut at its edge)."""
        height, width = rgb.shape[:2]
        x, y, w, h = box
        side = max(w, h)
        half = side * (0.5 + self.settings.region_margin)
        cx, cy = x + w / 2.0, y + h / 2.0
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(width, cx + half)), int(min(height, cy + half))
        if x1 - x0 < 12 or y1 - y0 < 12:
            return None
        min_face = max(12, int(min(w, h) * self.settings.region_min_face))
        found = self.pipeline.detector.detect(rgb[y0:y1, x0:x1], min_face_size=min_face)
        offset = np.array([x0, y0], np.float32)
        shifted = [
            DetectedFace(box=(f.box[0] + x0, f.box[1] + y0, f.box[2], f.box[3]), landmarks=f.landmarks + offset, score=f.score)
            for f in found
        ]
        best = max(shifted, key=lambda f: iou(f.box, box), default=None)
        return best if best is not None and iou(best.box, box) >= self.settings.region_min_iou else None
