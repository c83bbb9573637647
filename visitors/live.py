"""The per-connection side of unknown visitors: what a tracked face that matches nobody gathers
while it is followed (its embeddings, and with VISITOR_KEEP_CROP one small crop), kept in memory on
the track until it has been unknown for CHECKIN_STABLE_FRAMES frames. No ORM: this runs in the
frame worker thread; services.record_sighting stores the result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from PIL import Image

STATE_KEY = "visitor"
MAX_EMBEDDINGS_PER_TRACK = 8


@dataclass
class UnknownFace:
    frames: int = 0  # consecutive frames the track has been unknown
    embeddings: list[np.ndarray] = field(default_factory=list)
    crop: bytes | None = None  # JPEG, only with VISITOR_KEEP_CROP
    recorded: bool = False  # a sighting was stored for this track

    @property
    def embedding(self) -> np.ndarray:
        """The mean of the track's embeddings, L2-normalised: (128,) float32."""
        mean = np.mean(np.stack(self.embeddings), axis=0).astype(np.float32)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


def observe(track, rgb: np.ndarray) -> None:
    """Update what an unknown track has gathered with this frame; a known track gathers nothing
    (and drops what it had: a face that is recognized is nobody's visitor)."""
    if track.person_id is not None or track.checked_in:
        track.state.pop(STATE_KEY, None)
        return
    face = track.state.setdefault(STATE_KEY, UnknownFace())
    face.frames += 1
    if track.embedded and track.embedding is not None:
        face.embeddings = [*face.embeddings, np.asarray(track.embedding, np.float32)][-MAX_EMBEDDINGS_PER_TRACK:]
        if settings.VISITOR_KEEP_CROP and face.crop is None:
            face.crop = small_crop(rgb, track.box, settings.VISITOR_CROP_PX)


def due(track) -> UnknownFace | None:
    """What to store for this track now, if it has just become a sighting: unknown for
    CHECKIN_STABLE_FRAMES frames with at least two embeddings (one if a single frame is asked for)."""
    face = track.state.get(STATE_KEY)
    frames = settings.CHECKIN_STABLE_FRAMES
    if face is None or face.recorded or face.frames < frames or len(face.embeddings) < min(2, frames):
        return None
    return face


def small_crop(rgb: np.ndarray, box, side: int) -> bytes:
    """The face's box (widened by a fifth each way) as a ``side`` x ``side`` JPEG."""
    height, width = rgb.shape[:2]
    x, y, w, h = box
    size = max(w, h) * 1.4
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(max(0, cx - size / 2)), int(max(0, cy - size / 2))
    x1, y1 = int(min(width, cx + size / 2)), int(min(height, cy + size / 2))
    image = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1])).resize((side, side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
