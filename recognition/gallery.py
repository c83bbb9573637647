"""The process's copy of the gallery: kept fresh from the change log, started from a snapshot.

**Freshness.** Every enrollment change writes a ``people.GalleryChange`` row in its own
transaction. A process remembers the highest ``seq`` it applied; per request it asks one indexed
question (rows after that ``seq``, or in a known gap) and re-reads only the people those rows name.
On PostgreSQL sequence values can commit out of order (seq 10 visible while seq 9 is still being
committed, or rolled back for good): a missing number below the highest seen is remembered as a
gap and asked for again on every request until it shows up or is ``GAP_SECONDS`` old. (SQLite
commits one writer at a time, so it has no gaps.) Rows are written last in their transactions, so
a gap is normally closed within milliseconds.

**Cold start.** A background task (``write_snapshot``, queued after bulk imports and run on a
schedule when enough changed) saves the trained index and its slot arrays under
``GALLERY_SNAPSHOT_DIR`` (private: never under MEDIA_ROOT), tagged with the change ``seq`` (and
gaps) it reflects. A process opens the newest snapshot memory-mapped (no copy: every process on the
machine shares its pages) and applies the changes since. Without a snapshot it builds from the
database once. A bulk change is applied by a background reload; requests keep the previous gallery
meanwhile.

**Erasure.** The snapshot holds raw embeddings, so ``forget_in_snapshot`` rewrites it without an
erased person, or a deleted photo, when the deletion commits (before the request returns; one
rewrite per transaction, ``forget_after_commit``); processes that mapped the old file move to the
new one on their next request.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Max, Q

from facesite.oncommit import after_commit_once

from .engine.index import IndexSettings
from .engine.matching import Gallery, embeddings_from_blobs

logger = logging.getLogger(__name__)

# A missing seq below the highest seen is asked for again until it is this old: far longer than
# any transaction takes between writing its change row (its last statement) and committing.
GAP_SECONDS = 15 * 60
# Change rows read per request; more at once (a large import logged per person) reload in the background.
CHANGES_PER_REQUEST = 2000
# Missing numbers below a cold start's position that are watched as gaps (a transaction writes its
# change rows last, so only the last few can still be committing).
GAP_WINDOW = 100
_PEOPLE_PER_QUERY = 500
CURRENT = "current.json"


def _served_embedder() -> str:
    from .pipelines import served_embedder

    return served_embedder()


def _served_kind() -> str:
    from .pipelines import served_kind

    return served_kind()


def _served_dim() -> int:
    from .pipelines import pipeline_config

    return pipeline_config().dim


def _change_model():
    from people.models import GalleryChange

    return GalleryChange


def _face_model():
    from people.models import FaceImage

    return FaceImage


@dataclass
class _State:
    gallery: Gallery
    seq: int  # every change up to here is applied, except the gaps
    gaps: dict[int, float] = field(default_factory=dict)  # seq -> when it was first missed (monotonic)
    generation: str | None = None  # the snapshot the gallery's base is mapped from
    embedder: str = ""  # the served embedder whose faces it holds (another one served: loaded again)
    checked_at: float = field(default_factory=time.monotonic)


class GalleryCache:
    """One per process: ``get()`` answers the gallery as of this request."""

    def __init__(self):
        self._lock = threading.RLock()
        self._state: _State | None = None
        self._reloading: threading.Thread | None = None
        self._reloaded: _State | None = None
        self.stats = {"cold_starts": 0, "from_snapshot": 0, "from_database": 0, "background_reloads": 0, "people_applied": 0}

    def get(self) -> Gallery:
        with self._lock:
            if self._reloaded is not None:
                self._state, self._reloaded = self._reloaded, None
            state = self._state
            stale = state is not None and time.monotonic() - state.checked_at > settings.GALLERY_CHANGE_KEEP_HOURS * 1800
            if state is None or stale:  # never loaded, or idle so long the log may be pruned
                state = self._state = self._cold_start()
            self._catch_up(state)  # an EMBEDDER change refreshes the served embedder
            if self._state.embedder != _served_embedder():
                # another embedder is served (a switch or a rollback): its faces, at once, never a
                # gallery of one embedder searched with the other's probes
                self._state = self._cold_start()
                self._catch_up(self._state)
            return self._state.gallery

    def invalidate(self) -> None:
        """Forget the gallery and the served embedder: the next ``get()`` reads both again."""
        from .pipelines import forget_served_kind

        with self._lock:
            self._state = self._reloaded = None
            forget_served_kind()

    # ---- loading -----------------------------------------------------------------------------------

    def _cold_start(self) -> _State:
        self.stats["cold_starts"] += 1
        state = _open_snapshot()
        if state is not None:
            self.stats["from_snapshot"] += 1
            return state
        self.stats["from_database"] += 1
        return _from_database()

    def _catch_up(self, state: _State, depth: int = 0, background: bool = False) -> None:
        GalleryChange = _change_model()
        now = time.monotonic()
        state.checked_at = now
        for gap, since in list(state.gaps.items()):
            if now - since > GAP_SECONDS:
                del state.gaps[gap]
        wanted = Q(seq__gt=state.seq)
        if state.gaps:
            wanted |= Q(seq__in=sorted(state.gaps))
        rows = list(
            GalleryChange.objects.filter(wanted).order_by("seq").values_list("seq", "person_id", "kind")[:CHANGES_PER_REQUEST]
        )
        if not rows:
            return
        seqs = {row[0] for row in rows}
        for seq in seqs:
            state.gaps.pop(seq, None)
        top = max(seqs)
        if top > state.seq:
            for seq in range(max(state.seq + 1, top - GAP_WINDOW), top):
                if seq not in seqs:
                    state.gaps[seq] = now
            state.seq = top
        kinds = {row[2] for row in rows}
        if GalleryChange.Kind.EMBEDDER in kinds:
            from .pipelines import refresh_served_kind

            refresh_served_kind()
            if background:
                raise _BuildAgain(top)
            if state.embedder != _served_embedder():
                return  # get() loads the other embedder's gallery; these people are read there
        if GalleryChange.Kind.BULK in kinds or len(rows) >= CHANGES_PER_REQUEST:
            if background:  # the gallery being built in the background is already behind: build again
                raise _BuildAgain(top)
            for row in rows:  # an erasure never waits for the reload
                if row[2] == GalleryChange.Kind.ERASED:
                    state.gallery.remove_person(row[1])
            self._reload_in_background(top)
        else:
            people = {row[1] for row in rows if row[1] is not None}
            _apply_people(state.gallery, people)
            self.stats["people_applied"] += len(people)
        if kinds & {GalleryChange.Kind.SNAPSHOT, GalleryChange.Kind.ERASED} and depth == 0:
            # a new snapshot (or one rewritten without an erased person): map it instead of the old file
            current = _current_generation()
            if current is not None and current != state.generation and (state.generation is not None or len(state.gallery) > 0):
                fresh = _open_snapshot()
                if fresh is not None:
                    self._catch_up(fresh, depth=1)
                    self._state = fresh

    def _reload_in_background(self, target: int) -> None:
        """Build a new gallery that reflects at least change ``target`` (a snapshot that does, else the
        database) in a thread; requests use the current one meanwhile."""
        if self._reloading is not None and self._reloading.is_alive():
            return

        def reload():
            wanted = target
            try:
                for _ in range(5):  # another bulk change while building: build again
                    state = _open_snapshot()
                    if state is None or state.seq < wanted:
                        state = _from_database()
                    try:
                        self._catch_up(state, depth=1, background=True)
                    except _BuildAgain as again:
                        wanted = again.seq
                        continue
                    self._reloaded = state
                    self.stats["background_reloads"] += 1
                    return
                logger.warning("the gallery kept changing in bulk while it was reloaded; the next bulk change tries again")
            except Exception:
                logger.exception("reloading the gallery in the background failed; the next bulk change tries again")
            finally:
                connection.close()

        self._reloading = threading.Thread(target=reload, name="gallery-reload", daemon=True)
        self._reloading.start()

    def wait_for_reload(self, timeout: float = 600) -> None:
        """Tests and benchmarks: wait for a background reload to finish."""
        if self._reloading is not None:
            self._reloading.join(timeout)


class _BuildAgain(Exception):
    def __init__(self, seq: int):
        super().__init__(seq)
        self.seq = seq


def _apply_people(gallery: Gallery, people: set[int]) -> None:
    """Re-read these people's matchable faces; people with none (inactive, erased) leave."""
    from people.models import FaceImage

    people = sorted(people)
    for start in range(0, len(people), _PEOPLE_PER_QUERY):
        chunk = people[start : start + _PEOPLE_PER_QUERY]
        found: dict[int, list] = {pid: [] for pid in chunk}
        for face_id, person_id, blob in (
            FaceImage.objects.in_gallery().filter(person_id__in=chunk).values_list("id", "person_id", "embedding")
        ):
            found[person_id].append((face_id, blob))
        for person_id, rows in found.items():
            keys = np.array([r[0] for r in rows], np.int64)
            gallery.set_person(person_id, embeddings_from_blobs((r[1] for r in rows), dim=gallery.dim), keys)


