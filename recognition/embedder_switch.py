"""Switching the served embedder without re-enrolling anybody: re-embed, evaluate, switch, roll back.

A switch (one ``EmbedderSwitch`` row) runs as a background task on the training cluster
(TRAINING_Q_CLUSTER): it is minutes to hours of embedding, like a training run, and must never hold
up the photo-processing queue; that worker also runs at a lower CPU priority. Steps:

1. **Re-embed** every enrolled face with the target embedder into ``FaceEmbedding`` rows, from its
   photo or, once the photo is gone, its stored region (recognition/reembedding.py), in batches of
   EMBEDDER_SWITCH_BATCH, each committed with the progress (``done`` / ``total``, heartbeat). A crash
   loses one batch: a re-run embeds only the faces still lacking the target embedding, and a switch
   whose worker died or stopped reporting is put back in the queue (``resume_dead_switches``, run by
   the schedule, the admin page and every new request). Embeddings are written only for faces that
   still exist, under a row lock: a face deleted or erased meanwhile is never brought back.
2. **Evaluate** old and new side by side on the same enrolled faces (engine/embedder_eval.py):
   genuine leave-one-out and impostor leave-person-out searches, FRR and FAR, each embedder at its
   own calibrated per-search threshold for this gallery's size; past EMBEDDER_SWITCH_EVAL_MAX_FACES
   faces on a fixed-seed sample of whole people, chosen before any template is read (bounded memory).
3. **Switch**, only if the new embedder is not worse (``embedder_eval.not_worse``) and could embed
   every enrolled face, or when staff force it: one transaction catches up the faces enrolled during
   the run, keeps the old embedder's templates as FaceEmbedding rows, copies the new ones onto
   ``FaceImage.embedding`` (what the gallery and its snapshots read: the hot path is unchanged;
   one UPDATE of every face row, whose cost at scale ``_serve`` explains), makes the row ACTIVE
   and writes an EMBEDDER change so every process reloads its gallery with the new embedder.
   Otherwise the row is BLOCKED with the evaluation, and nothing served changes.
4. **Roll back** to the previous embedder: the same copy from the kept templates, instant; faces
   enrolled since (which only the new embedder embedded) are caught up in the background.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from people.models import FaceEmbedding, FaceImage, GalleryChange

from . import pipelines
from .engine import embedder_eval
from .engine.fused import EMBEDDERS
from .models import EmbedderSwitch
from .reembedding import embed_stored, store_embeddings

log = logging.getLogger(__name__)

RUN_TASK = "recognition.tasks.run_embedder_switch"
CATCH_UP_TASK = "recognition.tasks.catch_up_served_embedder"
Status = EmbedderSwitch.Status
KEEP_CHUNK = 5000  # face ids per page of keep_served_templates


class SwitchRefused(Exception):
    """A switch or rollback that cannot be done as asked; the message says why."""


# ---- asking --------------------------------------------------------------------------------------


def start_switch(
    kind: str, by=None, force: bool = False, trigger: str = EmbedderSwitch.Trigger.ADMIN, queue: bool = True
) -> EmbedderSwitch:
    """Queue a switch to embedder ``kind`` (or join the one in progress to it). SwitchRefused when
    ``kind`` is unknown, already served, or another switch is in progress. ``queue`` False: the
    caller runs it (``run_switch``; manage.py switch_embedder --wait)."""
    if kind not in EMBEDDERS:
        raise SwitchRefused(f"Unknown embedder {kind!r}; choose one of {', '.join(EMBEDDERS)}.")
    resume_dead_switches()
    served = pipelines.refresh_served_kind()
    if kind == served:
        raise SwitchRefused(f"{kind} is the embedder served now.")
    name = servable(kind)  # before any row is written: a refusal leaves nothing behind
    previous_name = servable(served)  # evaluated beside the new one: its calibration must be readable too
    with transaction.atomic():
        running = EmbedderSwitch.objects.select_for_update().in_progress().first()
        if running is not None:
            if running.embedder != kind:
                raise SwitchRefused(f"A switch to {running.embedder} is in progress ({running.get_status_display()}).")
            if force and not running.force:
                EmbedderSwitch.objects.filter(pk=running.pk).update(force=True)
                running.force = True
            return running
        switch = EmbedderSwitch.objects.create(
            embedder=kind,
            name=name,
            previous=served,
            previous_name=previous_name,
            trigger=trigger,
            force=force,
            requested_by=by if by is not None and by.is_authenticated else None,
            total=FaceImage.objects.enrolled().count(),
        )
        if queue:
            transaction.on_commit(lambda: enqueue(switch.pk))
    return switch


def servable(kind: str) -> str:
    """Embedder ``kind``'s name, or SwitchRefused when it cannot be served here (the fused embedder
    without a readable fusion calibration: ``pipelines.check_embedder``)."""
    try:
        return pipelines.check_embedder(kind)
    except ImproperlyConfigured as err:
        raise SwitchRefused(f"{kind} cannot be served: {err}") from err


def force_blocked(switch: EmbedderSwitch, by=None, queue: bool = True) -> EmbedderSwitch:
    """Staff override: activate a BLOCKED switch (run again: faces enrolled since are embedded, the
    evaluation is repeated and recorded, and it is activated whatever it says)."""
    if switch.status != Status.BLOCKED:
        raise SwitchRefused(f"Only a blocked switch can be forced; this one is {switch.get_status_display().lower()}.")
    if EmbedderSwitch.objects.in_progress().exists():
        raise SwitchRefused("Another switch is in progress.")
    servable(switch.embedder)
    EmbedderSwitch.objects.filter(pk=switch.pk).update(force=True, status=Status.QUEUED, finished_at=None)
    if queue:
        transaction.on_commit(lambda: enqueue(switch.pk))
    switch.refresh_from_db()
    if by is not None and by.is_authenticated:
        EmbedderSwitch.objects.filter(pk=switch.pk).update(activated_by=by)
    return switch


def enqueue(switch_id: int) -> None:
    from django_q.tasks import async_task

    task_id = async_task(
        RUN_TASK, switch_id, task_name=f"embedder-switch-{switch_id}", group="embedder", cluster=settings.TRAINING_Q_CLUSTER
    )
    EmbedderSwitch.objects.filter(pk=switch_id, status=Status.QUEUED).update(task_id=task_id or "")


def wanted_differs() -> bool:
    """FACE_EMBEDDER names another embedder than the one served."""
    return settings.FACE_EMBEDDER != pipelines.served_kind()


def follow_setting() -> EmbedderSwitch | None:
    """Start the switch FACE_EMBEDDER asks for, once: not when a switch to it was ever made (staff
    decide after a block, a failure or a rollback), nor while another one is in progress."""
    resume_dead_switches()
    kind = settings.FACE_EMBEDDER
    if kind == pipelines.refresh_served_kind() or kind not in EMBEDDERS:
        return None
    if EmbedderSwitch.objects.filter(embedder=kind).exists() or EmbedderSwitch.objects.in_progress().exists():
        return None
    try:
        return start_switch(kind, trigger=EmbedderSwitch.Trigger.SETTING)
    except SwitchRefused as err:  # e.g. the fused embedder's calibration missing: said on every watch, nothing written
        log.error("FACE_EMBEDDER=%s is not followed: %s", kind, err)
        return None


# ---- crash recovery -------------------------------------------------------------------------------


def resume_dead_switches() -> list[int]:
    """Switches whose worker died (killed, timed out, machine restarted) go back to the queue and
    continue where they stopped. Dead: the django-q task finished unsuccessfully, the worker process
    on this host is gone, or no progress for EMBEDDER_SWITCH_STALE_SECONDS."""
    from django_q.models import Task

    from training.services import worker_alive

    stale_before = timezone.now() - timedelta(seconds=settings.EMBEDDER_SWITCH_STALE_SECONDS)
    resumed = []
    for switch in EmbedderSwitch.objects.filter(status__in=[Status.REEMBEDDING, Status.EVALUATING]):
        task = Task.objects.filter(id=switch.task_id).first() if switch.task_id else None
        dead = (
            (task is not None and not task.success)
            or not worker_alive(switch.worker)
            or switch.heartbeat_at is None
            or switch.heartbeat_at < stale_before
        )
        if dead and EmbedderSwitch.objects.filter(pk=switch.pk, status=switch.status, heartbeat_at=switch.heartbeat_at).update(
            status=Status.QUEUED,
            heartbeat_at=timezone.now(),  # when it was queued again (see the lost ones below)
            error=f"Resumed after its worker ({switch.worker}) stopped at {switch.done} of {switch.total}.",
        ):
            log.warning("embedder switch %s: its worker %s is gone; resuming", switch.pk, switch.worker)
            enqueue(switch.pk)
            resumed.append(switch.pk)
    # a queued switch whose task was lost (broker flushed) is queued again, once per window
    lost = EmbedderSwitch.objects.filter(status=Status.QUEUED, created_at__lt=stale_before).filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale_before)
    )
    for switch in lost:
        if EmbedderSwitch.objects.filter(pk=switch.pk, heartbeat_at=switch.heartbeat_at).update(heartbeat_at=timezone.now()):
            enqueue(switch.pk)
            resumed.append(switch.pk)
    return resumed


# ---- the background run ---------------------------------------------------------------------------


def _claim(switch_id: int) -> bool:
    now = timezone.now()
    switch = EmbedderSwitch.objects.filter(pk=switch_id).first()
    return bool(
        switch is not None
        and EmbedderSwitch.objects.filter(pk=switch_id, status=Status.QUEUED).update(
            status=Status.REEMBEDDING,
            started_at=switch.started_at or now,
            heartbeat_at=now,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            runs=switch.runs + 1,
        )
    )


def _beat(switch_id: int, **fields) -> None:
    EmbedderSwitch.objects.filter(pk=switch_id).update(heartbeat_at=timezone.now(), **fields)


def lacking(name: str):
    """Enrolled faces without a FaceEmbedding of embedder ``name``."""
    return FaceImage.objects.enrolled().exclude(Exists(FaceEmbedding.objects.filter(face=OuterRef("pk"), embedder=name)))


def reembed_for_switch(switch: EmbedderSwitch, limit: int | None = None) -> int:
    """Embed the enrolled faces lacking the target embedding, batch by batch (see the module).
    Returns how many were embedded; ``limit`` stops early (tests of an interrupted run)."""
    pipe = None  # loaded at the first face to embed (a switch that only catches up may need none)
    batch = max(1, settings.EMBEDDER_SWITCH_BATCH)
    skipped = {key: set(ids) for key, ids in (switch.skipped or {}).items()}
    unusable = set().union(*skipped.values()) if skipped else set()
    done = FaceImage.objects.enrolled().count() - lacking(switch.name).count()
    total = done + lacking(switch.name).exclude(pk__in=unusable).count()
    _beat(switch.pk, done=done, total=total)
    embedded_now = 0
    while limit is None or embedded_now < limit:
        size = batch if limit is None else min(batch, limit - embedded_now)
        chunk = list(lacking(switch.name).exclude(pk__in=unusable).order_by("pk")[:size])
        if not chunk:
            break
        pipe = pipe or pipelines.pipeline(switch.embedder)
        result = embed_stored(chunk, pipe)
        skipped.setdefault("photo_gone", set()).update(result.photo_gone)
        skipped.setdefault("no_geometry", set()).update(result.no_geometry)
        unusable |= set(result.photo_gone) | set(result.no_geometry)
        with transaction.atomic():
            alive = store_embeddings(switch.name, result.vectors) if result.vectors else []
            done += len(alive)
            _beat(switch.pk, done=done, skipped={k: sorted(v) for k, v in skipped.items() if v})
        unusable |= set(result.vectors) - set(alive)  # deleted meanwhile
        embedded_now += len(alive)
    return embedded_now


def evaluation_sample(old_name: str, new_name: str, max_faces: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The enrolled faces the evaluation searches: those holding both embedders' templates, and past
    ``max_faces`` of them a fixed-seed sample of whole people (every face of a person sampled, so
    genuine searches keep their pairs) until ``max_faces`` are reached. Returns (face ids, person
    ids, faces holding both), by face id. Reads two integers per face, never a template: at 1M
    faces that is ~16 MB, where both embedders' templates are ~1.5 GB."""
    both = FaceImage.objects.enrolled().filter(
        Exists(FaceEmbedding.objects.filter(face=OuterRef("pk"), embedder=old_name)),
        Exists(FaceEmbedding.objects.filter(face=OuterRef("pk"), embedder=new_name)),
    )
    pairs = np.fromiter(
        (value for row in both.order_by("pk").values_list("pk", "person_id").iterator(20000) for value in row), np.int64
    ).reshape(-1, 2)
    ids, people = pairs[:, 0], pairs[:, 1]
    if len(ids) <= max_faces:
        return ids, people, len(ids)
    everyone, inverse, counts = np.unique(people, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(everyone))
    # whole people in the seeded order, up to the first that reaches max_faces
    taken = order[: int(np.searchsorted(np.cumsum(counts[order]), max_faces)) + 1]
    keep = np.isin(inverse, taken)
    return ids[keep], people[keep], len(ids)


