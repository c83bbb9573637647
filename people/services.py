"""Enrollment: storing a person's photos and turning them into gallery embeddings."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from recognition import services as recognition
from recognition.engine.images import ImageError, encode_jpeg

from .models import FaceImage, Person

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    status: str
    code: str = ""
    reason: str = ""


def enroll(person: Person, upload, uploaded_by=None, process: bool = True) -> FaceImage:
    """Store an uploaded photo of ``person`` and queue its processing.

    The upload is decoded first so that an unusable file is refused (ImageError) and nothing is
    written; the row and file are saved in one transaction, and processing is queued after commit.
    """
    recognition.read_upload(upload)  # raises ImageError: nothing is stored
    upload.seek(0)
    photo = ContentFile(strip_metadata(upload.read()))
    with transaction.atomic():
        face = FaceImage(person=person, uploaded_by=uploaded_by, original_name=safe_name(getattr(upload, "name", "")))
        face.image.save(upload.name or "upload", photo, save=False)
        face.save()
        if process:
            transaction.on_commit(lambda: queue_processing(face.pk))
    return face


def queue_processing(face_image_id: int) -> bool:
    """Queue a photo's processing and note when; False if the broker is unreachable."""
    try:
        async_task("people.tasks.process_face_image", face_image_id, task_name=f"face-{face_image_id}", group="enrollment")
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


def process_face_image(face: FaceImage) -> FaceImage | None:
    """Detect, check, align and embed one enrollment photo; set its status and reason.

    Returns None when the photo was deleted while it was processed: its results are not written
    (the row is never re-inserted) and the crop made for it is removed."""
    rules = recognition.quality_rules()
    face._previous_crop = face.crop.name if face.crop else ""
    face._was_in_gallery = face.status == FaceImage.Status.ACCEPTED and face.embedding is not None
    face.crop = ""
    face.box = face.landmarks = face.detection_score = face.sharpness = None
    face.set_vector(None)
    try:
        with face.image.open("rb") as fh:
            rgb = recognition.read_upload(fh.read())
    except (ImageError, OSError) as err:
        return _finish(face, Verdict(FaceImage.Status.REJECTED, "unreadable_file", f"Unreadable file: {err}"))

    pipe = recognition.pipeline()
    detected = pipe.detect(rgb)
    if not detected:
        return _finish(face, Verdict(FaceImage.Status.REJECTED, "no_face", "No face was found in this photo."))
    main = detected[0]
    if len(detected) > 1:
        second = detected[1]
        ratio = (main.box[2] * main.box[3]) / max(1.0, second.box[2] * second.box[3])
        if ratio < rules.dominant_ratio:
            return _finish(
                face,
                Verdict(
                    FaceImage.Status.REJECTED,
                    "several_faces",
                    f"{len(detected)} faces of similar size were found; use a photo of {face.person.name} alone.",
                ),
            )
    analysed = pipe.analyse(rgb, faces=[main])[0]
    face.box = main.box_ints()
    face.landmarks = main.landmarks_dict()
    face.detection_score = round(main.score, 4)
    face.sharpness = round(analysed.sharpness, 1)
    # A random name, like the photo's: a crop's address must not be guessable from the row's id.
    face.crop.save(f"{uuid.uuid4().hex}.jpg", ContentFile(encode_jpeg(analysed.crop)), save=False)

    side = min(main.box[2], main.box[3])
    if side < rules.min_face_px:
        return _finish(
            face,
            Verdict(
                FaceImage.Status.REJECTED,
                "face_too_small",
                f"The face is {side:.0f} px; at least {rules.min_face_px} px is needed.",
            ),
        )
    if analysed.sharpness < rules.min_sharpness:
        return _finish(
            face,
            Verdict(
                FaceImage.Status.REJECTED,
                "too_blurry",
                f"The face is too blurry (sharpness {analysed.sharpness:.0f}, at least {rules.min_sharpness:.0f} needed).",
            ),
        )
    face.set_vector(analysed.embedding)
    face.embedder = pipe.embedder_name
    return _finish(face, _mislabel_check(face, analysed.embedding))