def _log_position() -> tuple[int, dict[int, float]]:
    """The change log's highest committed seq now, and the missing numbers just below it (gaps)."""
    GalleryChange = _change_model()
    top = GalleryChange.objects.aggregate(top=Max("seq"))["top"] or 0
    low = max(0, top - GAP_WINDOW)
    present = set(GalleryChange.objects.filter(seq__gt=low, seq__lte=top).values_list("seq", flat=True))
    now = time.monotonic()
    return top, {seq: now for seq in range(low + 1, top + 1) if seq not in present}


def _gallery_rows():
    """Every matchable face (embedded by the served embedder): keys (N,) int64, labels (N,) int64,
    embeddings (N, D) float32, D the served embedder's dimension."""
    from people.models import FaceImage

    rows = FaceImage.objects.in_gallery().values_list("id", "person_id", "embedding")
    keys, labels, blobs = [], [], []
    for face_id, person_id, blob in rows.iterator(chunk_size=20_000):
        keys.append(face_id)
        labels.append(person_id)
        blobs.append(blob)
    return np.array(keys, np.int64), np.array(labels, np.int64), embeddings_from_blobs(blobs, dim=_served_dim())


def _from_database() -> _State:
    seq, gaps = _log_position()  # before the rows: what commits meanwhile is applied again, harmlessly
    kind, embedder = _served_kind(), _served_embedder()
    keys, labels, embeddings = _gallery_rows()
    gallery = Gallery(dim=embeddings.shape[1])
    gallery.replace(embeddings, labels, keys)
    gallery.kind = kind  # the embedder its faces are of: probes are embedded by it
    if len(gallery) >= IndexSettings().exact_below and _current_generation() is None:
        from people.services import queue_gallery_snapshot

        queue_gallery_snapshot()  # the next start (and every other process) maps it instead
    return _State(gallery, seq, gaps, embedder=embedder)


