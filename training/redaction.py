"""Taking people and photos out of stored model versions: an erased person (``forget_person``)
and a deleted photo (``redact_pending`` -> ``forget_deleted_faces``) leave every version's artifacts, which a version
keeps serving without them. The run itself checks once more before it finishes (training.runs),
since it worked from a snapshot taken before.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from .models import ModelVersion

log = logging.getLogger(__name__)

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


REDACT_TASK = "training.tasks.redact_pending"


def queue_redaction(_=None) -> None:
    """Queue the redaction of the deleted photos noted so far (``PendingRedaction``: the task carries
    no argument, so never an embedding in the broker)."""
    try:
        async_task(REDACT_TASK, task_name="redact-deleted-photos", group="privacy")
    except Exception as err:
        # the broker is down: a one-off schedule row asks again once it is back (and the daily
        # retention drains what is left)
        log.warning("could not queue the redaction of deleted photos, scheduled it instead: %s", err)
        from django_q.models import Schedule
        from django_q.tasks import schedule

        schedule(
            REDACT_TASK,
            name=f"redact-deleted-photos-{uuid.uuid4().hex[:12]}",
            schedule_type=Schedule.ONCE,
            next_run=timezone.now(),
        )


def redact_pending() -> dict[str, int]:
    """Take every deleted photo noted so far out of the model versions' label maps, in one pass,
    then forget the notes. Photos deleted one request at a time (the API deletes one per request)
    are redacted together by whichever task runs first; the tasks after it find nothing to do. At
    100k faces a map holding a photo costs ~28 s to rewrite (BENCHMARKS.md), so this is what keeps
    a client deleting 100 photos from costing 100 passes. A pass that fails leaves its notes for
    the next one (or the daily retention)."""
    from .models import PendingRedaction

    pending = list(PendingRedaction.objects.order_by("pk").values_list("pk", "face_id", "added_at"))
    if not pending:
        return {}
    added = [when for _, _, when in pending]
    since = None if None in added else min(added).isoformat()
    counts = forget_deleted_faces(sorted({face for _, face, _ in pending}), since)
    notes = [pk for pk, _, _ in pending]  # only these: a note committed meanwhile waits for its own task
    for start in range(0, len(notes), 500):
        PendingRedaction.objects.filter(pk__in=notes[start : start + 500]).delete()
    return {**counts, "photos": len(notes)}


# How far apart the clocks of the machines that add photos and finish training runs may be.
CLOCK_SKEW = timedelta(minutes=10)


def forget_deleted_faces(face_ids=None, since: str | None = None) -> dict[str, int]:
    """Take deleted photos out of every model version's label map (``redact_pending``, when photos are
    deleted: training.signals). ``face_ids``: the photos deleted (None: look for every deleted
    photo). ``since``: when the oldest of them was added (ISO 8601); a version finished before then
    (less the clocks' skew) was trained without them, and its label map, tens of MB at a large
    gallery, is not read."""
    counts: Counter = Counter()
    versions = ModelVersion.objects.exclude(labels="")
    if since is not None:
        added = datetime.fromisoformat(since) - CLOCK_SKEW
        versions = versions.filter(Q(finished_at__isnull=True) | Q(finished_at__gte=added))
    for version in versions.order_by("pk"):
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
    from people.models import FaceImage

    gone = FaceImage.objects.gone(f for f in faces if f is not None)
    keep = [f is not None and f not in gone for f in faces]
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
            # the label map rounds to 6 decimals; a photo re-processed on another runtime (keras /
            # TFLite) differs by ~1e-6-1e-5; two different photos differ by ~0.05 somewhere
            if distance[i, best] <= 1e-4:
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
