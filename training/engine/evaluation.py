"""Scoring a recognizer the same way whatever it is: identification, open-set threshold, ROC, plots.

Every recognizer is reduced to a score matrix ``(P, C)``: for each probe face, a score per enrolled
person where higher means "more likely this person" (cosine similarity, probability, or minus a
distance). Known probes carry the index of their person in ``classes``; unknown probes (people not
enrolled) carry -1.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

UNKNOWN = -1


@dataclass
class Evaluation:
    top1_accuracy: float | None
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    threshold: float | None
    target_far: float
    far: float | None  # searches whose best wrong person scores >= ``threshold`` (see genuine_impostor)
    frr: float | None  # genuine (probe, own person) claims rejected at ``threshold``
    identification_rate: float | None  # known probes named correctly AND above threshold
    unknown_rejection: float | None  # unknown probes whose best score is below threshold
    auc: float | None
    n_known_probes: int
    n_unknown_probes: int
    n_genuine: int
    n_impostor: int
    confusion: list[list[int]]
    per_person: list[dict]
    roc: dict  # {"fpr": [...], "tpr": [...]} (thinned for storage)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> dict:
        """The headline numbers, for tables."""
        keys = ("top1_accuracy", "macro_f1", "threshold", "far", "frr", "identification_rate", "unknown_rejection", "auc")
        return {k: getattr(self, k) for k in keys}


def genuine_impostor(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genuine scores (each known probe vs its own person) and impostor scores (each probe's best
    score among the people it is NOT: for an unknown probe, everybody). An open-set search accepts
    a false match exactly when that best impostor score reaches the threshold, so FAR here is the
    share of searches that would name a wrong person (FPIR), not of single pair comparisons,
    which would understate it by roughly the gallery size."""
    scores = np.asarray(scores, np.float64)
    truth = np.asarray(truth)
    known = truth != UNKNOWN
    rows = np.flatnonzero(known)
    genuine = scores[rows, truth[known]]
    others = scores.copy()
    others[rows, truth[known]] = -np.inf
    impostor = others.max(axis=1) if others.shape[1] else np.zeros(0)
    return genuine, impostor[np.isfinite(impostor)]


def threshold_at_far(impostor: np.ndarray, target_far: float) -> float | None:
    """The lowest threshold at which at most ``target_far`` of impostor scores are accepted (score >= t).

    With n impostor scores the achievable FAR moves in steps of 1/n; fewer than 1/target_far scores
    means the threshold sits just above the highest impostor score (FAR 0 on this data)."""
    impostor = np.sort(np.asarray(impostor, np.float64))[::-1]
    if len(impostor) == 0:
        return None
    allowed = int(np.floor(target_far * len(impostor)))  # how many impostors may be accepted
    if allowed >= len(impostor):
        return float(impostor[-1])
    return float(np.nextafter(impostor[allowed], np.inf))


def evaluate(
    scores: np.ndarray, truth: np.ndarray, classes: list, target_far: float = 0.01, threshold: float | None = None
) -> Evaluation:
    """Score matrix (P, C) and truth (P,) class indices or -1 -> every metric.

    The threshold is calibrated on these scores for ``target_far`` unless one is given (to score a
    previous version's threshold on the same data)."""
    from sklearn.metrics import auc as area
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_curve

    scores = np.asarray(scores, np.float64).reshape(len(truth), len(classes))
    truth = np.asarray(truth, np.int64)
    known = truth != UNKNOWN
    n_classes = len(classes)
    pred = scores.argmax(axis=1) if n_classes else np.zeros(len(truth), np.int64)
    best = scores.max(axis=1) if n_classes else np.full(len(truth), -np.inf)
    genuine, impostor = genuine_impostor(scores, truth)
    if threshold is None:
        threshold = threshold_at_far(impostor, target_far)

    top1 = precision = recall = f1 = None
    confusion = np.zeros((n_classes, n_classes), np.int64)
    if known.any():
        top1 = float(np.mean(pred[known] == truth[known]))
        labels = np.arange(n_classes)
        present = np.unique(truth[known])  # macro over the people that have held-out probes
        p, r, f, _ = precision_recall_fscore_support(truth[known], pred[known], labels=present, zero_division=0)
        precision, recall, f1 = float(p.mean()), float(r.mean()), float(f.mean())
        confusion = confusion_matrix(truth[known], pred[known], labels=labels)

    far = frr = ident = rejection = None
    if threshold is not None:
        far = float(np.mean(impostor >= threshold)) if len(impostor) else None
        frr = float(np.mean(genuine < threshold)) if len(genuine) else None
        if known.any():
            ident = float(np.mean((pred[known] == truth[known]) & (best[known] >= threshold)))
        if (~known).any():
            rejection = float(np.mean(best[~known] < threshold))

    roc_auc, roc = None, {"fpr": [], "tpr": []}
    if len(genuine) and len(impostor):
        y = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
        fpr, tpr, _ = roc_curve(y, np.r_[genuine, impostor])
        roc_auc = float(area(fpr, tpr))
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
        roc = {"fpr": [round(float(v), 5) for v in fpr[keep]], "tpr": [round(float(v), 5) for v in tpr[keep]]}

    per_person = []
    for c, person in enumerate(classes):
        mine = known & (truth == c)
        claimed = known & (pred == c)
        per_person.append(
            {
                "person": person,
                "probes": int(mine.sum()),
                "correct": int((mine & (pred == c)).sum()),
                "recall": float(np.mean(pred[mine] == c)) if mine.any() else None,
                "precision": float(np.mean(truth[claimed] == c)) if claimed.any() else None,
            }
        )
    return Evaluation(
        top1_accuracy=top1,
        macro_precision=precision,
        macro_recall=recall,
        macro_f1=f1,
        threshold=threshold,
        target_far=target_far,
        far=far,
        frr=frr,
        identification_rate=ident,
        unknown_rejection=rejection,
        auc=roc_auc,
        n_known_probes=int(known.sum()),
        n_unknown_probes=int((~known).sum()),
        n_genuine=len(genuine),
        n_impostor=len(impostor),
        confusion=confusion.tolist(),
        per_person=per_person,
        roc=roc,
    )


def open_set_score(evaluation: Evaluation) -> float:
    """One number to compare versions on the same held-out data: the mean of the identification
    rate and the impostor rejection rate (1 - FAR) at each version's own threshold."""
    parts = [v for v in (evaluation.identification_rate, None if evaluation.far is None else 1 - evaluation.far) if v is not None]
    return float(np.mean(parts)) if parts else 0.0


def confusion_png(confusion: list[list[int]], names: list[str]) -> bytes:
    """A confusion-matrix heat map as PNG bytes (rows: true person, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion)
    n = len(names)
    size = min(14.0, 3.0 + 0.35 * n)
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
    ax.imshow(matrix if matrix.size else np.zeros((1, 1)), cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), labels=names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=names, fontsize=7)
        for i, j in zip(*np.nonzero(matrix)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Held-out confusion matrix")
    fig.tight_layout()
    return _png(fig)


def roc_png(curves: dict[str, dict], threshold_fpr: float | None = None) -> bytes:
    """ROC curves (genuine vs impostor claims) of one or more recognizers as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.subplots()
    for name, roc in curves.items():
        if roc.get("fpr"):
            ax.plot(roc["fpr"], roc["tpr"], label=name)
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    if threshold_fpr is not None:
        ax.axvline(threshold_fpr, color="#cf222e", lw=0.8, ls=":", label="target FAR")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("Held-out ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