# ---- snapshots on disk ------------------------------------------------------------------------------
#
# GALLERY_SNAPSHOT_DIR/current.json names the generation in use; each generation is a directory
# (Gallery.save's files plus meta.json). A new one is written beside it and current.json replaced
# atomically; old generations are deleted (a process still mapping one keeps reading it until it
# moves on, which it does on its next request). Writers hold an exclusive lock on .lock.


def snapshot_dir() -> Path:
    return Path(settings.GALLERY_SNAPSHOT_DIR)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _writer_lock():
    root = _private_dir(snapshot_dir())
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_current() -> dict | None:
    try:
        return json.loads((snapshot_dir() / CURRENT).read_text())
    except (OSError, ValueError):
        return None


def _current_generation() -> str | None:
    current = _read_current()
    return current and current.get("generation")


def _open_snapshot() -> _State | None:
    current = _read_current()
    if not current:
        return None
    directory = snapshot_dir() / current["generation"]
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("embedder", "") != _served_embedder():
            logger.warning("gallery snapshot %s holds another embedder's faces; building from the database", directory)
            return None
        gallery = Gallery.open(directory, dim=int(meta.get("dim", 128)))
        gallery.kind = _served_kind()
    except (OSError, ValueError, RuntimeError) as err:  # faiss raises RuntimeError on a damaged file
        logger.warning("gallery snapshot %s is unusable (%s); building from the database", directory, err)
        return None
    top = _change_model().objects.aggregate(top=Max("seq"))["top"] or 0
    if meta.get("database") != _database_name() or int(meta["seq"]) > top:
        # another site's snapshot (a shared var/), or one newer than this database (a restored backup)
        logger.warning("gallery snapshot %s was not made from this database; building from the database", directory)
        return None
    now = time.monotonic()
    return _State(gallery, int(meta["seq"]), {int(g): now for g in meta.get("gaps", [])}, current["generation"], meta["embedder"])


