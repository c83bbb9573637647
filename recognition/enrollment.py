"""Enrollment processing: an enrollment photo through the pipeline served now, checked against
the gallery served now, and its verdict written on its row.

people/services.py stores the photos and queues this by dotted path (recognition.tasks); it sits
here because the mislabel check asks what recognition serves (threshold, gallery).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from integrations.events import face_verdict
from people.models import FaceChoice, FaceEmbedding, FaceImage, GalleryChange, Person
from people.services import delete_files
from training import services as training

from . import pipelines, services
from .engine import selection
from .engine.alignment import face_region
from .engine.detection import DetectedFace
from .engine.images import ImageError, encode_jpeg
from .engine.matching import embeddings_from_blobs
from .pipelines import pipeline, quality_rules, read_upload


@dataclass(frozen=True)
class Verdict:
    status: str
    code: str = ""
    reason: str = ""
    reason_person_id: int | None = None  # the other person the reason names (FaceImage.reason_person)


def process_face_image(face: FaceImage, central_subject: bool | None = None) -> FaceImage | None:
    """Detect, check, align and embed one enrollment photo; set its status and reason.

    Which face is the person's: the one overlapping ``face.chosen_box`` most when staff chose a
    face; else the only face, or one clearly larger than the rest; else, with the central-subject
    rule (``central_subject``; None: the setting FACE_ENROLL_CENTRAL_SUBJECT), a portrait's clear
    central subject (selection.CentralRule), remembered as the chosen face (face_choice "central").
    In a photo of several faces, ``face_choice_reason`` says which face was taken and why.
    Otherwise the photo is rejected as ``several_faces``, its reason and ``faces_found`` listing
    the faces to choose from.

    Returns None when the photo was deleted while it was processed: its results are not written
    (the row is never re-inserted) and the crop made for it is removed."""
    if central_subject is None:
        central = pipelines.central_rule()
    else:
        central = selection.CentralRule() if central_subject else None
    rules = quality_rules()
    face._previous_crop = face.crop.name if face.crop else ""
    face._previous_region = face.region.name if face.region else ""
    face._was_in_gallery = face.status == FaceImage.Status.ACCEPTED and face.embedding is not None
    face.crop = face.region = ""
    face.box = face.landmarks = face.detection_score = face.sharpness = face.faces_found = face.region_box = None
    face.face_choice_reason = ""
    if face.face_choice == FaceChoice.CENTRAL:
        # The rule's own earlier pick is not a choice to keep: it is made again (the setting may be off now).
        face.chosen_box, face.face_choice = None, ""
    face.set_vector(None)
    try:
        with face.image.open("rb") as fh:
            rgb = read_upload(fh.read())
    except (ImageError, OSError) as err:
        return _finish(face, Verdict(FaceImage.Status.REJECTED, "unreadable_file", f"Unreadable file: {err}"))

    services.gallery()  # brought up to date first: a switch of the served embedder is seen before embedding
    pipe = pipeline()
    detected = pipe.detect(rgb)
    if not detected:
        return _finish(face, Verdict(FaceImage.Status.REJECTED, "no_face", "No face was found in this photo."))
    ordered = selection.reading_order(detected)
    face.faces_found = [f.box_ints() for f in ordered] if len(ordered) > 1 else None
    main = _the_persons_face(face, ordered, rgb.shape, rules, central)
    if isinstance(main, Verdict):
        return _finish(face, main)
    analysed = pipe.analyse(rgb, faces=[main])[0]
    face.box = main.box_ints()
    face.landmarks = main.landmarks_dict()
    face.detection_score = round(main.score, 4)
    face.sharpness = round(analysed.sharpness, 1)
    # A random name, like the photo's: a crop's address must not be guessable from the row's id.
    face.crop.save(f"{uuid.uuid4().hex}.jpg", ContentFile(encode_jpeg(analysed.crop)), save=False)
    # wide enough for every embedder's alignment: an embedder switch re-embeds from it once the photo is gone
    region, face.region_box = face_region(rgb, main.box, settings.FACE_REGION_MARGIN, settings.FACE_REGION_MAX_SIDE)
    face.region.save(f"{uuid.uuid4().hex}.jpg", ContentFile(encode_jpeg(region, quality=95)), save=False)
    face.region_box = [round(v, 3) for v in face.region_box]

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
    verdict = _mislabel_check(face, analysed.embedding)
    if verdict.status == FaceImage.Status.ACCEPTED and face.face_choice == FaceChoice.CENTRAL:
        verdict = _central_pick_check(face, analysed.embedding)
    return _finish(face, verdict)


def _the_persons_face(
    face: FaceImage, ordered: list[DetectedFace], image_shape, rules, central: selection.CentralRule | None
) -> DetectedFace | Verdict:
    """The detected face that is the person's (see process_face_image), or the verdict refusing the
    photo; in a photo of several faces, sets ``face.face_choice_reason``."""
    count = len(ordered)
    if face.chosen_box:
        found = selection.best_overlap(ordered, face.chosen_box)
        if found is None:
            return Verdict(
                FaceImage.Status.REJECTED,
                "chosen_face_not_found",
                f"No face was found at the chosen box {face.chosen_box}; faces found: {describe_faces(ordered)}.",
            )
        index = found[0]
        if count > 1:
            chooser = "chosen by staff" if face.face_choice == FaceChoice.STAFF else "the chosen face"
            face.face_choice_reason = f"{count} faces; took face #{index} {ordered[index].box_ints()}, {chooser}"
        return ordered[index]
    main = selection.dominant(ordered, rules.dominant_ratio)
    if main is not None:
        if count > 1:
            ratio = selection.area_ratio(main, ordered)
            face.face_choice_reason = (
                f"{count} faces; took the largest, face #{_index(ordered, main)} {main.box_ints()}: "
                f"{ratio:.1f}x the next face's area"
            )
        return main
    subject = selection.central_subject(ordered, image_shape, central) if central else None
    if subject is not None:
        face.chosen_box = subject.face.box_ints()
        face.face_choice = FaceChoice.CENTRAL
        face.face_choice_reason = central_reason(ordered, subject)
        return subject.face
    return Verdict(
        FaceImage.Status.REJECTED,
        "several_faces",
        f"{count} faces were found ({describe_faces(ordered)}, numbered left to right) and none is clearly the photo's "
        f"subject; choose the one that is {face.person.name}, or use a photo of {face.person.name} alone.",
    )


def central_reason(ordered: list[DetectedFace], subject: selection.CentralSubject) -> str:
    """Which face of a photo of several was taken as its central subject, and why (the words of
    the importer's summary, the API's face_choice_reason and the admin)."""
    return (
        f"{len(ordered)} faces; took the central subject, face #{_index(ordered, subject.face)} {subject.face.box_ints()}: "
        f"{subject.ratio:.1f}x the next face's area, {subject.offset:.2f} from the centre"
    )


def _index(ordered: list[DetectedFace], face: DetectedFace) -> int:
    """``face``'s face_index (by identity: faces compare by value, landmarks and all)."""
    return next(i for i, other in enumerate(ordered) if other is face)


