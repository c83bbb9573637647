"""django-q tasks of training (queued by dotted path); the work is in ``training.services``."""


def run_training(version_id: int) -> str:
    from . import services

    return services.run_training(version_id)


def enrollment_changed() -> None:
    """The gallery changed (queued by people.services after an approval or a deletion): retrain, debounced."""
    from . import services

    services.enrollment_changed()


def redact_pending() -> dict:
    """Photos were deleted: take every one noted so far out of the model versions' label maps."""
    from . import redaction

    return redaction.redact_pending()


def forget_deleted_faces(face_ids=None, since=None) -> dict:
    """Photos were deleted: take their embeddings out of every model version's label map (``since``:
    when the oldest was added; versions finished before it are not read). Queued by the code before
    ``redact_pending``: kept for tasks still in a broker."""
    from . import redaction

    return redaction.forget_deleted_faces(face_ids, since)
