"""Training at scale: runs go to their own django-q cluster, and past a size a run evaluates a
sample of people with nearest neighbour only (bounded time and memory); the per-person split is one
sort, not one scan of every face per person."""

from __future__ import annotations

import numpy as np
import pytest

from training.engine.dataset import FaceSet, sample_people, split_per_person


def reference_split(faces: FaceSet, fraction: float, seed: int):
    """The split as it was written before (one scan per person), to compare with."""
    rng = np.random.default_rng(seed)
    order = np.argsort(faces.keys, kind="stable")
    train, held = [], []
    for person in np.unique(faces.labels):
        idx = order[faces.labels[order] == person]
        if len(idx) < 2:
            train.extend(idx.tolist())
            continue
        idx = rng.permutation(idx)
        n_held = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        held.extend(idx[:n_held].tolist())
        train.extend(idx[n_held:].tolist())
    return sorted(train), sorted(held)


def test_the_split_is_the_same_as_before_for_any_order_of_faces():
    rng = np.random.default_rng(3)
    n = 3000
    labels = rng.integers(0, 700, n)
    keys = rng.permutation(n * 3)[:n]
    faces = FaceSet(rng.standard_normal((n, 128)).astype(np.float32), labels, keys)
    split = split_per_person(faces, 0.3, seed=5)
    train, held = reference_split(faces, 0.3, seed=5)
    assert sorted(split.train.keys.tolist()) == sorted(keys[train].tolist())
    assert sorted(split.held_out.keys.tolist()) == sorted(keys[held].tolist())


def test_a_sample_of_people_keeps_all_their_faces():
    labels = np.repeat(np.arange(50), 3)
    faces = FaceSet(np.zeros((150, 128), np.float32), labels, np.arange(150))
    sample = sample_people(faces, 10, seed=1)
    assert len(np.unique(sample.labels)) == 10 and len(sample) == 30
    assert sample_people(faces, 100) is faces


@pytest.mark.django_db
def test_a_delayed_retrain_is_scheduled_on_the_training_cluster(settings, django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    from training import services
    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        services.request_training(ModelVersion.Trigger.ENROLLMENT, delay_seconds=60)
    schedule = Schedule.objects.get()
    assert schedule.func == services.RUN_TASK and schedule.cluster == settings.TRAINING_Q_CLUSTER == "training"
    assert "training" in settings.Q_CLUSTER["ALT_CLUSTERS"]


@pytest.mark.django_db
def test_past_the_people_limit_a_run_evaluates_a_sample_with_nearest_neighbour_only(settings, django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    from training import services
    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()
    settings.TRAINING_EXPORT_TFLITE = False
    settings.TRAINING_UNKNOWN_FACES_DIR = None
    settings.TRAINING_APPROACHES = ["nearest_neighbour", "softmax_head", "lbph", "eigenfaces"]
    settings.TRAINING_EVAL_MAX_PEOPLE = 5
    settings.TRAINING_PIXEL_MAX_FACES = 3
    settings.TRAINING_EDGE_MAX_FACES = 3
    with django_capture_on_commit_callbacks(execute=True):
        version, _ = services.request_training(ModelVersion.Trigger.API)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.ACTIVE, version.error
    assert [row["name"] for row in version.comparison["table"]] == ["nearest_neighbour"]
    assert version.recognizer == "nearest_neighbour" and version.people_count == 10
    assert len(version.metrics["per_person"]) <= 5
    assert "a sample of 5 people" in version.log and "softmax_head" in version.log
    assert "pixel baselines (LBPH, Eigenfaces) are skipped" in version.log
    import json

    with version.labels.open("rb") as fh:
        labels = json.load(fh)
    assert len(labels["people"]) == 10 and labels["gallery"]["embeddings"] == [] and labels["gallery"]["omitted"]


def test_a_training_worker_yields_the_cpu_to_enrollment_on_every_thread():
    """A run lowers its worker's priority, threads started before it included (Linux keeps a
    niceness per thread); done in a forked child so the test process keeps its own."""
    import os
    import threading

    from training.services import yield_cpu_to_enrollment

    before = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, before + 7)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a thread already running, as TensorFlow's pools are in a worker
        try:
            stop = threading.Event()
            thread = threading.Thread(target=stop.wait, args=(10,))
            thread.start()
            got = yield_cpu_to_enrollment(target)
            os.write(write, f"{got} {os.getpriority(os.PRIO_PROCESS, thread.native_id)}".encode())
            stop.set()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100).split() == [str(target).encode(), str(target).encode()]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