def describe_faces(ordered: list[DetectedFace]) -> str:
    """The faces of a photo by their face_index: "#0 [x, y, w, h], #1 [...]"."""
    shown = ", ".join(f"#{i} {f.box_ints()}" for i, f in enumerate(ordered[:LISTED_FACES]))
    return shown + (f" and {len(ordered) - LISTED_FACES} more" if len(ordered) > LISTED_FACES else "")


# Faces named in a reason (it holds 500 characters); faces_found lists them all.
LISTED_FACES = 8


def _mislabel_check(face: FaceImage, embedding) -> Verdict:
    """Hold for review a photo that looks more like another enrolled person than its own.

    "Looks like" is judged at the threshold in force for the gallery's size (calibrated per search):
    in a large gallery some stranger always scores above a per-pair threshold, and a genuine first
    photo must not be held for it."""
    current = services.gallery()
    threshold = services.match_threshold(len(current))
    exclude = {face.pk} if face.pk is not None else set()  # a face not yet saved (a visitor's) is not in it
    # A screening search: only scores above the threshold in force matter, and those lie in the
    # query's nearest IVF cells, so it scans fewer than a recognition (a no-op below the IVF size).
    nprobe = current.index.settings.screen_nprobe
    candidates = current.search(embedding[None], top_k=3, threshold=threshold, exclude_keys=exclude, nprobe=nprobe)[0].candidates
    others = [c for c in candidates if c.person_id != face.person_id]
    if not others or others[0].similarity < threshold:
        return Verdict(FaceImage.Status.ACCEPTED)
    own, _ = services.person_similarity(embedding, face.person_id)
    own_similarity = -1.0 if own is None else own
    if others[0].similarity - own_similarity < pipelines.mislabel_margin():
        return Verdict(FaceImage.Status.ACCEPTED)
    other = Person.objects.filter(pk=others[0].person_id).first()
    own_text = "no other photos to compare with" if own is None else f"{own_similarity:.2f} to {face.person.name}'s other photos"
    return Verdict(
        FaceImage.Status.REVIEW,
        "possible_mislabel",
        f"{LOOKS_LIKE}{other} (similarity {others[0].similarity:.2f}) than {face.person.name} ({own_text}). "
        "Check the photo is filed under the right person, then approve it.",
        reason_person_id=None if other is None else other.pk,
    )


LOOKS_LIKE = "Looks more like "
# The possible_mislabel reason up to the other person's name and just past it (see _mislabel_check).
_LOOKS_LIKE_REASON = re.compile(rf"{re.escape(LOOKS_LIKE)}(?P<other>.+?) \(similarity -?\d+\.\d\d\) than ", re.DOTALL)


# What a review reason says instead of an erased person's name (privacy.services.erase_person).
ERASED_REVIEW_TEXT = "another enrolled person (erased)"


