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
        for made, previous in ((face.crop, "_previous_crop"), (face.region, "_previous_region")):
            if made and made.name != getattr(face, previous, ""):
                made.storage.delete(made.name)  # made by this run, never recorded on the row
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


def run_embedder_switch(switch_id: int) -> str:
    """An embedder switch (recognition/embedder_switch.py), on the training cluster."""
    from .embedder_switch import run_switch

    return run_switch(switch_id)


def catch_up_served_embedder() -> str:
    """After a switch or a rollback: faces still lacking the served embedder."""
    from .embedder_switch import catch_up_served

    return catch_up_served()


def watch_embedder_switches() -> str:
    """Scheduled: resume switches whose worker died; start the switch FACE_EMBEDDER asks for."""
    from .embedder_switch import follow_setting, resume_dead_switches

    resumed = resume_dead_switches()
    started = follow_setting()
    return f"resumed {resumed}; " + (f"started switch {started.pk} to {started.embedder}" if started else "nothing to start")
