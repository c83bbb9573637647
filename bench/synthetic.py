"""Synthetic face embeddings shaped like real ones, for galleries of up to a million faces.

A Gaussian model fitted to real FaceNet embeddings: identity centres drawn around the real people's
mean with the covariance of the real person means, and each face its identity's centre plus noise
with the pooled covariance of real faces around their person's mean, then L2-normalised. The
genuine and impostor similarity levels this gives are printed next to the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _shrunk_cholesky(cov: np.ndarray, shrink: float) -> np.ndarray:
    d = len(cov)
    target = np.trace(cov) / d * np.eye(d)
    return np.linalg.cholesky((1 - shrink) * cov + shrink * target + 1e-9 * np.eye(d))


@dataclass
class EmbeddingModel:
    mean: np.ndarray  # (d,) mean of the identity centres
    centre_factor: np.ndarray  # (d, d) Cholesky factor of the centres' covariance
    face_factor: np.ndarray  # (d, d) Cholesky factor of a face's deviation from its centre

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray, shrink: float = 0.2) -> EmbeddingModel:
        """From real (N, d) embeddings of people with several faces each."""
        people = np.unique(labels)
        means = np.stack([embeddings[labels == p].mean(axis=0) for p in people])
        residuals = embeddings - means[np.searchsorted(people, labels)]
        face_cov = residuals.T @ residuals / max(1, len(embeddings) - len(people))
        return cls(means.mean(axis=0), _shrunk_cholesky(np.cov(means.T), shrink), _shrunk_cholesky(face_cov, shrink))

    # few real people (the ten fixture ones) need more shrinkage towards a round covariance
    @classmethod
    def fit_fallback(cls, embeddings: np.ndarray, labels: np.ndarray) -> EmbeddingModel:
        return cls.fit(embeddings, labels, shrink=0.5)

    def centres(self, n_people: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (self.mean + rng.standard_normal((n_people, len(self.mean)), np.float32) @ self.centre_factor.T).astype(np.float32)

    def faces(self, centres: np.ndarray, people: np.ndarray, seed: int, chunk: int = 200_000) -> np.ndarray:
        """One new face for each entry of ``people`` (indices into ``centres``)."""
        rng = np.random.default_rng(seed)
        out = np.empty((len(people), len(self.mean)), np.float32)
        factor = self.face_factor.T.astype(np.float32)
        for start in range(0, len(people), chunk):
            part = people[start : start + chunk]
            noise = rng.standard_normal((len(part), len(self.mean)), np.float32) @ factor
            out[start : start + chunk] = _normalise(centres[part] + noise)
        return out

    def sample(self, n_people: int, per_person: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(n_people * per_person, d) embeddings and their person index."""
        people = np.repeat(np.arange(n_people), per_person)
        return self.faces(self.centres(n_people, seed), people, seed + 1), people


def similarity_levels(embeddings: np.ndarray, labels: np.ndarray, pairs: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Mean cosine similarity of random same-person and different-person pairs."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(labels), (2, pairs * 20))
    same = (labels[i] == labels[j]) & (i != j)
    diff = labels[i] != labels[j]
    sims = np.einsum("nd,nd->n", embeddings[i], embeddings[j])
    return float(sims[same][:pairs].mean()), float(sims[diff][:pairs].mean())
