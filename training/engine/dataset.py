"""The enrolled faces a training run learns from, and their split into training and held-out parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FaceSet:
    """Enrolled faces: ``embeddings`` (N, 128) float32 L2-normalised, ``labels`` (N,) person ids,
    ``keys`` (N,) FaceImage ids, ``crops`` (N, 160, 160, 3) uint8 RGB or None when not loaded."""

    embeddings: np.ndarray
    labels: np.ndarray
    keys: np.ndarray
    crops: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> FaceSet:
        return FaceSet(
            self.embeddings[index], self.labels[index], self.keys[index], None if self.crops is None else self.crops[index]
        )


@dataclass
class Split:
    train: FaceSet
    held_out: FaceSet
    train_only_people: list[int]  # people with a single image: kept in training, not evaluated


def split_per_person(faces: FaceSet, held_out_fraction: float = 0.3, seed: int = 0) -> Split:
    """Stratified split: every person keeps at least one image in training; people with one image
    are training-only. Each person with n >= 2 images gives max(1, round(n * fraction)) to held-out,
    capped at n - 1. Deterministic for a seed and the set of keys (order does not matter)."""
    rng = np.random.default_rng(seed)
    # each person's faces in key order, in one sort (not one scan of every face per person)
    order = np.lexsort((faces.keys, faces.labels))
    people, starts = np.unique(faces.labels[order], return_index=True)
    ends = np.r_[starts[1:], len(order)]
    train_idx, held_idx, train_only = [], [], []
    for person, start, end in zip(people, starts, ends):
        idx = order[start:end]
        if len(idx) < 2:
            train_idx.extend(idx.tolist())
            train_only.append(int(person))
            continue
        idx = rng.permutation(idx)
        n_held = min(len(idx) - 1, max(1, round(len(idx) * held_out_fraction)))
        held_idx.extend(idx[:n_held].tolist())
        train_idx.extend(idx[n_held:].tolist())
    return Split(
        faces.subset(np.array(sorted(train_idx), dtype=np.int64)),
        faces.subset(np.array(sorted(held_idx), dtype=np.int64)),
        sorted(train_only),
    )


def sample_people(faces: FaceSet, max_people: int, seed: int = 0) -> FaceSet:
    """The faces of at most ``max_people`` people (a fixed-seed sample of people, all their faces)."""
    people = np.unique(faces.labels)
    if len(people) <= max_people:
        return faces
    chosen = np.random.default_rng(seed).choice(people, max_people, replace=False)
    return faces.subset(np.flatnonzero(np.isin(faces.labels, chosen)))
