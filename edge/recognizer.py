"""The server's live-stream engine (recognition/engine/stream.py and tracking.py, Django-free) with
the exported TFLite embedder and the label map in place of the server's model and database.

On a site serving the fused embedder the pair holds dlib's network too, and the label map's
``template`` says how the server's 256-d templates are made: FaceNet's .tflite on the aligned crop,
dlib's on a chip cut from MTCNN's landmarks, fused with the site's cosine weight
(``training.engine.export.TFLiteFusedEmbedder``). Every dimension comes from the label map.

Matching is what the version serves: with its softmax head in production, the head (one dense
layer from the label map, in numpy) with its probability threshold; otherwise cosine nearest
neighbour with the label map's threshold, over the gallery delta when one was synced (it follows
enrollments made after training) or else the label map's own gallery.

People deactivated on the server since the version was trained (the manifest's ``inactive_people``)
are masked as the server does live: their head columns are dropped (the probabilities are not
renormalised, so their face is not handed to the next-likeliest person) and their gallery rows
removed, until the next retrain leaves them out.
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
from training.engine.export import TFLiteEmbedder, TFLiteFusedEmbedder

from .sync import DLIB_FILE, FACENET_DIM, LABELS_FILE, MODEL_FILE


@dataclass
class EmbeddedFace:
    embedding: np.ndarray


class TFLitePipeline:
    """What FaceStream needs of a pipeline (``detector``, ``analyse``), with the pair's TFLite
    embedder: FaceNet alone, or fused with dlib's network when the label map has a ``template``."""

    def __init__(self, pair_dir: Path, labels: dict):
        self.detector = make_detector("mtcnn-graph")
        self.alignment = labels.get("alignment", {"method": "box", "margin": 0.05, "size": 160})
        template = labels.get("template")
        if template:
            self.fused = TFLiteFusedEmbedder(Path(pair_dir) / MODEL_FILE, Path(pair_dir) / DLIB_FILE, template)
            self.embedder = self.fused.facenet
        else:
            self.fused = None
            self.embedder = TFLiteEmbedder(Path(pair_dir) / MODEL_FILE)

    def analyse(self, rgb: np.ndarray, faces) -> list[EmbeddedFace]:
        a = self.alignment
        crops = np.stack([align_face(rgb, f, size=a["size"], method=a["method"], margin=a["margin"]) for f in faces])
        embeddings = self.embedder.embed(crops) if self.fused is None else self.fused.embed(rgb, faces, crops)
        return [EmbeddedFace(e) for e in embeddings]


class HeadMatcher:
    """The label map's softmax head, searched like a Gallery: the probability is the score."""

    def __init__(self, head: dict, person_ids: dict[int, int], dim: int, masked: frozenset[int] = frozenset()):
        """``masked``: person ids whose columns are never answered (deactivated since training)."""
        self.kernel = np.asarray(head["kernel"], np.float32).reshape(dim, -1)
        self.bias = np.asarray(head["bias"], np.float32)
        self.columns = [person_ids[int(i)] for i in head["people"]]
        self.served = np.asarray([p not in masked for p in self.columns], bool)

    def search(self, embeddings: np.ndarray, top_k: int = 1, threshold: float = 0.0) -> list[MatchResult]:
        if not self.served.any():
            return [MatchResult([], threshold) for _ in embeddings]
        logits = np.asarray(embeddings, np.float32) @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        # the softmax over every column, as trained; a masked column's share is dropped, not spread
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        best = np.where(self.served, probabilities, -1.0).argmax(axis=1)
        return [MatchResult([Candidate(self.columns[b], float(row[b]))], threshold) for b, row in zip(best, probabilities)]


class EdgeRecognizer:
    def __init__(
        self,
        pair_dir: Path,
        gallery,
        names: dict[str, str],
        rule: dict,
        gallery_embedder: str | None = None,
        inactive=(),
    ):
        """``gallery``: the synced gallery delta (``State.gallery()``) or None; it is matched only
        when made by the label map's embedder (``gallery_embedder``, None: not said, assumed so).
        ``inactive``: person ids never to name (the manifest's ``inactive_people``)."""
        self.inactive = frozenset(int(p) for p in inactive)
        labels = json.loads((Path(pair_dir) / LABELS_FILE).read_text())
        dim = int((labels.get("template") or {}).get("dim", FACENET_DIM))
        if gallery_embedder not in (None, labels.get("embedder")):
            gallery = None  # the site serves another embedder than this version's: its label map's gallery
        person_of_index = {int(p["index"]): int(p["person_id"]) for p in labels["people"]}
        self.names = {int(p["person_id"]): p["name"] for p in labels["people"]}
        self.names.update({int(k): v for k, v in names.items()})
        self.names = {p: name for p, name in self.names.items() if p not in self.inactive}
        self.version = labels.get("version")
        self.stable_frames = int(rule.get("stable_frames", 4))
        if labels.get("matching") == "softmax_head" and labels.get("head"):
            self.matcher = HeadMatcher(labels["head"], person_of_index, dim, self.inactive)
            self.threshold = float(labels["head"]["threshold"])
        else:
            self.matcher = Gallery(dim=dim)
            if gallery is not None:
                ids, people, embeddings = gallery
            else:
                index = np.asarray(labels["gallery"]["labels"], np.int64)
                embeddings = np.asarray(labels["gallery"]["embeddings"], np.float32).reshape(-1, dim)
                people = np.asarray([person_of_index[int(i)] for i in index], np.int64)
                ids = None
            keep = np.asarray([int(p) not in self.inactive for p in people], bool)
            self.matcher.replace(embeddings[keep], np.asarray(people)[keep], None if ids is None else np.asarray(ids)[keep])
            self.threshold = float(labels["threshold"])
        self.pipeline = TFLitePipeline(Path(pair_dir), labels)
        self.stream = FaceStream(
            self.pipeline,
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
