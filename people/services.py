"""Enrollment: storing a person's photos, approving and deleting them.

Turning a stored photo into a gallery embedding is recognition's (recognition/enrollment.py, queued
here by dotted path), as is retraining (training.tasks, queued by dotted path too).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import PurePath

from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task, schedule

from integrations.events import face_verdict
from recognition.engine import selection
from recognition.pipelines import pipeline, read_upload

from .models import FaceChoice, FaceImage, Person

log = logging.getLogger(__name__)

# Enrollment processing runs the served pipeline: recognition/enrollment.py, queued by dotted path.
PROCESS_TASK = "recognition.tasks.process_face_image"


def enroll(person: Person, upload, uploaded_by=None, process: bool = True, chosen_box: list[int] | None = None) -> FaceImage:
    """Store an uploaded photo of ``person`` and queue its processing.

    The upload is decoded first so that an unusable file is refused (ImageError) and nothing is
    written; the row and file are saved in one transaction (``photo_stored``: PersonGone if the
    person was erased meanwhile, and no photo outlives a failed or rolled-back transaction), and
    processing is queued after commit. ``chosen_box`` (see ``chosen_face_box``) names the person's
    face in a photo of several.
    """
    read_upload(upload)  # raises ImageError: nothing is stored
    upload.seek(0)
    photo = ContentFile(strip_metadata(upload.read()))
    face = FaceImage(person=person, uploaded_by=uploaded_by, original_name=safe_name(getattr(upload, "name", "")))
    if chosen_box is not None:
        face.chosen_box, face.face_choice = chosen_box, FaceChoice.STAFF
    with photo_stored(face, upload.name or "upload", photo):
        face.save()
        if process:
            transaction.on_commit(lambda: queue_processing(face.pk))
    return face


class PersonGone(Exception):
    """The person a photo was being stored for no longer exists (erased by another request
    meanwhile): nothing was stored."""


# Photos are written before their row is inserted, inside its transaction, and Django has no hook
# for a rollback: each photo written is named by a note in this folder (of the same storage) until
# its transaction commits. A note left behind is a photo whose transaction rolled back (an enclosing
# transaction, the admin's request, failed after the photo was stored) or whose process died:
# ``discard_uncommitted_photos`` deletes it unless a row refers to it.
UNCOMMITTED_NOTES = "uncommitted"
# A note younger than this may belong to a transaction still open: its row is not visible yet.
UNCOMMITTED_GRACE = timedelta(hours=1)


@contextmanager
def photo_stored(face: FaceImage, name: str, content: ContentFile) -> Iterator[None]:
    """Write ``face``'s photo for the block to save its row, with the person's row locked first.

    The person is locked (SELECT ... FOR UPDATE) before a byte is written, so an erasure and an
    upload serialise: an upload after the erasure raises PersonGone and writes nothing. If the block
    or its transaction's commit fails, the photo is deleted at once (PersonGone when the insert
    failed because the person was erased, on databases without row locks); if an enclosing
    transaction rolls back later, the photo's note leads ``discard_uncommitted_photos`` to it.
    """
    storage, field = face.image.storage, face._meta.get_field("image")
    written: list[str] = []
    committed = False

    def forget_note(note: str) -> None:
        nonlocal committed
        committed = True  # a later commit hook that raises must not take the photo of a stored row
        storage.delete(note)

    try:
        with transaction.atomic():
            if not lock_person(face.person_id):
                raise PersonGone(f"person {face.person_id} no longer exists")
            intended = field.generate_filename(face, name)
            note = storage.save(f"{UNCOMMITTED_NOTES}/{PurePath(intended).name}", ContentFile(intended.encode()))
            written.append(note)
            stored = storage.save(intended, content, max_length=field.max_length)
            written.append(stored)
            if stored != intended:  # the storage chose another name: the note must name the file
                storage.delete(note)
                storage.save(note, ContentFile(stored.encode()))
            face.image.name = stored
            transaction.on_commit(lambda: forget_note(note), robust=True)
            yield
    except BaseException as err:
        if committed:
            raise
        for stored_name in reversed(written):  # the photo first, then its note
            storage.delete(stored_name)
        face.image.name = None
        if isinstance(err, IntegrityError) and not Person.objects.filter(pk=face.person_id).exists():
            raise PersonGone(f"person {face.person_id} was erased while the photo was stored") from err
        raise


def lock_person(person_id: int | None) -> bool:
    """Lock the person's row until the transaction ends (an erasure waits; SQLite, which has one
    writer at a time, locks nothing here); False if there is no such person (erased)."""
    # NO KEY: a check-in or a rejected match referring to the person (a foreign key check) does not
    # wait for an upload; an erasure (FOR NO KEY UPDATE too) still does.
    return Person.objects.select_for_update(no_key=True).filter(pk=person_id).exists()


def discard_uncommitted_photos(names: list[str] | None = None, now=None) -> int:
    """Delete the photos whose transaction never committed; return how many.

    ``names``: photos a failed request wrote (the admin), checked at once; None: every note older
    than UNCOMMITTED_GRACE (the daily retention). A photo a row refers to is kept (its commit hook
    did not run); its note goes either way."""
    storage = FaceImage._meta.get_field("image").storage
    if names is None:
        try:
            _, notes = storage.listdir(UNCOMMITTED_NOTES)
        except FileNotFoundError:
            return 0
        cutoff = (now or timezone.now()) - UNCOMMITTED_GRACE
        notes = [f"{UNCOMMITTED_NOTES}/{n}" for n in notes if storage.get_modified_time(f"{UNCOMMITTED_NOTES}/{n}") < cutoff]
    else:
        notes = [f"{UNCOMMITTED_NOTES}/{PurePath(n).name}" for n in names if n]
    deleted = 0
    for note in notes:
        try:
            with storage.open(note, "rb") as fh:
                photo = fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            continue  # its transaction committed meanwhile
        if photo and not FaceImage.objects.filter(image=photo).exists():
            if storage.exists(photo):
                storage.delete(photo)
                deleted += 1
        storage.delete(note)
    if deleted:
        log.warning("deleted %s photo(s) whose upload's transaction was rolled back", deleted)
    return deleted


class FaceChoiceError(Exception):
    """A face_index or box that names no face of the photo; ``code`` is the API's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def chosen_face_box(upload, face_index: int | None = None, box: list[float] | None = None) -> list[int] | None:
    """The box of the face an uploader chose in a photo of several, by ``face_index`` (faces
    numbered left to right, recognition.engine.selection.reading_order) or by ``box`` (the face
    overlapping it most); None when neither is given. FaceChoiceError when it names no face,
    ImageError when the photo is unusable. The photo is processed later with this box
    (recognition/enrollment.py), so the choice holds however often it is re-processed."""
    if face_index is None and box is None:
        return None
    if face_index is not None and box is not None:
        raise FaceChoiceError("face_choice_conflict", "Give face_index or box, not both.")
    faces = selection.reading_order(pipeline().detect(read_upload(upload)))
    upload.seek(0)
    if not faces:
        raise FaceChoiceError("no_face", "No face was found in this photo.")
    listed = ", ".join(f"#{i} {f.box_ints()}" for i, f in enumerate(faces))
    if face_index is not None:
        if face_index >= len(faces):
            raise FaceChoiceError(
                "face_index_out_of_range",
                f"face_index {face_index} is out of range: the photo has {len(faces)} face(s), numbered left to right "
                f"from 0 ({listed}).",
            )
        return faces[face_index].box_ints()
    found = selection.best_overlap(faces, box)
    if found is None:
        raise FaceChoiceError("no_face_at_box", f"No face found in the photo overlaps the box {box}; faces found: {listed}.")
    return faces[found[0]].box_ints()


