"""django-q tasks of enrollment kept by people: re-queueing lost photos (the schedule of migration
0002 names people.tasks.requeue_pending). Processing a photo is recognition.tasks.process_face_image."""

import logging

from .models import FaceImage

log = logging.getLogger(__name__)


def process_face_image(face_image_id: int) -> str:
    """A task queued before enrollment processing moved to recognition.tasks: queued again there."""
    from . import services

    return "forwarded" if services.queue_processing(face_image_id) else "not queued"


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


def prune_gallery_changes() -> int:
    """Delete change-log rows older than GALLERY_CHANGE_KEEP_HOURS (schedule of migration 0006); the
    newest row is always kept, so the log's position survives. Returns how many were deleted."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from .models import GalleryChange

    newest = GalleryChange.objects.order_by("-seq").values_list("seq", flat=True).first()
    cutoff = timezone.now() - timedelta(hours=settings.GALLERY_CHANGE_KEEP_HOURS)
    deleted, _ = GalleryChange.objects.filter(created_at__lt=cutoff).exclude(seq=newest).delete()
    return deleted
