"""Following faces across the frames of one camera stream, so the embedder need not run on every face.

Detection runs on every frame (it is what gives boxes and landmarks); a detected face is matched to
the track it overlaps most (IoU). A track keeps its identity between embeddings and is only
re-embedded every ``reembed_every`` frames, or as soon as it is new. Plain Python over numpy; no
Django.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]  # (x, y, w, h) in frame pixels


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes, in [0, 1]."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed across frames."""

    id: int
    box: Box
    landmarks: np.ndarray  # (5, 2) float32, the latest frame's
    person_id: int | None = None  # the identity the latest embedding matched, None = unknown
    similarity: float | None = None  # the latest embedding's best similarity
    embedding: np.ndarray | None = None  # the latest embedding, (128,) float32 L2-normalised
    streak: int = 0  # consecutive frames (embedded or carried) on the same known identity
    agreeing: list[float] = field(default_factory=list)  # similarities of the embeddings in the streak
    agreeing_faces: list[int] = field(default_factory=list)  # the gallery face keys they matched (when known)
    frames_since_embed: int = 0
    embedded: bool = False  # embedded in the current frame
    missed: int = 0  # consecutive frames without a matching detection
    checked_in: bool = False
    state: dict = field(default_factory=dict)  # per-track state owned by callers (e.g. liveness)

    def record_match(
        self,
        person_id: int | None,
        similarity: float | None,
        face_key: int | None = None,
        embedding: np.ndarray | None = None,
    ) -> None:
        """A fresh embedding's verdict: extends the streak if it agrees, restarts it otherwise.
        ``face_key``: the gallery face the match was made on, kept so a wrong match can be traced;
        ``embedding``: the fresh embedding, kept for unknown faces (visitors)."""
        self.similarity = similarity
        self.embedding = embedding
        self.frames_since_embed = 0
        self.embedded = True
        if person_id is not None and person_id == self.person_id:
            self.streak += 1
            self.agreeing.append(float(similarity))
        else:
            self.person_id = person_id
            self.streak = 1 if person_id is not None else 0
            self.agreeing = [float(similarity)] if person_id is not None else []
            self.agreeing_faces = []
        if person_id is not None and face_key is not None and face_key not in self.agreeing_faces:
            self.agreeing_faces.append(int(face_key))

    def stable(self, frames: int, embeddings: int = 2) -> bool:
        """Known, and the same identity for ``frames`` frames backed by at least ``embeddings`` embeddings."""
        return self.person_id is not None and self.streak >= frames and len(self.agreeing) >= min(embeddings, frames)


class FaceTracker:
    """Greedy IoU association of detections to tracks, frame after frame."""

    def __init__(self, iou_threshold: float = 0.3, reembed_every: int = 3, max_missed: int = 2):
        self.iou_threshold = iou_threshold
        self.reembed_every = max(1, reembed_every)
        self.max_missed = max_missed
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: list[Box], landmarks: list[np.ndarray]) -> tuple[list[Track], list[int]]:
        """Associate this frame's detections with tracks.

        Returns the track of each detection (same order) and the indices of the detections that
        need an embedding now (new tracks and tracks due for re-embedding).
        """
        pairs = sorted(
            ((iou(box, track.box), d, t) for d, box in enumerate(boxes) for t, track in enumerate(self.tracks)),
            reverse=True,
        )
        assigned: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for overlap, d, t in pairs:
            if overlap < self.iou_threshold:
                break
            if d in assigned or t in used_tracks:
                continue
            assigned[d] = self.tracks[t]
            used_tracks.add(t)

        for t, track in enumerate(self.tracks):
            if t not in used_tracks:
                track.missed += 1
        self.tracks = [t for i, t in enumerate(self.tracks) if i in used_tracks or t.missed <= self.max_missed]

        frame_tracks: list[Track] = []
        to_embed: list[int] = []
        for d, (box, points) in enumerate(zip(boxes, landmarks)):
            track = assigned.get(d)
            if track is None:
                track = Track(id=self._next_id, box=tuple(box), landmarks=np.asarray(points, np.float32))
                self._next_id += 1
                self.tracks.append(track)
                to_embed.append(d)
            else:
                track.box = tuple(box)
                track.landmarks = np.asarray(points, np.float32)
                track.missed = 0
                track.frames_since_embed += 1
                if track.frames_since_embed >= self.reembed_every:
                    to_embed.append(d)
                elif track.person_id is not None:
                    track.streak += 1  # identity carried by tracking
            track.embedded = False
            frame_tracks.append(track)
        return frame_tracks, to_embed