def choose_face(face: FaceImage, face_index: int) -> None:
    """Staff chose which of the faces found in a photo (``face.faces_found``) is the person's:
    process it again with that face, through the same checks as any photo (quality, mislabel).
    ValueError if the photo lists no such face."""
    found = face.faces_found or []
    if not 0 <= face_index < len(found):
        raise ValueError(f"this photo lists {len(found)} faces; there is no face #{face_index}.")
    if not face.image:
        raise ValueError("the original photo is no longer on file.")
    face.chosen_box, face.face_choice = list(found[face_index]), FaceChoice.STAFF
    face.status, face.reason_code, face.reason = FaceImage.Status.PENDING, "", ""
    with transaction.atomic():
        was_in_gallery = FaceImage.objects.in_gallery().filter(pk=face.pk).exists()
        face.save(update_fields=["chosen_box", "face_choice", "status", "reason_code", "reason", "updated_at"])
        if was_in_gallery:
            gallery_changed()
        transaction.on_commit(lambda: queue_processing(face.pk))


def queue_processing(face_image_id: int) -> bool:
    """Queue a photo's processing and note when; False if the broker is unreachable."""
    try:
        async_task(PROCESS_TASK, face_image_id, task_name=f"face-{face_image_id}", group="enrollment")
    except Exception as err:
        # The broker (Redis) is down: the photo is stored and stays pending, never queued; the
        # every-minute schedule people.tasks.requeue_pending queues it once the broker is back.
        log.warning("could not queue face image %s, it will be re-queued: %s", face_image_id, err)
        return False
    FaceImage.objects.filter(pk=face_image_id).update(queued_at=timezone.now())
    return True


def broker_backlog() -> int | None:
    """How many tasks wait in the django-q broker (not yet taken by a worker); None if unreachable."""
    from django_q.brokers import get_broker

    try:
        return get_broker().queue_size()
    except Exception as err:
        log.warning("could not read the task queue's length: %s", err)
        return None


