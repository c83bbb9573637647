"""django-q tasks of enrollment (queued by dotted path)."""

import logging

from .models import FaceImage

log = logging.getLogger(__name__)


def process_face_image(face_image_id: int) -> str:
    from . import services

    face = FaceImage.objects.select_related("person").filter(pk=face_image_id).first()
    if face is None:
        return "deleted"  # erased before the worker got to it
    try:
        processed = services.process_face_image(face)
    except Exception as err:
        log.exception("processing face image %s failed", face_image_id)
        if face.crop and face.crop.name != getattr(face, "_previous_crop", ""):
            face.crop.storage.delete(face.crop.name)  # made by this run, never recorded on the row
        FaceImage.objects.filter(pk=face_image_id).update(
            status=FaceImage.Status.REJECTED, reason_code="processing_failed", reason=f"Processing failed: {err}"[:500]
        )
        raise
    if processed is None:
        return "deleted"  # erased while it was processed: nothing was written back
    return processed.status


def requeue_pending(older_than_seconds: int = 60) -> int:
    """Queue again the pending photos whose task was plausibly lost; return how many.

    Runs every minute (migration 0002). A photo is re-queued when
    - it was never queued (the broker was down when it was stored) and is older than
      ``older_than_seconds``; or
    - it was queued more than ENROLLMENT_REQUEUE_AFTER_SECONDS ago and the broker holds no waiting
      task: it is neither waiting nor, after that long, being processed (a restarted Redis or a
      killed worker lost it).
    A long backlog (a 1000-photo import) keeps the broker non-empty and is never queued twice.
    """
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from . import services

    now = timezone.now()
    pending = FaceImage.objects.filter(status=FaceImage.Status.PENDING)
    ids = list(
        pending.filter(queued_at__isnull=True, created_at__lt=now - timedelta(seconds=older_than_seconds)).values_list(
            "id", flat=True
        )
    )
    overdue = pending.filter(queued_at__lt=now - timedelta(seconds=settings.ENROLLMENT_REQUEUE_AFTER_SECONDS))
    if overdue.exists() and services.broker_backlog() == 0:
        ids += overdue.values_list("id", flat=True)
    queued = sum(services.queue_processing(pk) for pk in ids)
    if ids:
        log.info("re-queued %s of %s pending photos whose processing was lost", queued, len(ids))
    return queued