def _templates(name: str, face_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Embedder ``name``'s template of each of ``face_ids`` that has one: {face id: (D,) float32}."""
    vectors = {}
    for start in range(0, len(face_ids), 5000):  # bounded IN lists
        chunk = face_ids[start : start + 5000].tolist()
        for face_id, blob in FaceEmbedding.objects.filter(face_id__in=chunk, embedder=name).values_list("face_id", "vector"):
            vectors[face_id] = np.frombuffer(bytes(blob), np.float32)
    return vectors


def keep_served_templates() -> int:
    """Copy the served embedder's templates (``FaceImage.embedding``) into FaceEmbedding rows where
    they are missing (faces enrolled or imported before this table): what a rollback returns to."""
    name = pipelines.pipeline_config(pipelines.refresh_served_kind()).embedder_name
    missing = FaceImage.objects.filter(embedder=name, embedding__isnull=False).exclude(
        Exists(FaceEmbedding.objects.filter(face=OuterRef("pk"), embedder=name))
    )
    # the ids first (one pass, integers only: 8 MB at 1M faces), then the templates KEEP_CHUNK at a
    # time by primary key (bounded memory). Paging the anti-join itself (LIMIT after the last id, or
    # id ranges) let PostgreSQL, with a bulk import's stale statistics, re-read the rest of the
    # table for every page: 41 s and 82 s at 100,000 faces (load 10-12), growing with the square;
    # this way 9.3 s, and 131 s at 1M (BENCHMARKS.md, "Embedder switch").
    ids = np.fromiter(missing.order_by("pk").values_list("pk", flat=True).iterator(20000), np.int64)
    written = 0
    for start in range(0, len(ids), KEEP_CHUNK):
        chunk = ids[start : start + KEEP_CHUNK].tolist()
        rows = [
            FaceEmbedding(face_id=pk, embedder=name, vector=bytes(blob), dim=len(bytes(blob)) // 4)
            for pk, blob in FaceImage.objects.filter(pk__in=chunk, embedder=name, embedding__isnull=False).values_list(
                "pk", "embedding"
            )
        ]
        FaceEmbedding.objects.bulk_create(rows, ignore_conflicts=True)
        written += len(rows)
    return written


def _threshold(kind: str, name: str, gallery_size: int) -> float:
    """``kind``'s calibrated per-search threshold for a gallery of this size (the active model
    version's floor when it was calibrated on this embedder)."""
    from training.models import ModelVersion
    from training.open_set import calibration

    version = ModelVersion.objects.active()
    if version is not None and version.embedder not in ("", name):
        version = None
    return calibration(version, gallery_size, embedder=name, kind=kind).threshold


def evaluate(switch: EmbedderSwitch) -> dict:
    """Old and new side by side on the enrolled faces both embedded: all of them up to
    EMBEDDER_SWITCH_EVAL_MAX_FACES, past it a fixed-seed sample of whole people
    (``evaluation_sample``), so memory is bounded at any gallery size (20,000 faces: ~30 MB of
    templates for both embedders, where all of 1M faces would be ~1.5 GB). Each embedder searches
    the sample at its threshold for the *whole* gallery's size; a sample is a smaller gallery, so
    its false accepts are fewer than the whole gallery's would be, for both embedders alike (the
    comparison is what the rule reads)."""
    keep_served_templates()
    ids, people, both = evaluation_sample(switch.previous_name, switch.name, settings.EMBEDDER_SWITCH_EVAL_MAX_FACES)
    sampled = len(ids) < both
    old, new = _templates(switch.previous_name, ids), _templates(switch.name, ids)
    present = np.array([int(i) in old and int(i) in new for i in ids], bool)  # a face deleted meanwhile is left out
    ids, people = ids[present], people[present]
    old_vectors = np.stack([old[int(i)] for i in ids]) if len(ids) else np.zeros((0, 1), np.float32)
    new_vectors = np.stack([new[int(i)] for i in ids]) if len(ids) else np.zeros((0, 1), np.float32)
    del old, new
    gallery_size = FaceImage.objects.enrolled().count()
    rows = {}
    for role, kind, name, vectors in (
        ("old", switch.previous, switch.previous_name, old_vectors),
        ("new", switch.embedder, switch.name, new_vectors),
    ):
        started = time.perf_counter()
        errors = embedder_eval.search_errors(vectors, people, _threshold(kind, name, gallery_size))
        rows[role] = dict(errors.as_dict(), embedder=kind, name=name, seconds=round(time.perf_counter() - started, 3))
    old = embedder_eval.SearchErrors(**{k: rows["old"][k] for k in embedder_eval.SearchErrors.__dataclass_fields__})
    new = embedder_eval.SearchErrors(**{k: rows["new"][k] for k in embedder_eval.SearchErrors.__dataclass_fields__})
    ok, why = embedder_eval.not_worse(old, new)
    return {
        **rows,
        "not_worse": ok,
        "rule": why,
        "gallery_size": gallery_size,
        "faces_both": both,  # enrolled faces holding both templates; rows' "faces": those searched (the sample)
        "sampled": sampled,
        "evaluated_at": timezone.now().isoformat(),
    }


def run_switch(switch_id: int, limit: int | None = None) -> str:
    """The body of the django-q task: claim the switch, re-embed, evaluate, decide."""
    from training.services import yield_cpu_to_enrollment

    resume_dead_switches()
    if not settings.Q_CLUSTER.get("sync"):
        yield_cpu_to_enrollment()
    if not _claim(switch_id):
        return "not queued"
    switch = EmbedderSwitch.objects.get(pk=switch_id)
    try:
        reembed_for_switch(switch, limit=limit)
        if limit is not None and lacking(switch.name).exclude(pk__in=_unusable(switch)).exists():
            return "interrupted"  # tests: a run cut short, as a crash would leave it
        _beat(switch.pk, status=Status.EVALUATING)
        switch.refresh_from_db()
        result = evaluate(switch)
        skipped = sum(len(v) for v in (switch.skipped or {}).values())
        if skipped:
            result["not_worse"] = False
            result["rule"] = (
                f"{skipped} enrolled faces could not be embedded by {switch.embedder} (no photo or region, or no recorded box); "
                + result["rule"]
            )
        EmbedderSwitch.objects.filter(pk=switch.pk).update(evaluation=result)
        if result["not_worse"] or switch.force:
            activate(switch, note=("Forced by staff. " if not result["not_worse"] else "Not worse: ") + result["rule"])
            return "active"
        EmbedderSwitch.objects.filter(pk=switch.pk).update(
            status=Status.BLOCKED, finished_at=timezone.now(), note=f"Blocked: {result['rule']}. Staff may force it."
        )
        return "blocked"
    except Exception as err:
        log.exception("embedder switch %s failed", switch_id)
        import traceback

        EmbedderSwitch.objects.filter(pk=switch_id, status__in=EmbedderSwitch.IN_PROGRESS).update(
            status=Status.FAILED,
            finished_at=timezone.now(),
            error=f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}"[-20000:],
        )
        return "failed"


def _unusable(switch: EmbedderSwitch) -> set[int]:
    switch.refresh_from_db(fields=["skipped"])
    return set().union(*[set(v) for v in (switch.skipped or {}).values()]) if switch.skipped else set()


# ---- switching and rolling back --------------------------------------------------------------------


def _serve(name: str) -> int:
    """Copy embedder ``name``'s templates onto the faces' rows (one UPDATE): what the gallery reads.

    What it costs, and why it stays one statement in the caller's transaction: the change must be
    seen by every reader at once (a gallery half of one embedder and half of the other would score
    128-d against 256-d templates), and the gallery, its snapshots and the edge exports read
    ``FaceImage.embedding``. So a switch or a rollback rewrites every face row in one transaction:
    in PostgreSQL a new row version per face (the old ones left to VACUUM) and a row lock on every
    face until the commit, in SQLite the database's write lock. Readers are never blocked
    (recognize keeps serving the old templates until the commit, then reloads); a writer to a face
    row the UPDATE has reached (enrollment, deletion, review) waits for the commit. Measured on
    PostgreSQL (BENCHMARKS.md, "Embedder switch"): 2.3 s at 100,000 faces, 44.5 s at 1M. Making
    it cheap would mean readers reading FaceEmbedding by the served embedder's name (a switch = one
    row flipped), a change to the hot path not made here."""
    template = FaceEmbedding.objects.filter(face=OuterRef("pk"), embedder=name)
    return FaceImage.objects.filter(Exists(template)).update(embedding=Subquery(template.values("vector")[:1]), embedder=name)


def activate(switch: EmbedderSwitch, note: str = "", by=None) -> None:
    """Serve ``switch``'s embedder, atomically (see the module, step 3)."""
    with transaction.atomic():
        reembed_for_switch(switch)  # faces enrolled while it ran, under this transaction
        keep_served_templates()
        served = _serve(switch.name)
        now = timezone.now()
        EmbedderSwitch.objects.select_for_update().filter(status=Status.ACTIVE).exclude(pk=switch.pk).update(
            status=Status.RETIRED, retired_at=now
        )
        fields = {"status": Status.ACTIVE, "activated_at": now, "finished_at": now, "note": f"{note} ({served} faces served)."}
        if by is not None and by.is_authenticated:
            fields["activated_by"] = by
        EmbedderSwitch.objects.filter(pk=switch.pk).update(**fields)
        GalleryChange.objects.record(GalleryChange.Kind.EMBEDDER)
        transaction.on_commit(_after_switch)
    pipelines.refresh_served_kind()  # this process at once (others: through the change log)


def _after_switch() -> None:
    """Once a switch or rollback commits: stragglers caught up, a snapshot of the new gallery for
    every process's next start, and a retrain (debounced) so the open-set calibration and any head
    are made with the embedder served now."""
    from django_q.tasks import async_task

    from training import services as training

    pipelines.refresh_served_kind()
    async_task(CATCH_UP_TASK, group="embedder", cluster=settings.TRAINING_Q_CLUSTER)
    async_task("recognition.tasks.write_gallery_snapshot", True, group="gallery-snapshot")
    training.enrollment_changed()


def rollback(by=None) -> EmbedderSwitch:
    """Serve the embedder served before the active one again, at once, from the kept templates."""
    active = EmbedderSwitch.objects.active()
    if active is None or not active.previous:
        raise SwitchRefused("There is no earlier embedder to roll back to.")
    if EmbedderSwitch.objects.in_progress().exists():
        raise SwitchRefused("A switch is in progress; wait for it to finish first.")
    servable(active.previous)
    with transaction.atomic():
        back = EmbedderSwitch.objects.create(
            embedder=active.previous,
            name=active.previous_name,
            previous=active.embedder,
            previous_name=active.name,
            trigger=EmbedderSwitch.Trigger.ROLLBACK,
            status=Status.EVALUATING,  # in progress for the moment of the transaction
            requested_by=by if by is not None and by.is_authenticated else None,
            evaluation={"old": active.evaluation.get("new"), "new": active.evaluation.get("old")} if active.evaluation else {},
        )
        keep_served_templates()
        served = _serve(back.name)
        now = timezone.now()
        EmbedderSwitch.objects.filter(pk=active.pk).update(status=Status.RETIRED, retired_at=now)
        EmbedderSwitch.objects.filter(pk=back.pk).update(
            status=Status.ACTIVE,
            activated_at=now,
            finished_at=now,
            activated_by=back.requested_by,
            note=f"Rolled back from {active.embedder} ({served} faces served from kept templates).",
        )
        GalleryChange.objects.record(GalleryChange.Kind.EMBEDDER)
        transaction.on_commit(_after_switch)
    pipelines.refresh_served_kind()
    back.refresh_from_db()
    return back


def catch_up_served() -> str:
    """Faces lacking the served embedder (enrolled by a process that had not yet seen a switch, or
    before a rollback): from kept templates, else embedded (recognition.reembedding)."""
    from .reembedding import reembed_faces

    pipelines.refresh_served_kind()
    report = reembed_faces(batch=settings.EMBEDDER_SWITCH_BATCH)
    return f"{report.copied} copied, {report.reembedded} embedded, {report.lacking_after} still lacking"
