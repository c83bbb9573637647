"""Training runs: queueing (debounced, one at a time), claiming, failure handling and activation.

The run itself (gather, compare, calibrate, export, decide) is in ``training.runs``; the learning
code is Django-free in ``training.engine``.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from .models import ModelVersion

log = logging.getLogger(__name__)

RUN_TASK = "training.tasks.run_training"
# A queued run that finds another one training waits this long and tries again.
WAIT_FOR_RUNNING_SECONDS = 30


def request_training(trigger: str, user=None, force_activate: bool = False, delay_seconds: int = 0) -> tuple[ModelVersion, bool]:
    """Queue a training run, or join the one already queued (debounce). Returns (version, created).

    The database allows one queued version, so simultaneous requests give one run: the loser of
    the race gets the winner's version. A run that is training meanwhile is not disturbed; the
    queued one starts after it."""
    fail_dead_runs()
    queued = ModelVersion.objects.queued().first()
    if queued is not None:
        if force_activate and not queued.force_activate:
            ModelVersion.objects.filter(pk=queued.pk).update(force_activate=True)
            queued.force_activate = True
        return queued, False
    number = ModelVersion.next_number()
    try:
        with transaction.atomic():
            version = ModelVersion.objects.create(
                number=number,
                trigger=trigger,
                requested_by=user if user is not None and user.is_authenticated else None,
                force_activate=force_activate,
                stage="queued",
            )
    except IntegrityError:
        queued = ModelVersion.objects.queued().first()
        if queued is None:
            raise
        return queued, False
    transaction.on_commit(lambda: enqueue(version.pk, delay_seconds))
    return version, True


def enrollment_changed() -> None:
    """Called when the gallery changes (a face accepted, a person erased): retrain, debounced."""
    if settings.TRAINING_RETRAIN_ON_ENROLLMENT:
        request_training(ModelVersion.Trigger.ENROLLMENT, delay_seconds=settings.TRAINING_DEBOUNCE_SECONDS)


def enqueue(version_id: int, delay_seconds: int = 0) -> None:
    """Hand the run to the training cluster's queue (TRAINING_Q_CLUSTER: never the one that
    processes photos) now, or through a one-off schedule ``delay_seconds`` from now."""
    if delay_seconds > 0:
        from django_q.models import Schedule

        Schedule.objects.create(
            name=f"training-run-{version_id}-{timezone.now():%H%M%S%f}",
            func=RUN_TASK,
            args=repr((version_id,)),
            schedule_type=Schedule.ONCE,
            repeats=-1,  # deleted once it has run
            next_run=timezone.now() + timedelta(seconds=delay_seconds),
            cluster=settings.TRAINING_Q_CLUSTER,  # run by the training cluster's scheduler, on its queue
        )
        return
    task_id = async_task(
        RUN_TASK, version_id, task_name=f"training-run-{version_id}", group="training", cluster=settings.TRAINING_Q_CLUSTER
    )
    ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.QUEUED).update(task_id=task_id or "")


def claim(version_id: int) -> bool:
    """QUEUED -> TRAINING for this worker; False if it is not queued or another run is training."""
    now = timezone.now()
    try:
        with transaction.atomic():
            return bool(
                ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.QUEUED).update(
                    status=ModelVersion.Status.TRAINING,
                    started_at=now,
                    heartbeat_at=now,
                    stage="starting",
                    progress=0,
                    worker=f"{socket.gethostname()}:{os.getpid()}",
                )
            )
    except IntegrityError:  # one_training_model_version: another run holds the slot
        return False


def fail(version_id: int, error: str) -> None:
    """Mark a queued or running version failed; the active version is never touched."""
    ModelVersion.objects.filter(pk=version_id, status__in=[ModelVersion.Status.QUEUED, ModelVersion.Status.TRAINING]).update(
        status=ModelVersion.Status.FAILED, error=error[-20000:], finished_at=timezone.now(), stage="failed"
    )


def fail_dead_runs() -> list[int]:
    """Runs whose worker died (killed, timed out, machine restarted) are marked failed, so the
    queue moves on. A run is dead when its django-q task finished unsuccessfully, when its worker
    process on this host no longer exists (django-q does not record a SIGKILLed worker's task), or
    when it has reported no progress for TRAINING_STALE_SECONDS."""
    from django_q.models import Task

    dead = []
    stale_before = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_SECONDS)
    for version in ModelVersion.objects.running():
        task = Task.objects.filter(id=version.task_id).first() if version.task_id else None
        if task is not None and not task.success:
            fail(version.pk, f"The worker running this version failed: {task.result}")
        elif not worker_alive(version.worker):
            fail(version.pk, f"The worker process running this version ({version.worker}) is gone: it was killed or crashed.")
        elif version.heartbeat_at is None or version.heartbeat_at < stale_before:
            last = version.heartbeat_at.isoformat(timespec="seconds") if version.heartbeat_at else "never"
            fail(
                version.pk,
                f"The worker stopped reporting progress (last report: {last}, stage {version.stage!r}); "
                "it was probably killed or timed out.",
            )
        else:
            continue
        dead.append(version.pk)
    # A queued run whose task was lost (broker flushed) would block every later request: requeue it,
    # once per window: heartbeat_at records the requeue, so the requeued task (which calls this
    # first thing, and in sync mode runs inside this loop) does not requeue it again.
    lost_before = stale_before - timedelta(seconds=settings.TRAINING_DEBOUNCE_SECONDS)
    lost = ModelVersion.objects.queued().filter(created_at__lt=lost_before)
    for version in lost.filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=lost_before)):
        if ModelVersion.objects.filter(pk=version.pk, heartbeat_at=version.heartbeat_at).update(heartbeat_at=timezone.now()):
            enqueue(version.pk)
    return dead


def worker_alive(worker: str) -> bool:
    """Whether the background worker recorded as ``worker`` (``"host:pid"``, as a training run or an
    embedder switch records the process that claimed it) may still be running: False only when it
    ran on this host and that process no longer exists (django-q records no result for a SIGKILLed
    worker). A worker on another host, or an unparsable record, counts as alive: the caller judges
    it by its heartbeat alone."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def yield_cpu_to_enrollment(niceness: int | None = None) -> int:
    """Lower this process's CPU priority (every thread) to ``TRAINING_NICE``; returns the niceness.

    A training run keeps its worker's cores busy for minutes (reading a 1M-face gallery, fitting
    models), and on a small machine the photo-processing worker and the web workers compete with
    it: at equal priority enrollment slowed while a run trained. The training cluster's worker only
    runs training, so it stays lowered; Linux keeps a niceness per thread, hence every thread."""
    target = settings.TRAINING_NICE if niceness is None else niceness
    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.exists() else [0]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
        except OSError:  # a thread that ended meanwhile, or a platform without per-thread priorities
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def run_training(version_id: int) -> str:
    """The body of the django-q task: claim the version, run it, record success or failure."""
    from . import runs

    fail_dead_runs()
    if not settings.Q_CLUSTER.get("sync"):  # in sync mode the caller's own process runs it
        yield_cpu_to_enrollment()
    if not claim(version_id):
        version = ModelVersion.objects.filter(pk=version_id).first()
        if version is not None and version.status == ModelVersion.Status.QUEUED:
            enqueue(version_id, delay_seconds=WAIT_FOR_RUNNING_SECONDS)  # another run is training
            return "waiting"
        return "not queued"
    try:
        runs.TrainingRun(version_id).run()
    except Exception as err:
        log.exception("training run %s failed", version_id)
        import traceback

        fail(version_id, f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")
        return "failed"
    try:
        prune_versions()
    except Exception:  # the run succeeded; the daily retention tries again
        log.exception("pruning model versions after run %s failed", version_id)
    return ModelVersion.objects.filter(pk=version_id).values_list("status", flat=True).first() or "deleted"


def prune_versions(keep: int | None = None) -> int:
    """Delete the model versions past the newest ``keep`` (TRAINING_KEEP_VERSIONS; 0 keeps all) of
    those staff could roll back to (ready, retired), and of the failed ones; never the active, a
    queued or a training version. Each version's label map holds an embedding of every photo it was
    trained on and its metrics name people: superseded copies are not kept for ever, and a photo's
    deletion has fewer maps to rewrite. A version's files go with it (training.signals). Returns
    how many were deleted."""
    keep = settings.TRAINING_KEEP_VERSIONS if keep is None else keep
    if keep <= 0:
        return 0
    deleted = 0
    for statuses in ([ModelVersion.Status.READY, ModelVersion.Status.RETIRED], [ModelVersion.Status.FAILED]):
        kept = list(ModelVersion.objects.filter(status__in=statuses).order_by("-number").values_list("pk", flat=True)[:keep])
        old = ModelVersion.objects.filter(status__in=statuses).exclude(pk__in=kept).order_by("number")
        for pk in old.values_list("pk", flat=True):
            with transaction.atomic():
                # locked, and still of those statuses: staff may have activated it meanwhile
                version = ModelVersion.objects.select_for_update().filter(pk=pk, status__in=statuses).first()
                if version is not None:
                    version.delete()
                    deleted += 1
    if deleted:
        log.info("retention: %d model versions deleted (TRAINING_KEEP_VERSIONS=%d)", deleted, keep)
    return deleted


def activate(version: ModelVersion) -> None:
    """Staff activation or rollback: any finished version may become the active one."""
    if not version.is_finished:
        raise ValueError(
            f"Version {version.number} is {version.get_status_display().lower()}; only a finished version can be activated."
        )
    version.activate()
