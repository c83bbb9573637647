"""LFW 10-fold verification protocol (the official ``pairs.txt``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    fold: int
    left: str  # path relative to the images folder
    right: str
    same: bool


def read_pairs(lfw_dir: Path, images: str = "images_deepfunneled", per_fold: int | None = None) -> list[Pair]:
    """Parse ``pairs.txt``: a header "folds n", then per fold n same-person and n different-person lines.

    ``per_fold``: only the first that many same-person and different-person pairs of each fold (a
    quick run). ValueError when the file is not in that format."""
    lines = (Path(lfw_dir) / "pairs.txt").read_text().split("\n")
    try:
        folds, n = (int(v) for v in lines[0].split())
    except ValueError as err:
        raise ValueError(f"pairs.txt starts with {lines[0]!r}, not the number of folds and of pairs per fold") from err
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    if len(rows) != folds * n * 2:
        raise ValueError(f"pairs.txt has {len(rows)} pairs, expected {folds * n * 2}")

    def path(name: str, number: str) -> str:
        return f"{images}/{name}/{name}_{int(number):04d}.jpg"

    pairs = []
    for i, row in enumerate(rows):
        if per_fold and i % n >= per_fold:
            continue
        fold = i // (2 * n)
        if len(row) == 3:
            pairs.append(Pair(fold, path(row[0], row[1]), path(row[0], row[2]), True))
        elif len(row) == 4:
            pairs.append(Pair(fold, path(row[0], row[1]), path(row[2], row[3]), False))
        else:
            raise ValueError(f"pairs.txt line {i + 2} has {len(row)} fields, not 3 (one person) or 4 (two people)")
    return pairs


@dataclass
class VerificationResult:
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    threshold_mean: float
    auc: float
    far_thresholds: dict[str, float]  # e.g. {"0.001": t}: similarity at which FAR on impostor pairs is at most that

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def ten_fold_accuracy(similarities: np.ndarray, same: np.ndarray, folds: np.ndarray) -> VerificationResult:
    """Best threshold on 9 folds, accuracy on the 10th; plus operating points over all pairs."""
    from sklearn.metrics import roc_auc_score

    similarities = np.asarray(similarities, np.float64)
    same = np.asarray(same, bool)
    candidates = np.unique(np.round(similarities, 4))
    accs, thresholds = [], []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        train_acc = [((similarities[train] >= t) == same[train]).mean() for t in candidates]
        best = candidates[int(np.argmax(train_acc))]
        thresholds.append(float(best))
        accs.append(float(((similarities[test] >= best) == same[test]).mean()))
    impostor = np.sort(similarities[~same])
    far_thresholds = {}
    for far in (0.01, 0.001):
        # the smallest threshold whose false-accept rate on impostor pairs is at most `far`
        k = int(np.floor(far * len(impostor)))
        far_thresholds[str(far)] = float(impostor[len(impostor) - k - 1] + 1e-6) if len(impostor) else 1.0
    return VerificationResult(
        accuracy_mean=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        fold_accuracies=accs,
        fold_thresholds=thresholds,
        threshold_mean=float(np.mean(thresholds)),
        auc=float(roc_auc_score(same, similarities)),
        far_thresholds=far_thresholds,
    )
