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
        services.process_face_image(face)
    except Exception as err:
        log.exception("processing face image %s failed", face_image_id)
        FaceImage.objects.filter(pk=face_image_id).update(
            status=FaceImage.Status.REJECTED, reason_code="processing_failed", reason=f"Processing failed: {err}"[:500]
        )
        raise
    return face.status


def requeue_pending(older_than_seconds: int = 60) -> int:
    """Queue again photos still pending after a while (their task was lost: broker down, worker killed)."""
    from datetime import timedelta

    from django.utils import timezone

    from . import services

    stuck = FaceImage.objects.filter(
        status=FaceImage.Status.PENDING, updated_at__lt=timezone.now() - timedelta(seconds=older_than_seconds)
    ).values_list("id", flat=True)
    ids = list(stuck)
    for pk in ids:
        services.queue_processing(pk)
    return len(ids)