# JPEG segments kept: APP0 (JFIF), APP2 (ICC colour profile), APP14 (Adobe colour transform).
# APP1 (EXIF, XMP), APP13 (IPTC captions), other APPn and comments are dropped.
_JPEG_KEPT_APP = {0xE0, 0xE2, 0xEE}
_PNG_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}


def strip_metadata(data: bytes) -> bytes:
    """The photo as stored: JPEG and PNG without their text metadata, pixels untouched.

    Captions, keywords and XMP descriptions often name other people ("President Obama and Vice
    President Biden ..."), and an erasure could not find them in someone else's photo; GPS and
    camera serials are personal data too. The EXIF orientation, which decoding honours, is kept.
    Other formats, and anything that does not parse, are stored as uploaded."""
    try:
        if data.startswith(b"\xff\xd8"):
            return _strip_jpeg(data)
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _strip_png(data)
    except (ValueError, IndexError):
        pass
    return data


def _strip_jpeg(data: bytes) -> bytes:
    out, i = [data[:2]], 2
    orientation = _jpeg_orientation(data)
    if orientation not in (None, 1):
        tiff = b"MM\x00*\x00\x00\x00\x08\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01"
        tiff += orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00"
        payload = b"Exif\x00\x00" + tiff
        out.append(b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload)
    while i < len(data):
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan: the rest is image data
            out.append(data[i:])
            return b"".join(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out.append(data[i : i + 2])
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if end > len(data):
            raise ValueError("truncated JPEG segment")
        if not ((0xE0 <= marker <= 0xEF and marker not in _JPEG_KEPT_APP) or marker == 0xFE):
            out.append(data[i:end])
        i = end
    raise ValueError("no image data")


def _jpeg_orientation(data: bytes) -> int | None:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        value = image.getexif().get(0x0112)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _strip_png(data: bytes) -> bytes:
    out, i = [data[:8]], 8
    while i < len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        if kind not in _PNG_TEXT_CHUNKS:
            out.append(data[i:end])
        i = end
        if kind == b"IEND":
            break
    return b"".join(out)


def safe_name(name: str) -> str:
    return (name or "").encode("utf-8", "replace").decode("utf-8")[-255:]


def delete_files(names: list[str]) -> None:
    """Remove stored photos, crops or regions by name (one storage holds them all)."""
    storage = FaceImage._meta.get_field("crop").storage
    for name in names:
        storage.delete(name)


RETRAIN_TASK = "training.tasks.enrollment_changed"


def gallery_changed() -> None:
    """The set of matchable faces changed: retrain (debounced) once this transaction commits."""
    transaction.on_commit(queue_retrain)


def queue_retrain() -> None:
    """Ask training for a (debounced) retrain, queued by dotted path; logged if the broker is unreachable."""
    try:
        async_task(RETRAIN_TASK, task_name="enrollment-changed", group="training")
    except Exception as err:
        # The broker (Redis) is down: a one-off schedule row in the database asks again; the
        # cluster's scheduler queues it once the broker is back. The request is never lost.
        log.warning("could not queue a retrain after a gallery change, scheduled it instead: %s", err)
        schedule(
            RETRAIN_TASK, name=f"enrollment-changed-{uuid.uuid4().hex[:12]}", schedule_type=Schedule.ONCE, next_run=timezone.now()
        )


SNAPSHOT_TASK = "recognition.tasks.write_gallery_snapshot"


def queue_gallery_snapshot() -> None:
    """Ask for a new gallery snapshot (recognition/gallery.py) after a bulk change; best effort: the
    periodic schedule writes one anyway."""
    try:
        async_task(SNAPSHOT_TASK, task_name="gallery-snapshot", group="gallery")
    except Exception as err:
        log.warning("could not queue a gallery snapshot: %s", err)


def approve(face: FaceImage) -> None:
    """Staff confirmed a photo held for review."""
    if face.status == FaceImage.Status.REVIEW and face.embedding is not None:
        face.status = FaceImage.Status.ACCEPTED
        face.reason_code = ""
        face.reason = ""
        face.reason_person_id = None
        with transaction.atomic():
            face.save(update_fields=["status", "reason_code", "reason", "reason_person_id", "updated_at"])
            face_verdict(face)
            gallery_changed()


def delete_face(face: FaceImage) -> None:
    """Delete one photo with its files (people/signals.py removes them after commit)."""
    with transaction.atomic():
        was_in_gallery = FaceImage.objects.in_gallery().filter(pk=face.pk).exists()
        # the files the row names now: a task may have written a new crop since ``face`` was read
        current = FaceImage.objects.select_for_update().filter(pk=face.pk).values_list("image", "crop", "region").first() or ()
        face.delete()
        stale = [name for name in current if name and name not in (face.image.name, face.crop.name, face.region.name)]
        if stale:
            transaction.on_commit(lambda: delete_files(stale))
        if was_in_gallery:
            gallery_changed()
