"""Open-set matching of face embeddings against an enrolled gallery."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .index import EmbeddingIndex, IndexSettings, _as_matrix


@dataclass(frozen=True)
class Candidate:
    person_id: int
    similarity: float  # cosine similarity in [-1, 1] of the person's best-matching gallery embedding
    face_key: int | None = None  # the caller's key (FaceImage pk) of that embedding; None if not known


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

    Cosine search through an ``EmbeddingIndex`` (exact for small galleries, FAISS IVF past
    ``IndexSettings.exact_below``); a person's score is the best score among their embeddings.
    Updates are incremental (add/remove one person's embeddings, no rebuild) and happen under the
    index's lock, so a search never sees half an update.
    """

    def __init__(self, dim: int = 128, index_settings: IndexSettings = IndexSettings()):
        self.dim = dim
        self._lock = threading.RLock()
        self._index = EmbeddingIndex(dim, index_settings)
        # one slot per embedding ever added: the index's id is the slot, these say whose it is
        self._labels = np.zeros((0,), np.int64)  # person id per slot, -1 once removed
        self._keys = np.zeros((0,), np.int64)  # the caller's id per slot (FaceImage pk)
        self._size = 0  # slots in use
        self._slots_of: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._index)

    @property
    def person_ids(self) -> set[int]:
        return set(self._slots_of)

    @property
    def index(self) -> EmbeddingIndex:
        return self._index

    def replace(self, embeddings: np.ndarray, labels: np.ndarray, keys: np.ndarray | None = None) -> None:
        embeddings = _as_matrix(embeddings, self.dim)
        labels = np.asarray(labels, np.int64)
        keys = np.arange(len(labels), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)
        if not (len(embeddings) == len(labels) == len(keys)):
            raise ValueError("embeddings, labels and keys must have the same length")
        with self._lock:
            self._labels, self._keys, self._size = labels.copy(), keys.copy(), len(labels)
            order = np.argsort(labels, kind="stable")
            people, starts = np.unique(labels[order], return_index=True)
            self._slots_of = {int(p): slots for p, slots in zip(people, np.split(order, starts[1:]))} if len(labels) else {}
            self._index.reset(np.arange(len(labels), dtype=np.int64), embeddings)

    def set_person(self, person_id: int, embeddings: np.ndarray, keys: np.ndarray) -> None:
        """Replace one person's embeddings (an empty array removes them)."""
        embeddings = _as_matrix(embeddings, self.dim)
        keys = np.asarray(keys, np.int64)
        with self._lock:
            old = self._slots_of.pop(person_id, None)
            if old is not None:
                self._index.remove(old)
                self._labels[old] = -1
            if len(embeddings):
                slots = np.arange(self._size, self._size + len(embeddings), dtype=np.int64)
                self._grow(self._size + len(embeddings))
                self._labels[slots], self._keys[slots] = person_id, keys
                self._size += len(embeddings)
                self._slots_of[person_id] = slots
                self._index.add(slots, embeddings)

    def remove_person(self, person_id: int) -> None:
        self.set_person(person_id, np.zeros((0, self.dim), np.float32), np.zeros((0,), np.int64))

    def search(self, queries: np.ndarray, top_k: int = 5, threshold: float = 0.5, exclude_keys=()) -> list[MatchResult]:
        """(Q, 128) queries -> one MatchResult per query, at most ``top_k`` people each."""
        queries = _as_matrix(queries, self.dim)
        with self._lock:
            labels, keys = self._labels[: self._size], self._keys[: self._size]
            exclude = np.flatnonzero(np.isin(keys, list(exclude_keys))) if exclude_keys else None
            n_people = len(self._slots_of)
            results = []
            for query in queries:
                results.append(MatchResult(self._best_people(query, top_k, n_people, labels, exclude), threshold))
        return results

    def _best_people(self, query, top_k, n_people, labels, exclude) -> list[Candidate]:
        """Top ``top_k`` distinct people: fetch more embeddings until enough people show up."""
        want = min(top_k, n_people)
        fetch = 8 * top_k
        while True:
            scores, slots = self._index.search(query[None], fetch, exclude_ids=exclude)
            found = slots[0] >= 0
            best: dict[int, tuple[float, int]] = {}
            for slot, score in zip(slots[0][found], scores[0][found]):
                person = int(labels[slot])
                if person not in best:  # hits come best first, so the first is the person's best
                    best[person] = (float(score), int(self._keys[slot]))
            if len(best) >= want or fetch >= len(self._index):
                break
            fetch *= 4
        return [Candidate(person, score, key) for person, (score, key) in list(best.items())[:top_k]]

    def _grow(self, size: int) -> None:
        if size > len(self._labels):
            capacity = max(size, 2 * len(self._labels), 1024)
            self._labels = np.concatenate([self._labels, np.full(capacity - len(self._labels), -1, np.int64)])
            self._keys = np.concatenate([self._keys, np.full(capacity - len(self._keys), -1, np.int64)])


def embeddings_from_blobs(blobs, dim: int = 128) -> np.ndarray:
    """Stored embedding blobs (bytes of ``dim`` float32 each) -> (N, dim) float32, a writable copy."""
    data = b"".join(bytes(b) for b in blobs)
    return np.frombuffer(data, dtype=np.float32).reshape(-1, dim).copy()


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Of two L2-normalised (128,) embeddings."""
    return float(np.dot(np.asarray(a, np.float32), np.asarray(b, np.float32)))
