"""Fit every recognizer on the same split and evaluate it on the same held-out and unknown faces."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .baselines import LBPH, Eigenfaces
from .dataset import FaceSet, Split
from .evaluation import UNKNOWN, Evaluation, evaluate, open_set_score
from .heads import NearestNeighbour, SiameseHead, SoftmaxHead, TripletAdapter

# The recognizers recognition can serve (recognition.services: the gallery with a cosine threshold,
# or the softmax head with a probability threshold), and the ones a run may choose between on
# held-out data; a winner that cannot be served would be reported, not chosen.
SERVABLE = ("nearest_neighbour", "softmax_head")
PRODUCTION_CANDIDATES = ("nearest_neighbour", "softmax_head")


@dataclass
class Outcome:
    name: str
    input: str  # "embeddings" or "crops"
    train_seconds: float | None = None
    evaluation: Evaluation | None = None
    fitted: object = None
    error: str = ""
    scores: np.ndarray | None = None  # (P, C) on the held-out + unknown probes
    truth: np.ndarray | None = None  # (P,) class index or UNKNOWN

    def row(self) -> dict:
        row = {"name": self.name, "input": self.input, "train_seconds": self.train_seconds, "error": self.error}
        if self.evaluation is not None:
            row.update(self.evaluation.summary())
            row["open_set_score"] = open_set_score(self.evaluation)
        return row


@dataclass
class Comparison:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    production: str = "nearest_neighbour"
    reason: str = ""

    def table(self) -> list[dict]:
        return [o.row() for o in self.outcomes.values()]


def recognizers() -> list[tuple[str, Callable[[], object], str]]:
    return [
        ("nearest_neighbour", NearestNeighbour, "embeddings"),
        ("softmax_head", SoftmaxHead, "embeddings"),
        ("triplet_adapter", TripletAdapter, "embeddings"),
        ("siamese_head", SiameseHead, "embeddings"),
        ("lbph", LBPH, "crops"),
        ("eigenfaces", Eigenfaces, "crops"),
    ]


def truth_of(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    index = np.searchsorted(classes, labels).clip(0, max(len(classes) - 1, 0))
    return (
        np.where((len(classes) > 0) & (classes[index] == labels), index, UNKNOWN)
        if len(classes)
        else np.full(len(labels), UNKNOWN)
    )


def compare(
    split: Split,
    unknown: FaceSet | None,
    target_far: float,
    only: tuple[str, ...] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Comparison:
    """Fit each recognizer on ``split.train``; score ``split.held_out`` + ``unknown`` probes.

    One failing recognizer (e.g. too little data for Siamese pairs) is recorded, not fatal."""
    probes = (
        split.held_out if unknown is None or len(unknown) == 0 else _concat(split.held_out, unknown, unknown_label=-(1 << 40))
    )
    comparison = Comparison()
    for name, factory, kind in recognizers():
        if only is not None and name not in only:
            continue
        outcome = comparison.outcomes[name] = Outcome(name, kind)
        if kind == "crops" and (split.train.crops is None or probes.crops is None):
            outcome.error = "face crops are not available"
            continue
        progress(name)
        try:
            started = time.perf_counter()
            recognizer = factory().fit(split.train)
            outcome.train_seconds = round(time.perf_counter() - started, 3)
            scores = recognizer.scores(probes.crops if kind == "crops" else probes.embeddings)
            outcome.scores, outcome.truth = scores, truth_of(probes.labels, recognizer.classes)
            outcome.evaluation = evaluate(
                scores, truth_of(probes.labels, recognizer.classes), [int(c) for c in recognizer.classes], target_far
            )
            outcome.fitted = recognizer
        except Exception as err:  # one recognizer's failure is a row in the report, not a failed run
            outcome.error = f"{type(err).__name__}: {err}"
    comparison.production, comparison.reason = choose_production(comparison)
    return comparison


def choose_production(comparison: Comparison, pinned: str = "auto") -> tuple[str, str]:
    """The production recognizer: the candidate with the best open-set score on held-out data
    (identification rate and impostor rejection at its calibrated threshold), then top-1 accuracy;
    a tie goes to nearest neighbour, which needs no retraining for a new enrollment. A winner that
    recognition cannot serve is named in the reason and nearest neighbour kept.

    ``pinned`` (a servable name, from TRAINING_RECOGNIZER) overrides the choice when that
    recognizer was fitted; the reason still reports how each candidate scored."""
    if pinned != "auto":
        outcome = comparison.outcomes.get(pinned)
        if pinned not in SERVABLE or outcome is None or outcome.fitted is None:
            problem = f"it was not fitted ({outcome.error})" if outcome is not None and outcome.error else "it is not available"
            name, reason = choose_production(comparison)
            return name, f"TRAINING_RECOGNIZER asks for {pinned}, but {problem}. {reason}"
        scores = "; ".join(
            f"{n}: open-set score {open_set_score(o.evaluation):.3f}"
            for n, o in comparison.outcomes.items()
            if n in PRODUCTION_CANDIDATES and o.evaluation is not None and o.evaluation.n_known_probes
        )
        return pinned, f"Pinned by TRAINING_RECOGNIZER={pinned}" + (f" (on held-out data: {scores})." if scores else ".")
    scored = [
        (open_set_score(o.evaluation), o.evaluation.top1_accuracy or 0.0, name == "nearest_neighbour", name)
        for name, o in comparison.outcomes.items()
        if name in PRODUCTION_CANDIDATES and o.evaluation is not None and o.evaluation.n_known_probes
    ]
    if not scored:
        return (
            "nearest_neighbour",
            "No held-out faces to compare on (every person has a single image): nearest neighbour by default.",
        )
    scored.sort(reverse=True)
    best = scored[0]
    others = "; ".join(f"{n}: open-set score {s:.3f}, top-1 {a:.3f}" for s, a, _, n in scored)
    overall = max(
        (
            (open_set_score(o.evaluation), n)
            for n, o in comparison.outcomes.items()
            if o.evaluation is not None and o.evaluation.n_known_probes
        ),
        default=None,
    )
    if overall is not None and overall[0] > best[0] and overall[1] not in PRODUCTION_CANDIDATES:
        others += f". Best of all compared: {overall[1]} (open-set score {overall[0]:.3f}), reported only: it is not a production candidate"
    if best[3] not in SERVABLE:
        return "nearest_neighbour", (
            f"{best[3]} scored best on held-out data ({others}), but recognition serves the nearest-neighbour "
            "gallery only, so nearest neighbour stays in production."
        )
    if len(scored) > 1 and scored[1][:2] == best[:2]:
        reason = f"Tie on held-out data ({others}); nearest neighbour preferred: it uses new enrollments without retraining."
        return best[3], reason
    return best[3], f"Best open-set score on held-out data ({others})."


def _concat(known: FaceSet, unknown: FaceSet, unknown_label: int) -> FaceSet:
    crops = None if known.crops is None or unknown.crops is None else np.concatenate([known.crops, unknown.crops])
    return FaceSet(
        np.concatenate([known.embeddings, unknown.embeddings]),
        np.concatenate([known.labels, np.full(len(unknown), unknown_label, np.int64)]),
        np.concatenate([known.keys, unknown.keys]),
        crops,
    )
