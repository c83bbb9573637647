"""The site-wide outlier scan, out of the request.

Judging every gallery face against the gallery (recognition.outliers) costs minutes of CPU and
memory at a million faces, so no request does it: staff ask for a scan (``request_scan``, from the
API or the admin), a background task computes it (``run_scan``, queued on the training cluster by
dotted path, so photo processing never waits behind it) and stores its outlier faces as
``FlaggedFace`` rows; the review then reads the newest finished scan (``latest``), page by page.

At most one scan runs at a time: the database refuses a second running ``OutlierScan`` row. A scan
whose worker died is marked failed after OUTLIER_SCAN_STALE_SECONDS, so it cannot block the next.

Erasure: the rows are data derived from people. Erasing a person deletes theirs (their faces and
their row cascade; privacy.services.erase_person counts them) and forgets them as anyone's nearest
other person. A scan computed before an erasure must not write them back: its rows are written in
one transaction that first locks the people and faces they name (FOR NO KEY UPDATE, as an erasure
and a face deletion lock them) and writes only those still there. Either the erasure waits and then
deletes what the scan wrote, or the scan waits and finds them gone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django_q.tasks import async_task

from people.models import FaceImage, Person
from recognition import outliers
from recognition.outliers import FaceEvidence

from .models import FlaggedFace, OutlierScan

log = logging.getLogger(__name__)

SCAN_TASK = "checkin.tasks.scan_outliers"
_LOCK_BATCH = 2000  # ids per IN (...) when locking rows: well under SQLite's bound on parameters


class ScanRunning(Exception):
    """A scan is already running: ``scan`` is that one."""

    def __init__(self, scan: OutlierScan | None):
        super().__init__("An outlier scan is already running.")
        self.scan = scan


def request_scan(by=None) -> OutlierScan:
    """Record a new site-wide scan and queue it once this transaction commits; ScanRunning if one
    is running already (a scan whose worker died is failed first, see ``fail_stale_scans``)."""
    fail_stale_scans()
    try:
        with transaction.atomic():
            scan = OutlierScan.objects.create(requested_by=by if by is not None and by.is_authenticated else None)
    except IntegrityError:  # one_running_outlier_scan: another request won
        raise ScanRunning(OutlierScan.objects.running().first()) from None
    transaction.on_commit(lambda: queue_scan(scan.pk))
    return scan


def scan_if_gallery_changed() -> OutlierScan | None:
    """The daily schedule's ("checkin: outlier scan", OUTLIER_SCAN_DAILY): ask for a scan when no
    scan was ever asked for or a gallery face or a person changed since the newest one was (a face
    enrolled, re-processed or approved, a person reactivated), so the review is at most a day old
    without staff asking. Faces deleted or deactivated since need none: the review leaves them out
    as it reads. None when off, unchanged, or a scan is running."""
    if not settings.OUTLIER_SCAN_DAILY:
        return None
    newest = OutlierScan.objects.order_by("-requested_at").values_list("requested_at", flat=True).first()
    if newest is not None and not (
        FaceImage.objects.filter(updated_at__gt=newest).exists() or Person.objects.filter(updated_at__gt=newest).exists()
    ):
        return None
    try:
        return request_scan()
    except ScanRunning:
        return None


def queue_scan(scan_id: int) -> None:
    """Hand the scan to the training cluster's queue; if the broker is unreachable the scan is
    failed at once (it would otherwise block the next request until it went stale)."""
    try:
        async_task(SCAN_TASK, scan_id, task_name=f"outlier-scan-{scan_id}", group="outliers", cluster=settings.TRAINING_Q_CLUSTER)
    except Exception as err:
        log.warning("could not queue outlier scan %s: %s", scan_id, err)
        _fail(scan_id, f"The task queue was unreachable: {err}")


def fail_stale_scans(now=None) -> int:
    """Mark failed the running scans requested more than OUTLIER_SCAN_STALE_SECONDS ago (their
    worker was killed, or their task lost); return how many."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.OUTLIER_SCAN_STALE_SECONDS)
    return (
        OutlierScan.objects.running()
        .filter(requested_at__lt=cutoff)
        .update(
            status=OutlierScan.Status.FAILED,
            finished_at=timezone.now(),
            error="The scan did not finish in OUTLIER_SCAN_STALE_SECONDS: its worker was probably killed or its task lost.",
        )
    )


def run_scan(scan_id: int) -> str:
    """Compute scan ``scan_id`` and store its outlier faces (the task's work). A scan that is not
    running (failed as stale meanwhile) or already started by another worker is left alone."""
    started = OutlierScan.objects.running().filter(pk=scan_id, started_at__isnull=True).update(started_at=timezone.now())
    if not started:
        return f"outlier scan {scan_id} is not waiting to run"
    try:
        bound = outliers.outlier_bound()
        scanned, found = outliers.site_scan(bound=bound)
        stored = _store(scan_id, scanned, bound, found)
    except Exception as err:
        _fail(scan_id, f"{type(err).__name__}: {err}")
        raise
    if stored is None:
        return f"outlier scan {scan_id} was failed meanwhile; nothing stored"
    return f"outlier scan {scan_id}: {scanned} gallery faces, {stored} outliers"