def _database_name() -> str:
    return f"{connection.vendor}:{connection.settings_dict['NAME']}"


def _publish(root: Path, built: Path, meta: dict) -> str:
    """Make ``built`` (a finished generation directory) current; delete the others. Under the lock."""
    from people.models import GalleryChange

    (built / "meta.json").write_text(json.dumps(meta))
    for path in built.iterdir():
        os.chmod(path, 0o600)
    generation = f"g{meta['seq']:012d}-{uuid.uuid4().hex[:8]}"
    built.rename(root / generation)
    pointer = root / f".{CURRENT}.{uuid.uuid4().hex[:8]}"
    pointer.write_text(json.dumps({"generation": generation, "seq": meta["seq"]}))
    os.chmod(pointer, 0o600)
    os.replace(pointer, root / CURRENT)
    for old in root.iterdir():
        if old.is_dir() and old.name != generation:
            shutil.rmtree(old, ignore_errors=True)
    GalleryChange.objects.record(GalleryChange.Kind.SNAPSHOT)  # tells every process to map it
    return generation


@dataclass
class SnapshotReport:
    written: bool
    reason: str
    faces: int = 0
    people: int = 0
    seq: int = 0
    seconds: float = 0.0


def write_snapshot(force: bool = False, min_changes: int | None = None) -> SnapshotReport:
    """Save the gallery as it is now, if it changed enough since the current snapshot (or ``force``).

    The index is built (and IVF-trained) here, in the task worker, outside the lock; under the lock,
    people erased and photos deleted while it was built are removed from it before it becomes current."""
    GalleryChange = _change_model()
    started = time.perf_counter()
    min_changes = settings.GALLERY_SNAPSHOT_MIN_CHANGES if min_changes is None else min_changes
    current = _read_current()
    if current and not force:
        since = GalleryChange.objects.filter(seq__gt=current["seq"]).exclude(kind=GalleryChange.Kind.SNAPSHOT)
        if since.count() < min_changes and not since.filter(kind=GalleryChange.Kind.BULK).exists():
            return SnapshotReport(False, "few changes since the current snapshot", seq=current["seq"])
    seq, gaps = _log_position()
    embedder = _served_embedder()
    keys, labels, embeddings = _gallery_rows()
    dim = embeddings.shape[1]
    gallery = Gallery(dim=dim)
    gallery.replace(embeddings, labels, keys)
    del embeddings
    root = _private_dir(snapshot_dir())
    built = Path(_private_dir(root / f".build-{uuid.uuid4().hex}"))
    try:
        gallery.save(built)
        with _writer_lock():
            since = GalleryChange.objects.filter(Q(seq__gt=seq) | Q(seq__in=sorted(gaps)))
            erased = set(since.filter(kind=GalleryChange.Kind.ERASED).values_list("person_id", flat=True))
            touched = set(since.filter(kind=GalleryChange.Kind.FACE).values_list("person_id", flat=True)) - erased
            deleted = _face_model().objects.gone(keys[np.isin(labels, np.asarray(sorted(touched), np.int64))])
            if erased or deleted:
                cleaned = _private_dir(root / f".build-{uuid.uuid4().hex}")
                Gallery.rewrite_without(built, cleaned, erased, dim=dim, keys=deleted)
                shutil.rmtree(built)
                built = cleaned
            meta = {
                "seq": seq,
                "gaps": sorted(gaps),
                "faces": len(gallery),
                "people": gallery.people_count,
                "database": _database_name(),
                "embedder": embedder,
                "dim": dim,
                "written_at": time.time(),
            }
            _publish(root, built, meta)
    finally:
        if built.exists() and built.name.startswith(".build-"):
            shutil.rmtree(built, ignore_errors=True)
    return SnapshotReport(True, "written", len(gallery), gallery.people_count, seq, round(time.perf_counter() - started, 3))


