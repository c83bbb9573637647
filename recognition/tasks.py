"""django-q tasks of recognition (queued by dotted path): processing an enrollment photo."""

import logging

from django.db import transaction

from people.models import FaceImage, GalleryChange

from . import enrollment

log = logging.getLogger(__name__)


def process_face_image(face_image_id: int) -> str:
    face = FaceImage.objects.select_related("person").filter(pk=face_image_id).first()
    if face is None:
        return "deleted"  # erased before the worker got to it
    if not face.image:
        # Imported embeddings, or a photo deleted by retention: nothing to re-read, and the row's
        # embedding (its place in the gallery) is kept as it is.
        return "no photo on file"
    try:
        processed = enrollment.process_face_image(face)
    except Exception as err:
        log.exception("processing face image %s failed", face_image_id)
        if face.crop and face.crop.name != getattr(face, "_previous_crop", ""):
            face.crop.storage.delete(face.crop.name)  # made by this run, never recorded on the row
        with transaction.atomic():
            # it may have been in the gallery (re-processing): it leaves it, and every process is told
            FaceImage.objects.filter(pk=face_image_id).update(
                status=FaceImage.Status.REJECTED, reason_code="processing_failed", reason=f"Processing failed: {err}"[:500]
            )
            GalleryChange.objects.record(GalleryChange.Kind.FACE, [face.person_id])
        raise
    if processed is None:
        return "deleted"  # erased while it was processed: nothing was written back
    return processed.status


def write_gallery_snapshot(force: bool = False) -> str:
    """Save the gallery snapshot every process maps at start (recognition/gallery.py): queued after a
    bulk import, and every few minutes by schedule (written only when enough changed)."""
    from .gallery import write_snapshot

    report = write_snapshot(force=force)
    if report.written:
        return f"snapshot of {report.faces} faces of {report.people} people at change {report.seq} ({report.seconds} s)"
    return f"not written: {report.reason}"
