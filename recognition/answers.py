"""What the recognition service answers, as the API sends it: ``Recognition`` (who is in an image)
and ``Verification`` (same person?), plain dataclasses built by ``recognition.services``, each with
the summary the audit log keeps of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from security.audit import AuditSummary


@dataclass(frozen=True)
class NamedCandidate:
    person_id: int
    name: str
    similarity: float  # cosine similarity, or the softmax head's probability (see scored_by)


@dataclass(frozen=True)
class RecognizedFace:
    box: list[int]  # [x, y, w, h] in original image pixels
    landmarks: dict[str, list[float]]
    detection_score: float
    match: NamedCandidate | None
    candidates: list[NamedCandidate]  # at or above the threshold, unless all were asked for (staff)
    margin: float | None  # best minus second-best person's similarity
    scored_by: str


@dataclass(frozen=True)
class Recognition:
    """The answer to "who is in this image?", as the API sends it."""

    faces: list[RecognizedFace]
    threshold: float  # the threshold in force, in the served recognizer's units
    recogniser: str  # the API's key keeps its spelling: the served recognizer's name
    model_version: int | None
    embedder: str
    gallery_size: int  # the gallery this answer was matched against (faces)
    # The share of searches by somebody not enrolled expected to name a person at ``threshold`` in a
    # gallery of this size (None when a softmax head serves), and the target the threshold was set for.
    expected_false_accepts_per_search: float | None = None
    target_false_accepts_per_search: float | None = None

    def answer(self) -> dict:
        """The API's JSON answer."""
        return asdict(self)

    def audit_summary(self) -> AuditSummary:
        """What the audit log keeps: faces found and the real matches (the people it names)."""
        matches = [{"person_id": f.match.person_id, "similarity": f.match.similarity} for f in self.faces if f.match]
        result = {"faces": len(self.faces), "matches": matches, "threshold": self.threshold, "model_version": self.model_version}
        return AuditSummary(result, tuple(m["person_id"] for m in matches))


@dataclass(frozen=True)
class VerifiedFace:
    field: str
    box: list[int]
    detection_score: float
    faces_found: int


@dataclass(frozen=True)
class Verification:
    """The answer to "are these the same person?" (two images) or "is this the person?" (one image
    and a person: then ``person_id``, ``name`` and ``compared_images`` are set)."""

    verified: bool
    similarity: float
    threshold: float
    faces: list[VerifiedFace] = field(default_factory=list)
    person_id: int | None = None
    name: str | None = None
    compared_images: int | None = None

    def answer(self) -> dict:
        """The API's JSON answer: the person's fields only when a person was asked about."""
        data = asdict(self)
        if self.person_id is None:
            for key in ("person_id", "name", "compared_images"):
                data.pop(key)
        return data

    def audit_summary(self) -> AuditSummary:
        """A comparison of two images (the /verify/ page's) is logged without its result: who, when
        and the status are enough to account for the call, and the page promises the result is not
        kept. A face checked against a person is a decision about that person: it keeps the outcome
        and is logged against them (their export and erasure find it)."""
        if self.person_id is None:
            return AuditSummary({})
        keys = ("verified", "similarity", "threshold", "person_id", "compared_images")
        return AuditSummary({key: getattr(self, key) for key in keys}, (self.person_id,))