def _mislabel_check(face: FaceImage, embedding) -> Verdict:
    """Hold for review a photo that looks more like another enrolled person than its own."""
    threshold = recognition.match_threshold()
    candidates = recognition.gallery().search(embedding[None], top_k=3, threshold=threshold, exclude_keys={face.pk})[0].candidates
    others = [c for c in candidates if c.person_id != face.person_id]
    if not others or others[0].similarity < threshold:
        return Verdict(FaceImage.Status.ACCEPTED)
    own, _ = recognition.person_similarity(embedding, face.person_id)
    own_similarity = -1.0 if own is None else own
    if others[0].similarity - own_similarity < settings.FACE_MISLABEL_MARGIN:
        return Verdict(FaceImage.Status.ACCEPTED)
    other = Person.objects.filter(pk=others[0].person_id).first()
    own_text = "no other photos to compare with" if own is None else f"{own_similarity:.2f} to {face.person.name}'s other photos"
    return Verdict(
        FaceImage.Status.REVIEW,
        "possible_mislabel",
        f"Looks more like {other} (similarity {others[0].similarity:.2f}) than {face.person.name} ({own_text}). "
        "Check the photo is filed under the right person, then approve it.",
    )


RESULT_FIELDS = (
    "status",
    "reason_code",
    "reason",
    "processed_at",
    "box",
    "landmarks",
    "detection_score",
    "sharpness",
    "embedding",
    "embedder",
    "crop",
)


def _finish(face: FaceImage, verdict: Verdict) -> FaceImage | None:
    """Write the results onto the existing row, never re-inserting a row deleted meanwhile."""
    face.status = verdict.status
    face.reason_code = verdict.code
    face.reason = verdict.reason
    face.processed_at = face.updated_at = timezone.now()
    new_crop, old_crop = (face.crop.name if face.crop else ""), getattr(face, "_previous_crop", "")
    with transaction.atomic():
        values = {name: getattr(face, name) for name in RESULT_FIELDS}
        values["crop"] = new_crop
        written = FaceImage.objects.filter(pk=face.pk).update(updated_at=face.updated_at, **values)
        if not written:
            # Deleted while it was processed: the deletion removed the files it knew of; this crop
            # is the one it could not know.
            if new_crop:
                _delete_files([new_crop])
            return None
        if old_crop and old_crop != new_crop:
            transaction.on_commit(lambda: _delete_files([old_crop]))
        from integrations.events import face_verdict  # late import: avoids a cycle

        face_verdict(face)
        in_gallery = face.status == FaceImage.Status.ACCEPTED and face.embedding is not None
        if in_gallery or getattr(face, "_was_in_gallery", False):
            gallery_changed()
    return face


def _delete_files(names: list[str]) -> None:
    storage = FaceImage._meta.get_field("crop").storage
    for name in names:
        storage.delete(name)


def gallery_changed() -> None:
    """The set of matchable faces changed: retrain (debounced) once this transaction commits."""
    from training import services as training  # training imports people: a late import

    transaction.on_commit(training.enrollment_changed)


def approve(face: FaceImage) -> None:
    """Staff confirmed a photo held for review."""
    if face.status == FaceImage.Status.REVIEW and face.embedding is not None:
        face.status = FaceImage.Status.ACCEPTED
        face.reason_code = ""
        face.reason = ""
        with transaction.atomic():
            face.save(update_fields=["status", "reason_code", "reason", "updated_at"])
            from integrations.events import face_verdict  # late import: avoids a cycle

            face_verdict(face)
            gallery_changed()


def delete_face(face: FaceImage) -> None:
    """Delete one photo with its files (people/signals.py removes them after commit)."""
    with transaction.atomic():
        was_in_gallery = FaceImage.objects.in_gallery().filter(pk=face.pk).exists()
        # the files the row names now: a task may have written a new crop since ``face`` was read
        current = FaceImage.objects.select_for_update().filter(pk=face.pk).values_list("image", "crop").first() or ()
        face.delete()
        stale = [name for name in current if name and name not in (face.image.name, face.crop.name)]
        if stale:
            transaction.on_commit(lambda: _delete_files(stale))
        if was_in_gallery:
            gallery_changed()
    recognition.invalidate_gallery()


def erase_person(person: Person, by=None):
    """Erase a person everywhere: see privacy.services.erase_person."""
    from privacy import services as privacy  # privacy imports people: a late import

    return privacy.erase_person(person, by=by)
