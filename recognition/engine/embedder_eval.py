"""Two embedders side by side on a site's own enrolled faces: genuine and impostor searches.

For one embedder's templates of the enrolled faces (the same faces for both embedders) and the
cosine threshold it serves at (its calibrated per-search threshold for this gallery's size):

- **genuine searches** (leave-one-out): every face of a person with at least two faces searches
  the gallery without itself; it is *found* when the best match is at or above the threshold and
  is the same person. FRR = searches not found / genuine searches.
- **impostor searches** (leave-person-out): every face searches the gallery without any face of
  its person; a *false accept* is a best score at or above the threshold (somebody else would be
  named). FAR = false accepts / impostor searches (per search, the rate the open-set calibration
  targets).

The rule (``not_worse``): the new embedder may replace the old one when neither rate rises by
more than the tolerance, ``max(2 / searches, 0.5 %)`` per rate. Errors come in pairs on a small
gallery: two people who look alike at the threshold make two impostor errors (each one's search
finds the other), and a person of two faces who is missed is missed from both sides; so one such
pair more than the old embedder made is noise there and accepted, a second is not. On a large
gallery (past 400 searches) the rate may rise by half a point. Plain numpy, no Django.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Faces scored per block of the (N, N) similarity matrix (bounded memory at any size).
_BLOCK = 2048
MIN_TOLERANCE = 0.005
TOLERATED_ERRORS = 2  # one pair of searches (see the module)


@dataclass(frozen=True)
class SearchErrors:
    threshold: float
    faces: int
    people: int
    genuine_searches: int
    not_found: int
    impostor_searches: int
    false_accepts: int

    @property
    def frr(self) -> float | None:
        return self.not_found / self.genuine_searches if self.genuine_searches else None

    @property
    def far(self) -> float | None:
        return self.false_accepts / self.impostor_searches if self.impostor_searches else None

    def as_dict(self) -> dict:
        return {**asdict(self), "frr": self.frr, "far": self.far}


def search_errors(embeddings: np.ndarray, labels: np.ndarray, threshold: float) -> SearchErrors:
    """``embeddings`` (N, D) float32 L2-normalised, ``labels`` (N,) person ids -> the genuine and
    impostor search errors at the cosine ``threshold`` (see the module)."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    repeated = counts[inverse] >= 2
    not_found = false_accepts = 0
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        scores = embeddings[start:stop] @ embeddings.T  # (b, N)
        same = labels[start:stop, None] == labels[None, :]
        rows = np.arange(stop - start)
        scores[rows, rows + start] = -np.inf  # never itself
        # genuine: the best of the rest is at or above the threshold and is the same person
        best = scores.argmax(axis=1)
        found = (scores[rows, best] >= threshold) & same[rows, best]
        not_found += int((~found & repeated[start:stop]).sum())
        # impostor: the best of the other people's faces reaches the threshold
        others = np.where(same, -np.inf, scores).max(axis=1) if n > 1 else np.full(stop - start, -np.inf)
        false_accepts += int((others >= threshold).sum())
    people = len(counts)
    return SearchErrors(
        threshold=float(threshold),
        faces=n,
        people=people,
        genuine_searches=int(repeated.sum()),
        not_found=not_found,
        impostor_searches=n if people > 1 else 0,
        false_accepts=false_accepts,
    )


def tolerance(searches: int) -> float:
    """How much a rate may rise before the new embedder counts as worse (see the module)."""
    return max(TOLERATED_ERRORS / searches, MIN_TOLERANCE) if searches else 0.0


def not_worse(old: SearchErrors, new: SearchErrors) -> tuple[bool, str]:
    """The switch rule: (True, why) when ``new`` is not worse than ``old`` on FRR and FAR."""
    reasons = []
    for label, a, b, searches in (
        ("FRR", old.frr, new.frr, new.genuine_searches),
        ("FAR", old.far, new.far, new.impostor_searches),
    ):
        if a is None or b is None:
            reasons.append(f"{label}: no searches to compare")
            continue
        allowed = tolerance(searches)
        if b > a + allowed + 1e-12:
            return False, f"{label} rises from {a:.2%} to {b:.2%} (more than the {allowed:.2%} allowed over {searches} searches)"
        reasons.append(f"{label} {a:.2%} -> {b:.2%} (tolerance {allowed:.2%})")
    return True, "; ".join(reasons)
