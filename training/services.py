"""Training runs: queueing (debounced, one at a time), claiming, failure handling and activation.

The run itself (gather, compare, calibrate, export, decide) is in ``training.runs``; the learning
code is Django-free in ``training.engine``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
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
    return ModelVersion.objects.filter(pk=version_id).values_list("status", flat=True).first() or "deleted"


def activate(version: ModelVersion) -> None:
    """Staff activation or rollback: any finished version may become the active one."""
    if not version.is_finished:
        raise ValueError(
            f"Version {version.number} is {version.get_status_display().lower()}; only a finished version can be activated."
        )
    version.activate()


# ---- erasure: taking one person out of every version's artifacts ----------------------------------

ERASED_LABEL = "(erased)"


def forget_person(person_id: int) -> dict[str, int]:
    """Take an erased person out of every model version; returns what was rewritten, by kind.

    A version keeps serving, minus the person: the label map is rewritten without their entry,
    reference embeddings and head column (and its sha256 updated); the softmax head's .npz loses
    their class column (a head left with fewer than two classes is retired: the version serves
    nearest neighbour); per-person metrics, the confusion matrix and the names shown by the API
    lose their row, and the confusion plot is redrawn without them. Aggregate metrics (accuracy,
    FAR, counts) are anonymous and are kept as measured. The TFLite embedder holds no person.
    Replaced files are deleted after the transaction commits."""
    counts: Counter = Counter()
    for version in ModelVersion.objects.order_by("pk"):
        counts.update(redact_version(version, person_id))
    return dict(counts)


@contextmanager
def _locked(version: ModelVersion):
    """The version's row, fresh and locked for this transaction (None if it was deleted): each
    redaction reads a label map after the previous one wrote it, so none writes back what another
    took out (an erasure and a photo's deletion redacting the same version at once)."""
    with transaction.atomic():
        yield ModelVersion.objects.select_for_update().filter(pk=version.pk).first()


def redact_version(version: ModelVersion, person_id: int) -> dict[str, int]:
    with _locked(version) as locked:
        return {} if locked is None else _redact_person(locked, person_id)


def _redact_person(version: ModelVersion, person_id: int) -> dict[str, int]:
    from training.engine import evaluation
    from training.engine.export import sha256_bytes

    person_id = int(person_id)
    counts: Counter = Counter()
    replaced: list[str] = []
    fields: set[str] = set()

    labels = _read_artifact(version.labels)
    if labels is not None:
        redacted = labels_without(json.loads(labels), person_id)
        if redacted is not None:
            content = json.dumps(redacted, separators=(",", ":")).encode()
            replaced.append(version.labels.name)
            version.labels.save("labels.json", ContentFile(content), save=False)
            version.labels_sha256 = sha256_bytes(content)
            fields |= {"labels", "labels_sha256"}
            counts["label_maps"] += 1

    head = _read_artifact(version.head)
    if head is not None:
        with np.load(io.BytesIO(head)) as stored:
            arrays = {key: stored[key] for key in stored.files}
        keep = arrays["classes"] != person_id
        if not keep.all():
            replaced.append(version.head.name)
            if keep.sum() >= 2:
                buffer = io.BytesIO()
                np.savez(buffer, kernel=arrays["kernel"][:, keep], bias=arrays["bias"][keep], classes=arrays["classes"][keep])
                version.head.save("head.npz", ContentFile(buffer.getvalue()), save=False)
                version.head_sha256 = sha256_bytes(buffer.getvalue())
            else:  # one class cannot tell anyone apart: the version serves nearest neighbour
                version.head, version.head_sha256, version.head_threshold = "", "", None
                version.recognizer = ModelVersion.Recognizer.NEAREST_NEIGHBOUR
                fields |= {"head_threshold", "recognizer"}
            fields |= {"head", "head_sha256"}
            counts["heads"] += 1

    metrics, named = metrics_without(version.metrics or {}, person_id)
    if named:
        version.metrics = metrics
        fields.add("metrics")
        counts["metrics"] += 1
        if version.confusion_plot:
            replaced.append(version.confusion_plot.name)
            rows = metrics.get("per_person")
            if rows is not None and "confusion" in metrics:
                names = metrics.get("people_names") or {}
                png = evaluation.confusion_png(metrics["confusion"], [names.get(str(r["person"]), ERASED_LABEL) for r in rows])
                version.confusion_plot.save("confusion.png", ContentFile(png), save=False)
            else:
                version.confusion_plot = ""
            fields.add("confusion_plot")
            counts["plots"] += 1

    if fields:
        version.save(update_fields=sorted(fields))
        storage = version.labels.storage
        transaction.on_commit(lambda: [storage.delete(name) for name in replaced])
        counts["versions"] += 1
    return dict(counts)


def labels_without(data: dict, person_id: int) -> dict | None:
    """A label map (see TrainingRun.label_map) without one person; None if they are not in it."""
    people = data.get("people") or []
    gone = [p["index"] for p in people if p.get("person_id") == person_id]
    if not gone:
        return None
    kept = [p for p in people if p.get("person_id") != person_id]
    index = {p["index"]: new for new, p in enumerate(kept)}
    data = dict(data, people=[dict(p, index=index[p["index"]]) for p in kept])
    gallery = data.get("gallery")
    if gallery:
        data["gallery"] = gallery_rows(gallery, [label in index for label in gallery["labels"]], index)
    head = data.get("head")
    if head:
        columns = [c for c, label in enumerate(head["people"]) if label in index]
        data["head"] = dict(
            head,
            people=[index[head["people"][c]] for c in columns],
            kernel=[[row[c] for c in columns] for row in head["kernel"]],
            bias=[head["bias"][c] for c in columns],
        )
    return data


def gallery_rows(gallery: dict, keep: list[bool], index: dict[int, int] | None = None, faces: list | None = None) -> dict:
    """A label map's edge gallery with only the rows kept (their person indexes renumbered by
    ``index``; ``faces``, the photo of each row, written when it was not recorded)."""
    rows = [i for i, kept in enumerate(keep) if kept]
    labels = gallery["labels"]
    redacted = dict(gallery, labels=[labels[i] if index is None else index[labels[i]] for i in rows])
    redacted["embeddings"] = [gallery["embeddings"][i] for i in rows]
    faces = gallery.get("faces", faces)
    if faces is not None:
        redacted["faces"] = [faces[i] for i in rows]
    return redacted


FORGET_FACES_TASK = "training.tasks.forget_deleted_faces"


def queue_forget_deleted_faces(face_ids) -> None:
    """Queue the redaction of these deleted photos (their ids only: never an embedding in the broker)."""
    face_ids = sorted(int(f) for f in face_ids)
    try:
        async_task(FORGET_FACES_TASK, face_ids, task_name="forget-deleted-faces", group="privacy")
    except Exception as err:
        # the broker is down: a one-off schedule row asks again (for every deleted photo) once it is back
        log.warning("could not queue the redaction of deleted photos, scheduled it instead: %s", err)
        from django_q.models import Schedule
        from django_q.tasks import schedule

        schedule(
            FORGET_FACES_TASK,
            name=f"forget-deleted-faces-{uuid.uuid4().hex[:12]}",
            schedule_type=Schedule.ONCE,
            next_run=timezone.now(),
        )


def forget_deleted_faces(face_ids=None) -> dict[str, int]:
    """Take deleted photos out of every model version's label map (task ``training.tasks.forget_deleted_faces``,
    queued when a photo is deleted: training.signals). ``face_ids``: the photos just deleted (None:
    look for every deleted photo)."""
    counts: Counter = Counter()
    for version in ModelVersion.objects.exclude(labels="").order_by("pk"):
        counts.update(redact_deleted_faces(version, face_ids))
    return dict(counts)


def redact_deleted_faces(version: ModelVersion, face_ids=None) -> dict[str, int]:
    """The version's label map without the embeddings of photos deleted since it was trained: its
    edge gallery holds one raw embedding per photo, and a deleted photo must leave every copy.
    (Its head, if any, was fitted on them: weights, not embeddings; the next retrain replaces it.)

    A label map records each row's photo (``faces``); one written before that is matched to the
    stored embeddings of its embedder, and the rows that match no stored photo are dropped; if
    none matches (that embedder's embeddings are no longer stored) it is left as it is."""
    with _locked(version) as locked:
        return {} if locked is None else _redact_faces(locked, face_ids)


def _redact_faces(version: ModelVersion, face_ids) -> dict[str, int]:
    from training.engine.export import sha256_bytes

    raw = _read_artifact(version.labels)
    if raw is None:
        return {}
    data = json.loads(raw)
    gallery = data.get("gallery") or {}
    if not gallery.get("embeddings"):
        return {}
    faces = gallery.get("faces")
    recorded = faces is not None
    if not recorded:
        faces = _face_of_each_row(version, data)
        if faces is None:
            log.warning(
                "model version %s: no stored embedding matches its label map; deleted photos not looked for", version.number
            )
            return {}
    elif face_ids is not None and not set(faces) & {int(f) for f in face_ids}:
        return {}
    alive = _existing_faces([f for f in faces if f is not None])
    keep = [f is not None and f in alive for f in faces]
    if all(keep) and recorded:
        return {}
    data["gallery"] = gallery_rows(gallery, keep, faces=faces)
    content = json.dumps(data, separators=(",", ":")).encode()
    old = version.labels.name
    version.labels.save("labels.json", ContentFile(content), save=False)
    version.labels_sha256 = sha256_bytes(content)
    version.save(update_fields=["labels", "labels_sha256"])
    storage = version.labels.storage
    transaction.on_commit(lambda: storage.delete(old))
    return {"versions": 1, "faces_removed": keep.count(False)}


def _existing_faces(face_ids: list[int]) -> set[int]:
    from people.models import FaceImage

    alive: set[int] = set()
    for start in range(0, len(face_ids), 1000):
        alive.update(FaceImage.objects.filter(pk__in=face_ids[start : start + 1000]).values_list("pk", flat=True))
    return alive


def _face_of_each_row(version: ModelVersion, data: dict) -> list[int | None] | None:
    """The photo each row of an older label map's edge gallery is (None: no stored photo of that person
    has the row's embedding, to its rounding); None if no row matches at all."""
    from people.models import FaceEmbedding, FaceImage

    person_of = {int(p["index"]): int(p["person_id"]) for p in data.get("people", [])}
    gallery = data["gallery"]
    rows = np.asarray(gallery["embeddings"], np.float32)
    people = np.asarray([person_of.get(int(label), -1) for label in gallery["labels"]], np.int64)
    stored: dict[int, list[tuple[int, bytes]]] = {}
    wanted = sorted(set(people.tolist()) - {-1})
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for face, person, blob in FaceImage.objects.filter(person_id__in=chunk, embedder=version.embedder).values_list(
            "pk", "person_id", "embedding"
        ):
            if blob is not None:
                stored.setdefault(person, []).append((face, bytes(blob)))
        for face, person, blob in FaceEmbedding.objects.filter(face__person_id__in=chunk, embedder=version.embedder).values_list(
            "face_id", "face__person_id", "vector"
        ):
            stored.setdefault(person, []).append((face, bytes(blob)))
    faces: list[int | None] = [None] * len(rows)
    for person, candidates in stored.items():
        mine = np.flatnonzero(people == person)
        vectors = np.stack([np.frombuffer(blob, np.float32) for _, blob in candidates])
        if vectors.shape[1] != rows.shape[1]:
            continue
        distance = np.abs(rows[mine][:, None, :] - vectors[None]).max(axis=2)
        for i, row in enumerate(mine):
            best = int(distance[i].argmin())
            if distance[i, best] <= 2e-6:  # the label map rounds to 6 decimals
                faces[row] = candidates[best][0]
    return faces if any(f is not None for f in faces) else None


def metrics_without(metrics: dict, person_id: int) -> tuple[dict, bool]:
    """A version's metrics without one person's per-person row, confusion row and column, and
    name; and whether they were named at all."""
    metrics = dict(metrics)
    named = False
    rows = metrics.get("per_person")
    if rows is not None:
        drop = [i for i, row in enumerate(rows) if row.get("person") == person_id]
        if drop:
            named = True
            metrics["per_person"] = [row for i, row in enumerate(rows) if i not in drop]
            if "confusion" in metrics:
                metrics["confusion"] = [
                    [n for j, n in enumerate(row) if j not in drop] for i, row in enumerate(metrics["confusion"]) if i not in drop
                ]
    names = metrics.get("people_names")
    if names and str(person_id) in names:
        named = True
        metrics["people_names"] = {k: v for k, v in names.items() if k != str(person_id)}
    if person_id in (metrics.get("train_only_people") or []):
        named = True
        metrics["train_only_people"] = [p for p in metrics["train_only_people"] if p != person_id]
    return metrics, named


def _read_artifact(field) -> bytes | None:
    if not field or not field.name:
        return None
    try:
        with field.storage.open(field.name, "rb") as fh:
            return fh.read()
    except OSError:
        log.warning("artifact %s is missing; nothing to redact in it", field.name)
        return None
