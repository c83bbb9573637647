"""Open-set matching of face embeddings against an enrolled gallery."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    person_id: int
    similarity: float  # cosine similarity in [-1, 1] of the person's best-matching gallery embedding


@dataclass(frozen=True)
class MatchResult:
    """Top-k candidates, one per person, best first; ``match`` is None when the best is below threshold."""

    candidates: list[Candidate]
    threshold: float

    @property
    def match(self) -> Candidate | None:
        if self.candidates and self.candidates[0].similarity >= self.threshold:
            return self.candidates[0]
        return None

    @property
    def margin(self) -> float | None:
        """Best minus second-best person's similarity: a small margin is a near tie."""
        if len(self.candidates) < 2:
            return None
        return self.candidates[0].similarity - self.candidates[1].similarity


class Gallery:
    """Enrolled embeddings, (N, 128) float32 L2-normalised, each labelled with a person id.

    Exact cosine search (a matrix-vector product); a person's score is the best score among their
    embeddings. Updates are incremental (add/remove one person) and readers never see a half-update:
    the arrays are swapped under a lock, never modified in place.
    """

    def __init__(self, dim: int = 128):
        self.dim = dim
        self._lock = threading.Lock()
        self._embeddings = np.zeros((0, dim), np.float32)
        self._labels = np.zeros((0,), np.int64)
        self._keys = np.zeros((0,), np.int64)  # the caller's id of each embedding (FaceImage pk)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def person_ids(self) -> set[int]:
        return set(self._labels.tolist())

    def replace(self, embeddings: np.ndarray, labels: np.ndarray, keys: np.ndarray | None = None) -> None:
        embeddings = _as_matrix(embeddings, self.dim)
        labels = np.asarray(labels, np.int64)
        keys = np.arange(len(labels), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)
        if not (len(embeddings) == len(labels) == len(keys)):
            raise ValueError("embeddings, labels and keys must have the same length")
        with self._lock:
            self._embeddings, self._labels, self._keys = embeddings, labels, keys

    def set_person(self, person_id: int, embeddings: np.ndarray, keys: np.ndarray) -> None:
        """Replace one person's embeddings (an empty array removes them)."""
        embeddings = _as_matrix(embeddings, self.dim)
        with self._lock:
            keep = self._labels != person_id
            self._embeddings = np.concatenate([self._embeddings[keep], embeddings])
            self._labels = np.concatenate([self._labels[keep], np.full(len(embeddings), person_id, np.int64)])
            self._keys = np.concatenate([self._keys[keep], np.asarray(keys, np.int64)])

    def remove_person(self, person_id: int) -> None:
        self.set_person(person_id, np.zeros((0, self.dim), np.float32), np.zeros((0,), np.int64))

    def search(self, queries: np.ndarray, top_k: int = 5, threshold: float = 0.5, exclude_keys=()) -> list[MatchResult]:
        """(Q, 128) queries -> one MatchResult per query, at most ``top_k`` people each."""
        queries = _as_matrix(queries, self.dim)
        with self._lock:
            embeddings, labels, keys = self._embeddings, self._labels, self._keys
        if exclude_keys:
            keep = ~np.isin(keys, list(exclude_keys))
            embeddings, labels = embeddings[keep], labels[keep]
        if len(labels) == 0:
            return [MatchResult([], threshold) for _ in queries]
        scores = queries @ embeddings.T  # (Q, N)
        people, inverse = np.unique(labels, return_inverse=True)
        # best score per person: scatter-max over the gallery columns
        per_person = np.full((len(queries), len(people)), -np.inf, np.float32)
        np.maximum.at(per_person.T, inverse, scores.T)
        results = []
        k = min(top_k, len(people))
        for row in per_person:
            order = np.argsort(-row)[:k]
            results.append(MatchResult([Candidate(int(people[j]), float(row[j])) for j in order], threshold))
        return results


def _as_matrix(embeddings: np.ndarray, dim: int) -> np.ndarray:
    matrix = np.asarray(embeddings, np.float32).reshape(-1, dim)
    return np.ascontiguousarray(matrix)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Of two L2-normalised (128,) embeddings."""
    return float(np.dot(np.asarray(a, np.float32), np.asarray(b, np.float32)))