def without_looks_like(reason: str, replacement: str, name: str | None = None) -> str | None:
    """A possible_mislabel ``reason`` with the person it says the photo looks like replaced by
    ``replacement``: only that place, never the photo's own person nor the fixed wording. None when
    ``reason`` is not such a reason, or, given ``name``, the person it names there is not ``name``
    (for reasons written before FaceImage.reason_person recorded who it is)."""
    found = _LOOKS_LIKE_REASON.match(reason)
    if found is None:
        return None
    if name is not None:
        if not reason.startswith(f"{LOOKS_LIKE}{name} (similarity "):
            return None
        start, end = len(LOOKS_LIKE), len(LOOKS_LIKE) + len(name)
    else:
        start, end = found.span("other")
    return reason[:start] + replacement + reason[end:]


def _central_pick_check(face: FaceImage, embedding) -> Verdict:
    """Hold for review a central subject the rule took that does not look like the person's other
    photos (when there are any): the rule picks by geometry alone, and must not put a bystander
    who stood in the middle into someone's gallery."""
    blobs = list(
        FaceImage.objects.in_gallery().filter(person_id=face.person_id).exclude(pk=face.pk).values_list("embedding", flat=True)
    )
    if not blobs:
        return Verdict(FaceImage.Status.ACCEPTED)
    own = float(np.max(embeddings_from_blobs(blobs) @ embedding))
    threshold = pipelines.verify_threshold()
    if own >= threshold:
        return Verdict(FaceImage.Status.ACCEPTED)
    return Verdict(
        FaceImage.Status.REVIEW,
        "central_subject_unconfirmed",
        f"The face taken as the photo's central subject ({face.face_choice_reason}) does not look like "
        f"{face.person.name}'s other photos (similarity {own:.2f}, below {threshold:.2f}). Check it is "
        f"{face.person.name}, then approve it, or choose the face.",
    )


RESULT_FIELDS = (
    "status",
    "reason_code",
    "reason",
    "reason_person_id",
    "processed_at",
    "box",
    "landmarks",
    "faces_found",
    "chosen_box",
    "face_choice",
    "face_choice_reason",
    "detection_score",
    "sharpness",
    "embedding",
    "embedder",
    "crop",
    "region",
    "region_box",
)


def unname_if_erased(face: FaceImage) -> None:
    """Before a verdict is written (in its transaction): if the other person its reason names was
    erased after the verdict named them, say "another enrolled person (erased)" instead. Their
    erasure rewrote the reasons written before it (privacy.services), so this one must not name
    them either. The person is locked (FOR NO KEY UPDATE, as an erasure locks them first) until the
    transaction ends: an erasure either waits for this write and then rewrites it, or came first
    and is seen here."""
    if face.reason_person_id is None:
        return
    named = Person.objects.select_for_update(no_key=True).filter(pk=face.reason_person_id).values_list("pk", flat=True)
    if not list(named):
        face.reason = without_looks_like(face.reason, ERASED_REVIEW_TEXT) or face.reason
        face.reason_person_id = None


def _finish(face: FaceImage, verdict: Verdict) -> FaceImage | None:
    """Write the results onto the existing row, never re-inserting a row deleted meanwhile."""
    face.status = verdict.status
    face.reason_code = verdict.code
    face.reason = verdict.reason[: FaceImage._meta.get_field("reason").max_length]
    face.reason_person_id = verdict.reason_person_id
    face.face_choice_reason = face.face_choice_reason[: FaceImage._meta.get_field("face_choice_reason").max_length]
    face.processed_at = face.updated_at = timezone.now()
    new_crop, old_crop = (face.crop.name if face.crop else ""), getattr(face, "_previous_crop", "")
    new_region, old_region = (face.region.name if face.region else ""), getattr(face, "_previous_region", "")
    with transaction.atomic():
        unname_if_erased(face)
        values = {name: getattr(face, name) for name in RESULT_FIELDS}
        values["crop"], values["region"] = new_crop, new_region
        written = FaceImage.objects.filter(pk=face.pk).update(updated_at=face.updated_at, **values)
        if not written:
            # Deleted while it was processed: the deletion removed the files it knew of; this crop
            # and region are the ones it could not know.
            delete_files([name for name in (new_crop, new_region) if name])
            return None
        replaced = [old for old, new in ((old_crop, new_crop), (old_region, new_region)) if old and old != new]
        if replaced:
            transaction.on_commit(lambda: delete_files(replaced))
        # every embedder's template of the face as it was is stale now; the served one is this one
        FaceEmbedding.objects.filter(face_id=face.pk).delete()
        if face.embedding is not None:
            FaceEmbedding.objects.create(
                face_id=face.pk, embedder=face.embedder, vector=bytes(face.embedding), dim=len(face.embedding) // 4
            )
        face_verdict(face)
        in_gallery = face.status == FaceImage.Status.ACCEPTED and face.embedding is not None
        if in_gallery or getattr(face, "_was_in_gallery", False):
            # a queryset update sends no signal: the change log is written here, last, in this transaction
            GalleryChange.objects.record(GalleryChange.Kind.FACE, [face.person_id])
            transaction.on_commit(training.enrollment_changed)  # retrain, debounced
    return face


def mislabel_review(face: FaceImage, embedding) -> Verdict:
    """The review an uploaded photo gets, for an embedding from elsewhere (a visitor's sightings):
    accepted, or held for review when it looks more like another enrolled person than ``face.person``."""
    return _mislabel_check(face, embedding)
