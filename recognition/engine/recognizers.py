"""What recognition serves, over numpy arrays: the gallery (nearest neighbour, open-set by a cosine
threshold) or a trained softmax head (open-set by a probability threshold). No Django here: the
service (``recognition.services``) picks one from the active model version."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .matching import Candidate, Gallery, MatchResult


@dataclass(frozen=True)
class ServedMatch(MatchResult):
    """A MatchResult that says which recognizer scored it: for "softmax_head" the candidates'
    ``similarity`` is the head's probability, for "nearest_neighbour" a cosine similarity."""

    scored_by: str = "nearest_neighbour"


class GalleryRecognizer:
    """Nearest neighbour over the enrolled gallery, open-set by a cosine threshold."""

    name = "nearest_neighbour"

    def __init__(self, gallery: Gallery, threshold: float):
        self.gallery, self.threshold = gallery, threshold

    def search(self, queries: np.ndarray, top_k: int = 5, threshold: float | None = None) -> list[ServedMatch]:
        """(Q, 128) queries -> one ServedMatch per query, at most ``top_k`` people each, best first."""
        threshold = self.threshold if threshold is None else threshold
        return [ServedMatch(r.candidates, r.threshold, self.name) for r in self.gallery.search(queries, top_k, threshold)]


class HeadRecognizer:
    """The active version's softmax head, open-set by its calibrated probability threshold.

    The head only knows the people enrolled when it was trained, so the gallery still answers
    two questions per face: who is in it now, and whether the face is closest to someone the head
    never saw. People erased or deactivated since (no longer in the gallery) lose their column at
    once; the probabilities are not renormalised, so their face is not handed to the next-likeliest
    person. A face whose nearest enrolled face belongs to a person enrolled after training is
    matched by the gallery at the cosine threshold instead (until the next retrain adds them)."""

    name = "softmax_head"

    def __init__(self, head, threshold: float, gallery: Gallery, cosine_threshold: float):
        self.head, self.threshold = head, threshold
        self.gallery, self.cosine_threshold = gallery, cosine_threshold
        self._known = set(int(c) for c in head.classes)

    def search(self, queries: np.ndarray, top_k: int = 5, threshold: float | None = None) -> list[ServedMatch]:
        """(Q, 128) queries -> one ServedMatch per query; ``threshold`` (a probability) applies to
        the faces the head scores, the gallery's faces keep the cosine threshold."""
        threshold = self.threshold if threshold is None else threshold
        queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
        nearest = self.gallery.search(queries, top_k, self.cosine_threshold)
        served = self.gallery.contains(self.head.classes)
        probabilities = self.head.scores(queries)
        results = []
        for row, near in zip(probabilities, nearest):
            if near.candidates and near.candidates[0].person_id not in self._known:
                results.append(ServedMatch(near.candidates, near.threshold, "nearest_neighbour"))
                continue
            order = [c for c in np.argsort(-row, kind="stable") if served[c]][:top_k]
            # the head scores people, not faces: a person's nearest gallery face, when the gallery
            # search found them, is the face that stands behind the head's answer
            nearest_face = {c.person_id: c.face_key for c in near.candidates}
            candidates = [
                Candidate(int(self.head.classes[c]), float(row[c]), nearest_face.get(int(self.head.classes[c]))) for c in order
            ]
            results.append(ServedMatch(candidates, threshold, self.name))
        return results


Recognizer = GalleryRecognizer | HeadRecognizer