def _store(scan_id: int, scanned: int, bound: float, found: list[FaceEvidence]) -> int | None:
    """Write the scan's rows and finish it, in one transaction; None if it is no longer running."""
    with transaction.atomic():
        scan = OutlierScan.objects.select_for_update().filter(pk=scan_id, status=OutlierScan.Status.RUNNING).first()
        if scan is None:
            return None
        # People first, then faces: the order an erasure locks them in (no deadlock). What an
        # erasure or a face deletion removed before these locks is not returned, so not written.
        named = {e.person_id for e in found} | {e.nearest_other_id for e in found if e.nearest_other_id is not None}
        people = set(_locked(Person.objects.all(), named))
        faces = dict(_locked(FaceImage.objects.all(), {e.face_id for e in found}, "person_id"))
        rows = [
            FlaggedFace(
                scan=scan,
                face_id=e.face_id,
                person_id=e.person_id,
                own_faces=e.own_faces,
                own_best=e.own_best,
                own_mean=e.own_mean,
                nearest_other_id=e.nearest_other_id if e.nearest_other_id in people else None,
                nearest_other_similarity=e.nearest_other_similarity,
                far_from_own=e.far_from_own,
                closer_to_other=e.closer_to_other,
                rank=rank,
            )
            for rank, e in enumerate(found)
            if e.person_id in people and faces.get(e.face_id) == e.person_id  # both still there, still theirs
        ]
        FlaggedFace.objects.bulk_create(rows, batch_size=1000)
        scan.status, scan.finished_at = OutlierScan.Status.FINISHED, timezone.now()
        scan.gallery_faces, scan.bound, scan.flagged = scanned, bound, len(rows)
        scan.save(update_fields=["status", "finished_at", "gallery_faces", "bound", "flagged"])
        # Older scans' rows are superseded: only the newest result is kept (and the failures since).
        OutlierScan.objects.exclude(pk=scan.pk).filter(requested_at__lte=scan.requested_at).exclude(
            status=OutlierScan.Status.RUNNING
        ).delete()
    return len(rows)


def _locked(rows, ids: Iterable[int], *fields: str) -> list:
    """Lock the rows of ``rows`` with these ids (FOR NO KEY UPDATE, in id order, in batches);
    their ids, or (id, *fields) tuples when fields are named."""
    ids = sorted(ids)
    out: list = []
    for start in range(0, len(ids), _LOCK_BATCH):
        batch = rows.select_for_update(no_key=True).filter(pk__in=ids[start : start + _LOCK_BATCH]).order_by("pk")
        out += list(batch.values_list("pk", *fields, flat=not fields))
    return out


def _fail(scan_id: int, error: str) -> None:
    OutlierScan.objects.running().filter(pk=scan_id).update(
        status=OutlierScan.Status.FAILED, finished_at=timezone.now(), error=error[:2000]
    )


def latest() -> OutlierScan | None:
    """The newest finished scan: what the review shows."""
    return OutlierScan.objects.finished().order_by("-finished_at", "-id").first()


def running() -> OutlierScan | None:
    return OutlierScan.objects.running().first()


def flagged_faces(scan: OutlierScan | None):
    """The scan's outlier faces still worth showing, most doubtful first: faces still in the
    gallery (not deleted, rejected or of a person deactivated since) and still their person's."""
    if scan is None:
        return FlaggedFace.objects.none()
    # Still in the gallery, by FaceImage.objects.in_gallery()'s rules, checked per stored row (an
    # EXISTS by primary key): the query starts from the scan's rows, so a page and its count cost
    # the same at a million gallery faces as at a thousand.
    still_in_gallery = FaceImage.objects.in_gallery().filter(pk=OuterRef("face_id"), person_id=OuterRef("person_id"))
    return FlaggedFace.objects.filter(Exists(still_in_gallery), scan=scan).select_related("nearest_other").order_by("rank")


def evidence(row: FlaggedFace) -> FaceEvidence:
    """A stored row as the review's evidence (the nearest other person's name as it is now; None
    when they were erased)."""
    other = row.nearest_other
    return FaceEvidence(
        face_id=row.face_id,
        person_id=row.person_id,
        own_faces=row.own_faces,
        own_best=row.own_best,
        own_mean=row.own_mean,
        nearest_other_id=None if other is None else other.pk,
        nearest_other_name=None if other is None else other.name,
        nearest_other_similarity=row.nearest_other_similarity,
        far_from_own=row.far_from_own,
        closer_to_other=row.closer_to_other,
    )
