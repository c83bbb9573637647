"""The edge gallery in bounded pages (``GET /api/v1/edge/gallery/``; the protocol is on the view).

A device's gallery is kept in step by two streams, both read through one signed cursor:

* **Faces added or changed**: keyset pages over ``(updated_at, id)`` of the gallery's faces. The
  cursor holds the last row *actually sent*, so rows sharing a timestamp are neither skipped nor
  repeated, and a face saved while a page is read is sent by a later page (its new ``updated_at`` is
  past the cursor), never lost between two queries.
* **Faces gone** (a photo deleted or rejected, a person deactivated or erased): the gallery change
  log (``people.GalleryChange``). The cursor holds the log position read *before* the first page of
  a full sync; every later answer names the people the log touched since (``people``) and sends
  their faces in the gallery now, which replace whatever the device holds of them. The log is pruned
  after GALLERY_CHANGE_KEEP_HOURS: a cursor older than that, or a log holding a bulk import or an
  embedder switch, starts a full sync instead (the device's gallery becomes exactly its pages).

Each answer holds at most EDGE_GALLERY_PAGE_FACES faces (a person whose faces alone exceed it is
still sent whole), so neither the server nor the device builds a million-face answer.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core import signing
from django.db.models import Count, Max, Q
from django.utils import timezone

from facesite.api import ApiError

SALT = "checkin.edge_gallery.cursor"
# Change-log rows read per answer; more wait for the next page.
LOG_ROWS_PER_PAGE = 2000
# A missing log number followed by a row younger than this may still be committing (PostgreSQL
# commits sequence values out of order): the answer stops before it and the next one asks again.
LOG_GAP_SECONDS = 60


@dataclass
class Cursor:
    full: bool  # inside a full sync: the device's gallery becomes exactly the faces of its pages
    updated_at: str | None  # the last face sent (ISO time, UTC), None before the first
    face_id: int
    seq: int  # the change log up to here is reflected in what was sent
    seq_at: float  # when (epoch seconds) the log after ``seq`` was known to be complete
    embedder: str

    def encode(self) -> str:
        return signing.dumps(asdict(self), salt=SALT, compress=True)

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        """The cursor in ``text``; None for a cursor of an older server (a bare ISO time: start over).
        Raises ApiError ``invalid`` for anything else."""
        try:
            return cls(**signing.loads(text, salt=SALT))
        except (signing.BadSignature, TypeError, ValueError):
            pass
        try:
            datetime.fromisoformat(text)
        except ValueError:
            raise ApiError(
                "invalid", "since must be a cursor this endpoint returned.", fields={"since": ["Invalid cursor."]}
            ) from None
        return None


def page_limit(text: str | None) -> int:
    """``limit`` as asked, capped at EDGE_GALLERY_PAGE_FACES; the cap when not asked."""
    cap = max(1, settings.EDGE_GALLERY_PAGE_FACES)
    if text in (None, ""):
        return cap
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ApiError("invalid", "limit must be a whole number of faces, at least 1.", fields={"limit": ["Invalid limit."]})
    return min(limit, cap)


def log_horizon() -> timedelta:
    """How old a cursor's log position may be and still have every later log row kept (pruning
    runs hourly, so an hour's margin; at least half the kept period)."""
    keep = timedelta(hours=settings.GALLERY_CHANGE_KEEP_HOURS)
    return keep - min(timedelta(hours=1), keep / 2)


