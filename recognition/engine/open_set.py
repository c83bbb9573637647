"""Open-set thresholds per search: how high a stranger's BEST score climbs in a gallery of N faces.

A stranger is compared with every enrolled face; a false accept happens when any one of them
reaches the threshold. With ``p(t)`` the chance that one impostor pair (two different people)
scores at least ``t``, a search over N faces accepts a stranger with probability

    P(max >= t) = 1 - (1 - p(t)) ** N

(independent pairs). The gallery's faces of one person are correlated, so counting faces, not
people, overstates the rate a little: the threshold errs on the strict side. ``p(t)`` comes from an
``ImpostorTail``: the empirical distribution of impostor cosine similarities, and past its top
scores, for the rates no sample can show (1% per search at 1M faces needs ``p ~ 1e-8``), a Gaussian
tail: on LFW the impostor score rises close to linearly in the normal quantile from p = 1e-2 to
1e-6 (0.383, 0.511, 0.609, 0.686, 0.774 per decade), where an exponential tail would overshoot.
Plain numpy and the standard library, no Django.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Points of the empirical part, log-spaced in the tail probability (a few KB as JSON).
_GRID_POINTS = 48
# The empirical part stops where this many scores are left above it (rarer quantiles are noise).
_TOP_SCORES = 30
_NORMAL = NormalDist()


def _z(p: float) -> float:
    """The standard normal quantile with ``p`` above it."""
    return -_NORMAL.inv_cdf(p)


def _upper(z: float) -> float:
    """P(a standard normal >= z), accurate far out."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class ImpostorTail:
    """The upper tail of per-pair impostor cosine similarities.

    ``scores`` (descending) at tail probabilities ``probabilities`` (ascending: P(score >= s)),
    empirical down to the ``_TOP_SCORES``-th highest score; above ``scores[0]`` a Gaussian tail: the
    score rises by ``scale`` per standard deviation of the normal quantile (fitted on the empirical
    tail below 5%, anchored at ``scores[0]``)."""

    n_pairs: int
    scores: tuple[float, ...]
    probabilities: tuple[float, ...]
    scale: float
    source: str = ""

    @classmethod
    def from_scores(cls, impostor: np.ndarray, source: str = "") -> ImpostorTail:
        """Impostor scores (any shape, cosine similarities of pairs of different people) -> their tail."""
        values = np.sort(np.asarray(impostor, np.float64).ravel())[::-1]
        n = len(values)
        if n < 100:
            raise ValueError(f"{n} impostor scores are too few to describe a tail (at least 100).")
        p_top = _TOP_SCORES / n
        probabilities = np.geomspace(p_top, 0.5, _GRID_POINTS)
        scores = values[np.clip(np.round(probabilities * n).astype(int), 0, n - 1)]
        scores = np.minimum.accumulate(scores)  # descending
        # the score is close to linear in the normal quantile out in the tail (a Gaussian tail);
        # fitted where the sample still has many scores above each point
        fit = probabilities <= 0.05
        if fit.sum() < 4:
            fit = np.arange(len(probabilities)) < 4
        z = np.array([_z(p) for p in probabilities[fit]])
        slope = float(np.polyfit(z, scores[fit], 1)[0])
        return cls(n, tuple(float(s) for s in scores), tuple(float(p) for p in probabilities), max(slope, 1e-3), source)

    def pair_far(self, threshold: float) -> float:
        """P(one impostor pair scores >= ``threshold``)."""
        u, p_u = self.scores[0], self.probabilities[0]
        if threshold >= u:
            return _upper(_z(p_u) + (threshold - u) / self.scale)
        if threshold <= self.scores[-1]:
            return float(self.probabilities[-1])  # the body: at least this; thresholds never sit there
        # log p is interpolated on the score (scores ascending for np.interp)
        return float(np.exp(np.interp(threshold, self.scores[::-1], np.log(self.probabilities[::-1]))))

    def threshold_at_pair_far(self, pair_far: float) -> float:
        """The lowest score ``t`` with ``pair_far(t) <= pair_far``."""
        u, p_u = self.scores[0], self.probabilities[0]
        if pair_far <= p_u:
            return float(u + self.scale * (_z(max(pair_far, 1e-300)) - _z(p_u)))
        if pair_far >= self.probabilities[-1]:
            return float(self.scores[-1])
        return float(np.interp(np.log(pair_far), np.log(self.probabilities), self.scores))

    def as_dict(self) -> dict:
        return {
            "n_pairs": self.n_pairs,
            "scores": [round(s, 6) for s in self.scores],
            "probabilities": [float(f"{p:.6g}") for p in self.probabilities],
            "scale": round(self.scale, 6),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ImpostorTail:
        return cls(
            int(data["n_pairs"]),
            tuple(float(s) for s in data["scores"]),
            tuple(float(p) for p in data["probabilities"]),
            float(data["scale"]),
            str(data.get("source", "")),
        )


def search_far(pair_far: float, gallery_size: int) -> float:
    """P(a stranger's best score over ``gallery_size`` faces reaches the threshold), pairs independent."""
    if gallery_size <= 0:
        return 0.0
    pair_far = min(max(pair_far, 0.0), 1.0)
    if pair_far >= 1.0:
        return 1.0
    return float(-np.expm1(gallery_size * np.log1p(-pair_far)))


def pair_far_for_search(target: float, gallery_size: int) -> float:
    """The per-pair rate that gives ``target`` per search over ``gallery_size`` faces."""
    return float(-np.expm1(np.log1p(-target) / max(gallery_size, 1)))


@dataclass(frozen=True)
class OpenSet:
    """The threshold in force for one gallery size and what it is expected to let through."""

    threshold: float  # cosine similarity
    calibrated: float | None  # the per-search threshold for the target (None: no tail known)
    floor: float  # the threshold it never goes below (the per-pair one chosen before)
    target_far: float  # per search
    expected_far: float | None  # per search, at ``threshold``, for ``gallery_size`` faces
    gallery_size: int


def worst_pair_far(tails: list[ImpostorTail], threshold: float) -> float:
    """The highest per-pair rate of several tails (e.g. LFW strangers and the site's own people)."""
    return max(tail.pair_far(threshold) for tail in tails)


def calibrate(tails: list[ImpostorTail], gallery_size: int, target_far: float, floor: float) -> OpenSet:
    """The threshold for ``target_far`` false accepts per search over ``gallery_size`` faces, never
    below ``floor``, with the rate expected there. Several tails: each must hold the target."""
    if not tails:
        return OpenSet(floor, None, floor, target_far, None, gallery_size)
    per_pair = pair_far_for_search(target_far, gallery_size)
    calibrated = max(tail.threshold_at_pair_far(per_pair) for tail in tails)
    threshold = max(calibrated, floor)
    return OpenSet(threshold, calibrated, floor, target_far, expected_far(tails, threshold, gallery_size), gallery_size)


def expected_far(tails: list[ImpostorTail], threshold: float, gallery_size: int) -> float | None:
    if not tails:
        return None
    return search_far(worst_pair_far(tails, threshold), gallery_size)


def cross_person_scores(embeddings: np.ndarray, labels: np.ndarray, max_faces: int = 3000, seed: int = 0) -> np.ndarray:
    """Cosine similarities of every pair of faces of different people among at most ``max_faces``
    faces (a fixed-seed sample above that: ~4.5M pairs, bounded time and memory).

    ``embeddings`` (N, D) float32 L2-normalised, ``labels`` (N,) person ids -> (pairs,) float32."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    if len(embeddings) > max_faces:
        pick = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_faces, replace=False))
        embeddings, labels = embeddings[pick], labels[pick]
    if len(embeddings) < 2:
        return np.zeros(0, np.float32)
    scores = embeddings @ embeddings.T
    upper = np.triu(np.ones(scores.shape, bool), 1) & (labels[:, None] != labels[None, :])
    return scores[upper].astype(np.float32)
