"""django-q tasks of recognition (queued by dotted path): processing an enrollment photo."""

import logging

from people.models import FaceImage

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
        FaceImage.objects.filter(pk=face_image_id).update(
            status=FaceImage.Status.REJECTED, reason_code="processing_failed", reason=f"Processing failed: {err}"[:500]
        )
        raise
    if processed is None:
        return "deleted"  # erased while it was processed: nothing was written back
    return processed.status