def gallery_page(since: str | None, limit: int, embedder: str) -> dict:
    """One answer of the protocol: ``{"cursor", "more", "full", "start", "people", "faces"}``,
    ``faces`` as FaceImage rows (the view encodes them)."""
    from people.models import FaceImage, GalleryChange

    now = timezone.now()
    cursor = Cursor.decode(since) if since else None
    stale = cursor is not None and not cursor.full and now.timestamp() - cursor.seq_at > log_horizon().total_seconds()
    if cursor is not None and (cursor.embedder != embedder or stale):
        # another embedder's templates, or log rows since may be pruned: start over. A full sync's
        # pages go on whatever their age (else a horizon shorter than a full sync would never end);
        # the delta after it starts over if the log since its start may be pruned by then.
        cursor = None
    faces = FaceImage.objects.in_gallery().select_related("person")
    people: list[int] = []
    sent: list = []
    more = False
    if cursor is not None and not cursor.full:
        log = _read_log(cursor, now, limit)
        if log is None:  # a bulk import or an embedder switch: every face may have changed
            cursor = None
        else:
            people, seq, seq_at, more = log
            if people:
                sent = list(faces.filter(person_id__in=people).order_by("person_id", "id"))
            cursor.seq, cursor.seq_at = seq, seq_at
    start = cursor is None
    if start:  # the log position first, then the rows: a change after it is replayed next time
        top = GalleryChange.objects.aggregate(top=Max("seq"))["top"] or 0
        cursor = Cursor(True, None, 0, top, now.timestamp(), embedder)
    room = limit - len(sent)
    if not more and room > 0:
        changed = faces
        if cursor.updated_at is not None:
            after = datetime.fromisoformat(cursor.updated_at)
            changed = faces.filter(Q(updated_at__gt=after) | Q(updated_at=after, id__gt=cursor.face_id))
        rows = list(changed.order_by("updated_at", "id")[: room + 1])
        more = len(rows) > room
        rows = rows[:room]
        if rows:
            cursor.updated_at = rows[-1].updated_at.astimezone(UTC).isoformat()
            cursor.face_id = rows[-1].pk
        already = {face.pk for face in sent}
        sent += [face for face in rows if face.pk not in already]
    elif room <= 0:
        more = True
    full = cursor.full
    cursor.full = full and more  # the last page of a full sync hands over to the log
    return {"cursor": cursor.encode(), "more": more, "full": full, "start": start, "people": people, "faces": sent}


def _read_log(cursor: Cursor, now: datetime, limit: int) -> tuple[list[int], int, float, bool] | None:
    """The people the change log touched after ``cursor.seq``, as many as fit ``limit`` faces:
    (people, new seq, its time, more to read), or None when a change means starting over."""
    from people.models import FaceImage, GalleryChange

    rows = list(
        GalleryChange.objects.filter(seq__gt=cursor.seq)
        .order_by("seq")
        .values_list("seq", "person_id", "kind", "created_at")[: LOG_ROWS_PER_PAGE + 1]
    )
    if any(kind in (GalleryChange.Kind.BULK, GalleryChange.Kind.EMBEDDER) for _, _, kind, _ in rows):
        return None
    named = {person for _, person, _, _ in rows if person is not None}
    counts = dict(
        FaceImage.objects.in_gallery()
        .filter(person_id__in=named)
        .values("person_id")
        .annotate(n=Count("id"))
        .values_list("person_id", "n")
    )
    people: dict[int, None] = {}
    seq, seq_at, faces = cursor.seq, cursor.seq_at, 0
    young = now - timedelta(seconds=LOG_GAP_SECONDS)
    for number, person, _, created_at in rows[:LOG_ROWS_PER_PAGE]:
        if number != seq + 1 and created_at > young:
            return list(people), seq, seq_at, False  # an earlier number may still commit: asked again next time
        if person is not None and person not in people:
            if people and faces + counts.get(person, 0) > limit:
                return list(people), seq, seq_at, True
            people[person] = None
            faces += counts.get(person, 0)
        seq, seq_at = number, created_at.timestamp()
    if len(rows) > LOG_ROWS_PER_PAGE:
        return list(people), seq, seq_at, True
    return list(people), seq, now.timestamp(), False  # read to its end: complete as of now


def face_json(face) -> dict:
    return {
        "id": face.pk,
        "person_id": face.person_id,
        "name": face.person.name,
        "embedding": base64.b64encode(bytes(face.embedding)).decode(),
    }
