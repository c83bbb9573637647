"""Score fusion of two embedders (FaceNet and dlib's descriptor), learned on labelled pairs.

A z-normalised weighted sum of the two cosines, ``w * z(cos_facenet) + (1 - w) * z(cos_dlib)``, is
an increasing affine function of a plain weighted cosine sum ``v * cos_facenet + (1 - v) * cos_dlib``
(``ScoreFusion.cosine_weight``), which is the inner product of the concatenated templates
``[sqrt(v) * f_facenet, sqrt(1 - v) * f_dlib]`` (``fuse_templates``): a fused 256-d unit vector
per face, so one inner-product index still serves every search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

WEIGHT_GRID = np.round(np.linspace(0.0, 1.0, 41), 3)  # steps of 0.025


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold t (decide "same" when score >= t) with the best accuracy on these pairs, and
    that accuracy. Candidates are the scores themselves; ties go to the lowest, as in
    ``lfw.ten_fold_accuracy`` (which tries each rounded score in turn; this sorts once)."""
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    order = np.argsort(scores, kind="stable")
    s, g = scores[order], same[order]
    # threshold at s[i]: pairs i.. are accepted. correct = genuine at or above + impostors below
    genuine_at_or_above = np.cumsum(g[::-1])[::-1]
    impostors_below = np.concatenate([[0], np.cumsum(~g)[:-1]])
    first_of_value = np.concatenate([[True], s[1:] != s[:-1]])  # a threshold between equal scores is no threshold
    correct = np.where(first_of_value, genuine_at_or_above + impostors_below, -1)
    best = int(np.argmax(correct))
    # accepting nothing (threshold above every score) is a candidate too
    if int((~g).sum()) > correct[best]:
        return float(s[-1] + 1e-6), float((~g).mean())
    return float(s[best]), float(correct[best] / len(s))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """(threshold, true-accept rate) at the lowest threshold whose false-accept rate on the impostor
    pairs is at most ``far`` (the same operating point as ``lfw.ten_fold_accuracy``'s)."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    impostor = np.sort(scores[~same])
    k = int(np.floor(far * len(impostor)))
    threshold = float(impostor[len(impostor) - k - 1] + 1e-6)
    return threshold, float(np.mean(scores[same] >= threshold))


def _separation(scores: np.ndarray, same: np.ndarray) -> float:
    genuine, impostor = scores[same], scores[~same]
    return float((genuine.mean() - impostor.mean()) / np.sqrt((genuine.var() + impostor.var()) / 2.0))


def logistic_log_loss(scores: np.ndarray, same: np.ndarray, iterations: int = 30) -> float:
    """Mean log-loss of the best logistic curve ``P(same) = 1 / (1 + exp(-(a * score + b)))`` on
    these pairs (a and b by Newton's method, a tiny ridge keeping them finite on separable data)."""
    from scipy.special import expit

    scores, y = np.asarray(scores, np.float64), np.asarray(same, np.float64)
    x = np.stack([(scores - scores.mean()) / (scores.std() or 1.0), np.ones_like(scores)], axis=1)
    beta = np.zeros(2)
    for _ in range(iterations):
        p = expit(x @ beta)
        gradient = x.T @ (p - y) + 1e-6 * beta
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    margin = x @ beta
    # log(1 + exp(-m)) for genuine pairs, log(1 + exp(m)) for impostors, without overflow
    return float(np.mean(np.logaddexp(0.0, np.where(y > 0, -margin, margin))))


# How ``ScoreFusion.fit`` ranks the candidate weights on the training pairs (higher tuple wins):
# "accuracy" at the weight's own best threshold (ties: separation) is a step function of the
# weight, decided by a handful of pairs; the others are smoother in the weight.
CRITERIA = ("accuracy", "logloss", "tar", "separation")


def _criterion(scores: np.ndarray, same: np.ndarray, criterion: str) -> tuple[float, ...]:
    if criterion == "accuracy":
        return best_threshold(scores, same)[1], _separation(scores, same)
    if criterion == "logloss":  # held-in log-loss of a logistic curve on the fused score
        return (-logistic_log_loss(scores, same),)
    if criterion == "tar":  # TAR at FAR 0.1% on the training pairs (ties: accuracy, separation)
        return tar_at_far(scores, same, 0.001)[1], best_threshold(scores, same)[1], _separation(scores, same)
    if criterion == "separation":  # d' of the genuine and impostor scores
        return (_separation(scores, same),)
    raise ValueError(f"unknown weight criterion {criterion!r}; choose one of {CRITERIA}")


@dataclass(frozen=True)
class ScoreFusion:
    """``weight * z(facenet) + (1 - weight) * z(dlib)``, with z from the training scores' mean and std."""

    weight: float
    facenet_mean: float
    facenet_std: float
    dlib_mean: float
    dlib_std: float

    @classmethod
    def fit(
        cls, facenet: np.ndarray, dlib: np.ndarray, same: np.ndarray, grid: np.ndarray = WEIGHT_GRID, criterion: str = "accuracy"
    ) -> ScoreFusion:
        """Choose the weight that ranks best by ``criterion`` (``CRITERIA``) on these labelled pairs'
        cosines; by default the best accuracy at its own best threshold, ties going to the
        better-separated genuine and impostor scores."""
        facenet, dlib, same = np.asarray(facenet, np.float64), np.asarray(dlib, np.float64), np.asarray(same, bool)
        stats = dict(
            facenet_mean=float(facenet.mean()),
            facenet_std=float(facenet.std()),
            dlib_mean=float(dlib.mean()),
            dlib_std=float(dlib.std()),
        )
        candidates = []
        for weight in grid:
            scores = cls(weight=float(weight), **stats).score(facenet, dlib)
            candidates.append((*_criterion(scores, same, criterion), float(weight)))
        return cls(weight=max(candidates)[-1], **stats)

    def score(self, facenet: np.ndarray, dlib: np.ndarray) -> np.ndarray:
        """Cosines of pairs, (N,) and (N,) -> (N,) fused scores (z units)."""
        return (
            self.weight * (np.asarray(facenet) - self.facenet_mean) / self.facenet_std
            + (1.0 - self.weight) * (np.asarray(dlib) - self.dlib_mean) / self.dlib_std
        )

    @property
    def cosine_weight(self) -> float:
        """v with ``score = scale * (v * cos_facenet + (1 - v) * cos_dlib) + offset``, scale > 0."""
        a, b = self.weight / self.facenet_std, (1.0 - self.weight) / self.dlib_std
        return a / (a + b)

    def cosine_threshold(self, threshold: float) -> float:
        """A threshold on ``score`` as the same threshold on the fused templates' inner product."""
        a, b = self.weight / self.facenet_std, (1.0 - self.weight) / self.dlib_std
        offset = -a * self.facenet_mean - b * self.dlib_mean
        return (threshold - offset) / (a + b)


def fuse_templates(facenet: np.ndarray, dlib: np.ndarray, cosine_weight: float) -> np.ndarray:
    """(N, 128) FaceNet + (N, 128) dlib unit embeddings -> (N, 256) float32, L2-normalised:
    ``[sqrt(v) * facenet, sqrt(1 - v) * dlib]``, whose inner products are ``v * cos_facenet +
    (1 - v) * cos_dlib`` (the renormalisation only removes float rounding: the parts are unit)."""
    fused = np.concatenate(
        [np.sqrt(cosine_weight) * np.asarray(facenet, np.float64), np.sqrt(1.0 - cosine_weight) * np.asarray(dlib, np.float64)],
        axis=1,
    )
    return (fused / np.linalg.norm(fused, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class CrossValidated:
    """A scorer learned on 9 folds and tested on the 10th, for each fold."""

    fold_accuracies: list[float]
    scores: np.ndarray  # (pairs,) each pair's score from the model that did not see its fold
    correct: np.ndarray  # (pairs,) bool: decided right at its fold's threshold
    models: list

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.fold_accuracies))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.fold_accuracies))


def cross_validate(
    fit: Callable[[np.ndarray], tuple[object, Callable[[np.ndarray], np.ndarray]]], same: np.ndarray, folds: np.ndarray
) -> CrossValidated:
    """``fit(train_mask) -> (model, scorer)``; ``scorer(mask)`` gives the scores of those pairs.

    For each fold: fit on the other folds, pick the best-accuracy threshold on them, test on it."""
    same = np.asarray(same, bool)
    scores = np.zeros(len(same))
    correct = np.zeros(len(same), bool)
    accuracies, models = [], []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        model, scorer = fit(train)
        threshold, _ = best_threshold(scorer(train), same[train])
        scores[test] = scorer(test)
        correct[test] = (scores[test] >= threshold) == same[test]
        accuracies.append(float(correct[test].mean()))
        models.append(model)
    return CrossValidated(accuracies, scores, correct, models)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test: (pairs only ``a`` got right, pairs only ``b`` got right, two-sided p)."""
    from scipy.stats import binomtest

    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(b_correct & ~a_correct))
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)
