"""A FAISS index of enrolled face embeddings: top-k cosine search that scales to millions of faces.

Small galleries are searched exactly (a flat inner-product index). Once a gallery passes
``exact_below`` embeddings it moves, once, to an inverted-file index (IVF: k-means cells, only the
``nprobe`` cells nearest a query are scanned) with 16-bit float storage, which at 1M faces answers in
a few milliseconds of CPU with recall@1 > 0.99 against exact search, in about 250 MiB (BENCHMARKS.md).
Adding and removing embeddings is incremental in both forms; the IVF cells are retrained only when
the gallery has grown ``retrain_growth`` times past the size they were trained on.

An index can be saved to a file and opened again memory-mapped (``EmbeddingIndex.open``): the
inverted lists stay in the page cache, shared by every process on the machine that opens the same
file, and are never copied into a process. Such an index is read-only underneath; what changes
after it was saved lives beside it: added embeddings in a small exact overlay, removed ones as
tombstones the search skips.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IndexSettings:
    exact_below: int = 50_000  # embeddings; below this a flat scan is both exact and fast enough
    # IVF cells scanned per query: the larger of these (recall/speed trade-off, see BENCHMARKS.md)
    min_nprobe: int = 64
    probe_fraction: float = 0.15
    # Cells a screening search scans: one that only asks "does anybody score above the threshold in
    # force?" (the enrollment's mislabel check), where the threshold is far above the impostor bulk,
    # so a hit lies in the query's nearest cells (recall per nprobe: "Screening searches", BENCHMARKS).
    screen_nprobe: int = 32
    cells_per_sqrt: float = 1.0  # nlist = cells_per_sqrt * sqrt(N), at least 256
    train_sample: int = 100_000  # embeddings the k-means sees (faiss wants >= 39 per cell)
    retrain_growth: float = 8.0
    storage: str = "fp16"  # "flat" (float32), "fp16" or "sq8" (8-bit) vectors inside the IVF cells


class EmbeddingIndex:
    """Top-k inner-product search over (N, dim) float32 L2-normalised embeddings with int64 ids.

    ``add``/``remove`` change the index in place; a lock keeps searches from seeing half an update.
    """

    def __init__(self, dim: int = 128, settings: IndexSettings = IndexSettings()):
        self.dim = dim
        self.settings = settings
        self._lock = threading.RLock()
        self._trained_on = 0
        self._index = self._new_flat()
        # set by ``open``: the saved index is read-only; changes go to an overlay and tombstones
        self._frozen = False
        self._overlay = None  # exact index of embeddings added since it was saved
        self._tombstones: set[int] = set()  # ids removed from the read-only part
        self._skip = None  # faiss selector over the tombstones, rebuilt when they change

    # ---- files -----------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the index to ``path`` (an index opened from a file, with changes on top, cannot be saved)."""
        import faiss

        if self._frozen:
            raise ValueError("an opened index is read-only; build a new one to save it")
        with self._lock:
            faiss.write_index(self._index, str(path))

    @classmethod
    def open(cls, path, dim: int = 128, settings: IndexSettings = IndexSettings(), id_limit: int | None = None) -> EmbeddingIndex:
        """An index saved by ``save``, its inverted lists memory-mapped read-only (IVF; a flat index,
        small by construction, is read into memory). Its ids are below ``id_limit`` (default: its size)."""
        import faiss

        index = cls(dim, settings)
        loaded = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if loaded.d != dim:
            raise ValueError(f"{path} holds {loaded.d}-d vectors, not {dim}-d")
        index._index = loaded
        index._trained_on = int(loaded.ntotal) if isinstance(loaded, faiss.IndexIVF) else 0
        index._frozen = True
        index._id_limit = int(loaded.ntotal) if id_limit is None else int(id_limit)
        return index

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def overlay_size(self) -> int:
        """Embeddings added since the index was saved (0 unless opened from a file)."""
        return 0 if self._overlay is None else int(self._overlay.ntotal)

    # ---- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones) + self.overlay_size

    @property
    def kind(self) -> str:
        return "exact" if self._trained_on == 0 else f"ivf{self._index.nlist}-{self.settings.storage}"

    @property
    def nprobe(self) -> int:
        """IVF cells scanned per query (0 while exact)."""
        if not self._trained_on:
            return 0
        s = self.settings
        return min(self._index.nlist, max(s.min_nprobe, round(s.probe_fraction * self._index.nlist)))

    def memory_bytes(self) -> int:
        """Bytes the index holds (vectors, ids, cells), measured by serialising it."""
        import faiss

        with self._lock:
            return int(faiss.serialize_index(self._index).nbytes)

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) queries -> scores (Q, k) float32 best first, ids (Q, k) int64; id -1 pads missing hits."""
        import faiss

        queries = _as_matrix(queries, self.dim)
        _small_work(len(queries) <= 16)
        if self._frozen:
            return self._search_frozen(queries, k, exclude_ids, nprobe)
        with self._lock:
            k = max(1, min(k, len(self)))
            params = None
            selector = None
            if exclude_ids is not None and len(exclude_ids):
                selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(exclude_ids, np.int64)))
            if self._trained_on:
                params = faiss.SearchParametersIVF(nprobe=nprobe or self.nprobe, sel=selector)
            elif selector is not None:
                params = faiss.SearchParameters(sel=selector)
            scores, ids = self._index.search(queries, k, params=params)
        return scores, ids

    # ---- updates ---------------------------------------------------------------------------

    def add(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Add (N, dim) embeddings under new ids (int64; an id already present is the caller's bug)."""
        embeddings = _as_matrix(embeddings, self.dim)
        ids = np.ascontiguousarray(ids, np.int64)
        if len(ids) != len(embeddings):
            raise ValueError("ids and embeddings must have the same length")
        if not len(ids):
            return
        _small_work(len(ids) <= 1000)
        with self._lock:
            if self._frozen:
                if self._overlay is None:
                    self._overlay = self._new_flat()
                self._overlay.add_with_ids(embeddings, ids)
                return
            total = len(self) + len(ids)
            if (self._trained_on == 0 and total >= self.settings.exact_below) or (
                self._trained_on and total >= self.settings.retrain_growth * self._trained_on
            ):
                self._rebuild(extra_ids=ids, extra=embeddings)
            else:
                self._index.add_with_ids(embeddings, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove embeddings by id; returns how many were removed."""
        import faiss

        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return 0
        _small_work(True)
        with self._lock:
            if not self._frozen:
                return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
            removed = 0 if self._overlay is None else int(self._overlay.remove_ids(faiss.IDSelectorBatch(ids)))
            # the rest are in the read-only part: the caller removes only ids it holds
            below = [int(i) for i in ids.tolist() if 0 <= i < self._frozen_limit and i not in self._tombstones]
            if below:
                self._tombstones.update(below)
                self._skip = None
            return removed + len(below)

    def reset(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Replace the whole content (one bulk load, IVF-trained if large enough)."""
        with self._lock:
            self._trained_on = 0
            self._frozen, self._overlay, self._tombstones, self._skip = False, None, set(), None
            self._index = self._new_flat()
            self.add(ids, embeddings)

    @property
    def _frozen_limit(self) -> int:
        """Ids of the read-only part are below this (``Gallery`` numbers them 0..N-1 when saving)."""
        return self._id_limit if self._frozen else 0

    def _search_frozen(self, queries, k, exclude_ids, nprobe) -> tuple[np.ndarray, np.ndarray]:
        """The read-only part (skipping tombstones and excluded ids) and the overlay, merged."""
        import faiss

        with self._lock:
            k = max(1, min(k, len(self)))
            skip = self._skip
            if exclude_ids is not None and len(exclude_ids):
                skip = self._selector(self._tombstones.union(np.asarray(exclude_ids, np.int64).tolist()))
            elif skip is None and self._tombstones:
                skip = self._skip = self._selector(self._tombstones)
            if self._trained_on:
                params = faiss.SearchParametersIVF(nprobe=nprobe or self.nprobe, sel=skip)
            else:
                params = faiss.SearchParameters(sel=skip) if skip is not None else None
            scores, ids = self._index.search(queries, k, params=params)
            if self.overlay_size:
                params = None
                if exclude_ids is not None and len(exclude_ids):
                    params = faiss.SearchParameters(sel=self._selector(np.asarray(exclude_ids, np.int64).tolist()))
                more_scores, more_ids = self._overlay.search(queries, min(k, self.overlay_size), params=params)
                scores, ids = _merge(scores, ids, more_scores, more_ids, k)
        return scores, ids

    @staticmethod
    def _selector(ids):
        import faiss

        return faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(ids, np.int64)))

    # ---- internals -------------------------------------------------------------------------

    def _new_flat(self):
        import faiss

        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        import faiss
        from faiss.contrib.inspect_tools import get_invlist

        if len(self) == 0:
            return np.zeros((0,), np.int64), np.zeros((0, self.dim), np.float32)
        if not self._trained_on:
            n = len(self)
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            return ids, self._index.index.reconstruct_n(0, n)
        parts_ids, parts_vectors = [], []
        for cell in range(self._index.nlist):
            ids, codes = get_invlist(self._index.invlists, cell)
            if len(ids):
                parts_ids.append(ids.astype(np.int64))
                if self.settings.storage == "flat":
                    parts_vectors.append(codes.view(np.float32).reshape(-1, self.dim))
                else:
                    parts_vectors.append(self._index.sq.decode(codes))
        return np.concatenate(parts_ids), np.concatenate(parts_vectors)

    def _rebuild(self, extra_ids: np.ndarray, extra: np.ndarray) -> None:
        import faiss

        ids, vectors = self._all_vectors()
        ids = np.concatenate([ids, extra_ids])
        vectors = np.concatenate([vectors, extra])
        n = len(ids)
        s = self.settings
        nlist = max(256, int(s.cells_per_sqrt * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(self.dim)
        if s.storage == "flat":
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            qtype = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}[s.storage]
            # by_residual=False: cells store the vectors themselves, so they can be decoded for a retrain
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, qtype, faiss.METRIC_INNER_PRODUCT, False)
        ivf.cp.niter = 10  # k-means iterations: cells need to be good, not optimal
        faiss.omp_set_num_threads(_cpu_count())  # the bulk build may use every core
        rng = np.random.default_rng(0)
        sample = vectors if n <= s.train_sample else vectors[rng.choice(n, s.train_sample, replace=False)]
        ivf.train(sample)
        # IVF keeps the caller's ids in its cells, so it needs no id map (and removal keeps them valid)
        ivf.add_with_ids(vectors, ids)
        self._index = ivf
        self._trained_on = n


def _merge(scores_a, ids_a, scores_b, ids_b, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (Q, ka) and (Q, kb) result sets -> the best ``k`` of each row, best first (-1 ids last)."""
    scores = np.concatenate([scores_a, scores_b], axis=1)
    ids = np.concatenate([ids_a, ids_b], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return np.where(ids < 0, -np.inf, scores).astype(np.float32), ids


def _small_work(small: bool) -> None:
    """One query or one person's faces is quicker on the calling thread than fanned out to OpenMP
    workers, whose spin-waiting also fights TensorFlow and other requests for the same cores.
    (``omp_set_num_threads`` is per calling thread.)"""
    import faiss

    faiss.omp_set_num_threads(1 if small else _cpu_count())


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _as_matrix(embeddings: np.ndarray, dim: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(embeddings, np.float32).reshape(-1, dim))
