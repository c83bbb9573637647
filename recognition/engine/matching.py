"""Open-set matching of face embeddings against an enrolled gallery."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

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
    """Enrolled embeddings, (N, dim) float32 L2-normalised (128 FaceNet, 256 fused), each labelled with a person id.

    Cosine search through an ``EmbeddingIndex`` (exact for small galleries, FAISS IVF past
    ``IndexSettings.exact_below``); a person's score is the best score among their embeddings.
    Updates are incremental (add/remove one person's embeddings, no rebuild) and happen under the
    index's lock, so a search never sees half an update.

    The index's ids are slots. Slots 0..B-1 are the base, grouped by person (``_people`` sorted with
    each person's ``_starts``/``_ends``), as ``replace`` built it or ``open`` mapped it from a
    snapshot directory written by ``save``: the arrays may be read-only memory maps shared between
    processes. Slots from B on were added since; ``_changed`` holds the current slots of every
    person changed since the base (empty: gone), so nothing per person is kept for the base.
    """

    FILES = ("index.faiss", "labels.npy", "keys.npy", "people.npy", "starts.npy", "ends.npy")

    def __init__(self, dim: int = 128, index_settings: IndexSettings = IndexSettings()):
        self.dim = dim
        self._lock = threading.RLock()
        self._index = EmbeddingIndex(dim, index_settings)
        empty = np.zeros((0,), np.int64)
        self._base_labels, self._base_keys = empty, empty  # person id and caller's key (FaceImage pk) per base slot
        self._people, self._starts, self._ends = empty, empty, empty
        self._labels, self._keys = empty, empty  # the same for slots B, B+1, ... (added since)
        self._size = 0  # added slots in use
        self._changed: dict[int, np.ndarray] = {}
        self._n_people = 0

    def __len__(self) -> int:
        return len(self._index)

    @property
    def person_ids(self) -> set[int]:
        with self._lock:
            people = set(self._people.tolist()) - set(self._changed)
            return people | {p for p, slots in self._changed.items() if len(slots)}

    def contains(self, person_ids) -> np.ndarray:
        """(P,) person ids -> (P,) bool: who has faces in the gallery now (without building a set of everyone)."""
        person_ids = np.asarray(person_ids, np.int64)
        with self._lock:
            where = np.searchsorted(self._people, person_ids)
            inside = where < len(self._people)
            found = np.zeros(len(person_ids), bool)
            found[inside] = self._people[where[inside]] == person_ids[inside]
            if self._changed:
                changed = np.fromiter(self._changed, np.int64, len(self._changed))
                for i in np.flatnonzero(np.isin(person_ids, changed)):
                    found[i] = len(self._changed[int(person_ids[i])]) > 0
            return found

    @property
    def people_count(self) -> int:
        return self._n_people

    @property
    def index(self) -> EmbeddingIndex:
        return self._index

    # ---- building, saving, opening -----------------------------------------------------------

    def replace(self, embeddings: np.ndarray, labels: np.ndarray, keys: np.ndarray | None = None) -> None:
        embeddings = _as_matrix(embeddings, self.dim)
        labels = np.asarray(labels, np.int64)
        keys = np.arange(len(labels), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)
        if not (len(embeddings) == len(labels) == len(keys)):
            raise ValueError("embeddings, labels and keys must have the same length")
        order = np.argsort(labels, kind="stable")
        with self._lock:
            self._set_base(labels[order], keys[order])
            self._index.reset(np.arange(len(labels), dtype=np.int64), embeddings[order])

    def _set_base(self, labels: np.ndarray, keys: np.ndarray, people=None, starts=None, ends=None) -> None:
        if people is None:
            people, starts, counts = np.unique(labels, return_index=True, return_counts=True)
            ends = starts + counts
        self._base_labels, self._base_keys = labels, keys
        self._people, self._starts, self._ends = people, starts, ends
        self._labels = self._keys = np.zeros((0,), np.int64)
        self._size = 0
        self._changed = {}
        self._n_people = len(people)

    def save(self, directory: Path) -> None:
        """Write the gallery into ``directory`` (existing, empty): the index and its slot arrays.

        Only a gallery as ``replace`` built it, with nothing changed since."""
        with self._lock:
            if self._size or self._changed or self._index.frozen:
                raise ValueError("only a freshly built gallery can be saved")
            directory = Path(directory)
            self._index.save(directory / "index.faiss")
            for name, array in zip(self.FILES[1:], (self._base_labels, self._base_keys, self._people, self._starts, self._ends)):
                np.save(directory / name, np.ascontiguousarray(array, np.int64))

    @classmethod
    def open(cls, directory: Path, dim: int = 128, index_settings: IndexSettings = IndexSettings()) -> Gallery:
        """A gallery saved by ``save``, its index and arrays memory-mapped read-only (shared by every
        process that opens the same files). Changes made afterwards stay in this process."""
        directory = Path(directory)
        arrays = [np.load(directory / name, mmap_mode="r") for name in cls.FILES[1:]]
        gallery = cls(dim, index_settings)
        gallery._set_base(*arrays)
        gallery._index = EmbeddingIndex.open(directory / "index.faiss", dim, index_settings, id_limit=len(arrays[0]))
        return gallery

    @classmethod
    def rewrite_without(cls, source: Path, target: Path, person_ids=(), dim: int = 128, keys=()) -> int:
        """Copy the saved gallery in ``source`` to ``target`` (existing, empty) without these people's
        embeddings and without the embeddings of these keys (single faces): they are removed from the
        index before it is written, and their slots' labels and keys are set to -1; a person left with
        no embedding is dropped from the people arrays. Returns how many embeddings were removed."""
        import faiss

        source, target = Path(source), Path(target)
        index = faiss.read_index(str(source / "index.faiss"))  # a private, writable copy
        labels, slot_keys, people, starts, ends = (np.load(source / name) for name in cls.FILES[1:])
        drop = np.isin(people, np.asarray(list(person_ids), np.int64))
        slots = np.concatenate([np.arange(a, b) for a, b in zip(starts[drop], ends[drop])] or [np.zeros(0, np.int64)])
        slots = np.union1d(slots, np.flatnonzero(np.isin(slot_keys, np.asarray(list(keys), np.int64)) & (slot_keys >= 0)))
        removed = int(index.remove_ids(faiss.IDSelectorBatch(slots.astype(np.int64)))) if len(slots) else 0
        labels[slots], slot_keys[slots] = -1, -1
        live = np.concatenate([[0], np.cumsum(labels >= 0)])
        drop |= live[ends] == live[starts]  # nobody left in their slots
        faiss.write_index(index, str(target / "index.faiss"))
        for name, array in zip(cls.FILES[1:], (labels, slot_keys, people[~drop], starts[~drop], ends[~drop])):
            np.save(target / name, array)
        return removed

    # ---- changes -------------------------------------------------------------------------------

    def _slots(self, person_id: int) -> np.ndarray:
        """The person's slots now (empty if they have none)."""
        if person_id in self._changed:
            return self._changed[person_id]
        i = int(np.searchsorted(self._people, person_id))
        if i < len(self._people) and self._people[i] == person_id:
            slots = np.arange(self._starts[i], self._ends[i], dtype=np.int64)
            return slots[self._base_labels[slots] >= 0]  # a photo deleted from a saved gallery left its slot empty
        return np.zeros((0,), np.int64)

    def set_person(self, person_id: int, embeddings: np.ndarray, keys: np.ndarray) -> None:
        """Replace one person's embeddings (an empty array removes them)."""
        embeddings = _as_matrix(embeddings, self.dim)
        keys = np.asarray(keys, np.int64)
        with self._lock:
            old = self._slots(person_id)
            if len(old):
                self._index.remove(old)
            slots = np.zeros((0,), np.int64)
            if len(embeddings):
                base = len(self._base_labels)
                slots = np.arange(base + self._size, base + self._size + len(embeddings), dtype=np.int64)
                self._grow(self._size + len(embeddings))
                self._labels[slots - base], self._keys[slots - base] = person_id, keys
                self._size += len(embeddings)
                self._index.add(slots, embeddings)
            self._changed[person_id] = slots
            self._n_people += (len(slots) > 0) - (len(old) > 0)

    def remove_person(self, person_id: int) -> None:
        self.set_person(person_id, np.zeros((0, self.dim), np.float32), np.zeros((0,), np.int64))

    # ---- search --------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, top_k: int = 5, threshold: float = 0.5, exclude_keys=(), nprobe: int | None = None
    ) -> list[MatchResult]:
        """(Q, D) queries -> one MatchResult per query, at most ``top_k`` people each. ``nprobe``: IVF
        cells to scan (None: the index's default); fewer suit a screening search that only looks for
        scores far above the bulk (see ``IndexSettings.screen_nprobe``)."""
        queries = _as_matrix(queries, self.dim)
        with self._lock:
            exclude = None
            if exclude_keys:
                wanted = np.asarray(list(exclude_keys), np.int64)
                exclude = np.concatenate(
                    [
                        np.flatnonzero(np.isin(self._base_keys, wanted)),
                        np.flatnonzero(np.isin(self._keys[: self._size], wanted)) + len(self._base_labels),
                    ]
                )
            results = []
            for query in queries:
                results.append(MatchResult(self._best_people(query, top_k, self._n_people, exclude, nprobe), threshold))
        return results

    def _label(self, slot: int) -> int:
        base = len(self._base_labels)
        return int(self._base_labels[slot]) if slot < base else int(self._labels[slot - base])

    def _key(self, slot: int) -> int:
        base = len(self._base_keys)
        return int(self._base_keys[slot]) if slot < base else int(self._keys[slot - base])

    def _best_people(self, query, top_k, n_people, exclude, nprobe=None) -> list[Candidate]:
        """Top ``top_k`` distinct people: fetch more embeddings until enough people show up."""
        want = min(top_k, n_people)
        fetch = 8 * top_k
        while True:
            scores, slots = self._index.search(query[None], fetch, exclude_ids=exclude, nprobe=nprobe)
            found = slots[0] >= 0
            best: dict[int, tuple[float, int]] = {}
            for slot, score in zip(slots[0][found], scores[0][found]):
                person = self._label(int(slot))
                if person not in best:  # hits come best first, so the first is the person's best
                    best[person] = (float(score), self._key(int(slot)))
            if len(best) >= want or fetch >= len(self._index):
                break
            fetch *= 4
        return [Candidate(person, score, key) for person, (score, key) in list(best.items())[:top_k]]

    def _grow(self, size: int) -> None:
        if size > len(self._labels):
            capacity = max(size, 2 * len(self._labels), 1024)
            self._labels = np.concatenate([self._labels, np.full(capacity - len(self._labels), -1, np.int64)])
            self._keys = np.concatenate([self._keys, np.full(capacity - len(self._keys), -1, np.int64)])


def embeddings_from_blobs(blobs, dim: int | None = None) -> np.ndarray:
    """Stored embedding blobs (bytes of ``dim`` float32 each) -> (N, dim) float32, a writable copy.

    ``dim`` (128 FaceNet, 256 fused) defaults to the first blob's length; blobs of another length
    raise ValueError, so embeddings of two embedders are never mixed into one matrix."""
    parts = [bytes(b) for b in blobs]
    if dim is None:
        dim = len(parts[0]) // 4 if parts else 128
    if any(len(p) != 4 * dim for p in parts):
        raise ValueError(f"embeddings of different lengths (expected {dim} float32 each): two embedders mixed")
    return np.frombuffer(b"".join(parts), dtype=np.float32).reshape(-1, dim).copy()


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Of two L2-normalised (D,) embeddings."""
    return float(np.dot(np.asarray(a, np.float32), np.asarray(b, np.float32)))