def forget_in_snapshot(person_ids=(), face_ids=()) -> bool:
    """Remove these people's embeddings, and these faces' (single photos deleted), from the snapshot on
    disk now: the current generation is rewritten without them and the old one deleted. If that
    fails the snapshot is deleted instead (processes then build from the database). True if a
    snapshot held any of them."""
    person_ids, face_ids = {int(p) for p in person_ids}, {int(f) for f in face_ids}
    with _writer_lock() as root:
        current = _read_current()
        if not current or not (person_ids or face_ids):
            return False
        source = root / current["generation"]
        try:
            people = np.load(source / "people.npy", mmap_mode="r")
            held_people = np.isin(people, np.asarray(sorted(person_ids), np.int64))
            held_faces = np.isin(np.asarray(sorted(face_ids), np.int64), np.load(source / "keys.npy", mmap_mode="r"))
            if not held_people.any() and not held_faces.any():
                return False
            meta = json.loads((source / "meta.json").read_text())
            target = _private_dir(root / f".build-{uuid.uuid4().hex}")
            removed = Gallery.rewrite_without(source, target, person_ids, dim=int(meta.get("dim", 128)), keys=face_ids)
            meta["faces"] = int(meta.get("faces", 0)) - removed
            meta["people"] = len(np.load(target / "people.npy", mmap_mode="r"))
            _publish(root, target, meta)
            return True
        except Exception:
            logger.exception("could not rewrite the gallery snapshot without erased data; deleting it")
            delete_snapshots()
            return True


def _forget_deleted(items: set) -> None:
    """The batch of one transaction's deletions: ("person" | "face", id) pairs. A deletion rolled back
    (a savepoint) still has its row, so only ids whose rows are gone are taken out."""
    from people.models import FaceImage, Person

    people = {i for kind, i in items if kind == "person"}
    faces = {i for kind, i in items if kind == "face"}
    people -= set(Person.objects.filter(pk__in=people).values_list("pk", flat=True))
    forget_in_snapshot(people, FaceImage.objects.gone(faces))


def forget_after_commit(person_ids=(), face_ids=()) -> None:
    """Take these people and photos out of the snapshot on disk once the current transaction commits
    (at once outside one); deletions committed together share one rewrite."""
    after_commit_once(_forget_deleted, [("person", int(p)) for p in person_ids] + [("face", int(f)) for f in face_ids])


def delete_snapshots() -> None:
    """Delete every snapshot file (processes that mapped one build from the database on their next start)."""
    root = snapshot_dir()
    if not root.exists():
        return
    with contextlib.suppress(FileNotFoundError):
        (root / CURRENT).unlink()
    for path in root.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
