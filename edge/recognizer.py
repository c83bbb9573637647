"""The server's live-stream engine (recognition/engine/stream.py and tracking.py, Django-free) with
the exported TFLite embedder and the label map in place of the server's model and database.

Matching is what the version serves: with its softmax head in production, the head (one dense
layer from the label map, in numpy) with its probability threshold; otherwise cosine nearest
neighbour with the label map's threshold, over the gallery delta when one was synced (it follows
enrollments made after training) or else the label map's own gallery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recognition.engine.alignment import align_face
from recognition.engine.detection import make_detector
from recognition.engine.matching import Candidate, Gallery, MatchResult
from recognition.engine.stream import FaceStream, StreamSettings
from recognition.engine.tracking import FaceTracker, Track
from training.engine.export import TFLiteEmbedder

from .sync import LABELS_FILE, MODEL_FILE


@dataclass
class EmbeddedFace:
    embedding: np.ndarray


class TFLitePipeline:
    """What FaceStream needs of a pipeline (``detector``, ``analyse``), with the TFLite embedder."""

    def __init__(self, model_path: Path, alignment: dict):
        self.detector = make_detector("mtcnn-graph")
        self.embedder = TFLiteEmbedder(model_path)
        self.alignment = alignment

    def analyse(self, rgb: np.ndarray, faces) -> list[EmbeddedFace]:
        a = self.alignment
        crops = np.stack([align_face(rgb, f, size=a["size"], method=a["method"], margin=a["margin"]) for f in faces])
        return [EmbeddedFace(e) for e in self.embedder.embed(crops)]


class HeadMatcher:
    """The label map's softmax head, searched like a Gallery: the probability is the score."""

    def __init__(self, head: dict, person_ids: dict[int, int]):
        self.kernel = np.asarray(head["kernel"], np.float32).reshape(128, -1)
        self.bias = np.asarray(head["bias"], np.float32)
        self.columns = [person_ids[int(i)] for i in head["people"]]

    def search(self, embeddings: np.ndarray, top_k: int = 1, threshold: float = 0.0) -> list[MatchResult]:
        if self.kernel.shape[1] == 0:
            return [MatchResult([], threshold) for _ in embeddings]
        logits = np.asarray(embeddings, np.float32) @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        return [MatchResult([Candidate(self.columns[b], float(row[b]))], threshold) for b, row in zip(best, probabilities)]


class EdgeRecognizer:
    def __init__(self, pair_dir: Path, gallery, names: dict[str, str], rule: dict):
        labels = json.loads((Path(pair_dir) / LABELS_FILE).read_text())
        person_of_index = {int(p["index"]): int(p["person_id"]) for p in labels["people"]}
        self.names = {int(p["person_id"]): p["name"] for p in labels["people"]}
        self.names.update({int(k): v for k, v in names.items()})
        self.version = labels.get("version")
        self.stable_frames = int(rule.get("stable_frames", 4))
        if labels.get("matching") == "softmax_head" and labels.get("head"):
            self.matcher = HeadMatcher(labels["head"], person_of_index)
            self.threshold = float(labels["head"]["threshold"])
        else:
            self.matcher = Gallery()
            if gallery is not None:
                ids, people, embeddings = gallery
                self.matcher.replace(embeddings, people, ids)
            else:
                index = np.asarray(labels["gallery"]["labels"], np.int64)
                embeddings = np.asarray(labels["gallery"]["embeddings"], np.float32).reshape(-1, 128)
                self.matcher.replace(embeddings, np.asarray([person_of_index[int(i)] for i in index], np.int64))
            self.threshold = float(labels["threshold"])
        alignment = labels.get("alignment", {"method": "box", "margin": 0.05, "size": 160})
        self.stream = FaceStream(
            TFLitePipeline(Path(pair_dir) / MODEL_FILE, alignment),
            FaceTracker(reembed_every=int(rule.get("reembed_every", 3))),
            StreamSettings(min_face_size=int(rule.get("min_face_px", 40)), full_every=int(rule.get("full_frame_every", 5))),
        )

    def name(self, person_id: int | None) -> str | None:
        return self.names.get(person_id) if person_id is not None else None

    def process(self, rgb: np.ndarray) -> tuple[list[Track], list[Track]]:
        """(H, W, 3) uint8 RGB -> this frame's tracks, and those now ready to check in (the server's rule)."""
        frame = self.stream.process(rgb, self.matcher, self.threshold)
        ready = [t for t in frame.tracks if not t.checked_in and t.stable(self.stable_frames)]
        return frame.tracks, ready

    def describe(self, tracks: list[Track]) -> list[dict]:
        return [
            {
                "track": t.id,
                "box": [int(round(v)) for v in t.box],
                "person_id": t.person_id,
                "name": self.name(t.person_id),
                "similarity": None if t.similarity is None else round(t.similarity, 4),
                "embedded": t.embedded,
                "state": "checked_in" if t.checked_in else ("identifying" if t.person_id is not None else "unknown"),
            }
            for t in tracks
        ]
