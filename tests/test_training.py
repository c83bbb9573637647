"""Training runs: evaluated, versioned models trained by django-q, with safe activation and faults."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from training.engine.dataset import FaceSet, split_per_person
from training.engine.evaluation import UNKNOWN, evaluate, threshold_at_far
from training.engine.heads import triplet_semihard_loss

from .conftest import person_named

ALL_APPROACHES = {"nearest_neighbour", "softmax_head", "triplet_adapter", "siamese_head", "lbph", "eigenfaces"}


# ---- the engine, without Django -------------------------------------------------------------------


def test_threshold_at_far_accepts_at_most_the_target_share_of_impostors():
    impostor = np.linspace(0.0, 0.99, 100)
    t = threshold_at_far(impostor, 0.05)
    assert np.mean(impostor >= t) == pytest.approx(0.05)
    assert np.mean(impostor >= threshold_at_far(impostor, 0.0)) == 0.0


def test_evaluation_counts_top1_far_and_unknown_rejection_on_a_known_matrix():
    # three probes of classes 0, 1, 1 and one unknown; probe 3 (class 1) is confused with class 0
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5], [0.3, 0.35]])
    truth = np.array([0, 1, 1, UNKNOWN])
    result = evaluate(scores, truth, ["a", "b"], threshold=0.55)
    assert result.top1_accuracy == pytest.approx(2 / 3)
    assert result.confusion == [[1, 0], [1, 1]]
    assert result.unknown_rejection == 1.0
    # each search's best wrong person: 0.1, 0.2, 0.6, 0.35 -> one of four is >= 0.55
    assert result.far == pytest.approx(0.25)
    assert result.frr == pytest.approx(1 / 3)  # 0.5 < 0.55


def test_split_keeps_single_image_people_in_training_only():
    labels = np.array([1, 1, 1, 2, 2, 3])
    faces = FaceSet(np.eye(6, 128, dtype=np.float32), labels, np.arange(10, 16))
    split = split_per_person(faces, held_out_fraction=0.3)
    assert split.train_only_people == [3]
    assert set(split.train.labels) == {1, 2, 3}  # everybody keeps a training image
    assert sorted(split.held_out.labels.tolist()) == [1, 2]
    assert len(split.train) + len(split.held_out) == 6


def test_semihard_triplet_loss_matches_a_brute_force_reference():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 3, 12)
    margin = 0.2
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    losses = []
    for a in range(12):
        for p in range(12):
            if a == p or labels[a] != labels[p]:
                continue
            negatives = [d[a, n] for n in range(12) if labels[n] != labels[a]]
            semihard = [v for v in negatives if v > d[a, p]]
            chosen = min(semihard) if semihard else max(negatives)
            losses.append(max(d[a, p] - chosen + margin, 0.0))
    got = float(triplet_semihard_loss(labels, emb, margin).numpy())
    assert got == pytest.approx(np.mean(losses), abs=1e-4)


def test_production_choice_takes_the_better_recognizer_on_held_out_data_and_says_why():
    from training.engine.comparison import Comparison, Outcome, choose_production

    truth = np.array([0, 1, UNKNOWN])
    good = evaluate(np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.2]]), truth, [1, 2])
    poor = evaluate(np.array([[0.4, 0.6], [0.1, 0.9], [0.7, 0.2]]), truth, [1, 2])
    comparison = Comparison({"nearest_neighbour": Outcome("nearest_neighbour", "embeddings", evaluation=good, fitted=object())})
    comparison.outcomes["softmax_head"] = Outcome("softmax_head", "embeddings", evaluation=poor, fitted=object())
    assert choose_production(comparison)[0] == "nearest_neighbour"
    comparison.outcomes["nearest_neighbour"].evaluation, comparison.outcomes["softmax_head"].evaluation = poor, good
    name, reason = choose_production(comparison)
    assert name == "softmax_head" and reason.startswith("Best open-set score")  # recognition serves the head
    # pinning names a recognizer that was fitted; one that was not leaves the choice to the data
    name, reason = choose_production(comparison, pinned="nearest_neighbour")
    assert name == "nearest_neighbour" and reason.startswith("Pinned by TRAINING_RECOGNIZER=nearest_neighbour")
    name, reason = choose_production(comparison, pinned="triplet_adapter")
    assert name == "softmax_head" and "TRAINING_RECOGNIZER asks for triplet_adapter" in reason


# ---- training runs through django-q (synchronous in tests) ----------------------------------------


@pytest.fixture
def training_settings(settings):
    settings.TRAINING_EXPORT_TFLITE = False  # the export has its own test (test_edge_export.py)
    settings.TRAINING_UNKNOWN_FACES_DIR = None
    settings.TRAINING_TARGET_FAR = 0.05
    # runs about faults and activation compare only what they need; the first test compares all
    settings.TRAINING_APPROACHES = ["nearest_neighbour"]
    return settings


@pytest.fixture
def clean_queue(db):
    """The session's enrollment queued a debounced retrain; start each test from an empty queue."""
    from django_q.models import Schedule

    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()


def train(django_capture_on_commit_callbacks, trigger="api", **kwargs):
    """Queue a run and let django-q (sync) run it, as the worker would after the commit."""
    from training import services
    from training.models import ModelVersion

    with django_capture_on_commit_callbacks(execute=True):
        version, _ = services.request_training(trigger, **kwargs)
    return ModelVersion.objects.get(pk=version.pk)


@pytest.mark.django_db
def test_train_endpoint_runs_a_version_with_metrics_plots_and_comparison(
    staff_api, training_settings, clean_queue, django_capture_on_commit_callbacks
):
    training_settings.TRAINING_APPROACHES = sorted(ALL_APPROACHES)
    from recognition import services as recognition
    from training.models import ModelVersion

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post("/api/v1/models/train/", {}, format="json")
    assert response.status_code == 202, response.content
    version = ModelVersion.objects.get(pk=response.json()["version"]["id"])
    assert version.status == ModelVersion.Status.ACTIVE, version.error
    assert version.progress == 100 and version.trigger == "api" and version.requested_by.username == "staff"
    assert version.people_count == 10 and version.image_count == 16

    m = version.metrics
    assert m["held_out_faces"] == 5 and m["train_faces"] == 11  # one held out of each person with 2-3 photos
    assert len(m["train_only_people"]) == 5
    assert m["top1_accuracy"] == 1.0  # FaceNet names every held-out fixture face
    assert m["far"] <= 0.05 and 0 < version.threshold < 1
    assert m["auc"] > 0.9
    assert {r["name"] for r in version.comparison["table"]} == ALL_APPROACHES
    for row in version.comparison["table"]:
        assert row["error"] == "" and row["top1_accuracy"] is not None and row["train_seconds"] >= 0, row
    assert version.comparison["production"] in {"nearest_neighbour", "softmax_head"} and version.comparison["reason"]
    for plot in (version.confusion_plot, version.roc_plot):
        with plot.open("rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(version.timings) >= {"gathering", "comparing", "exporting"}

    # recognition uses the new threshold on its next request, no restart
    assert recognition.match_threshold() == pytest.approx(version.threshold)
    body = staff_api.get("/api/v1/models/active/").json()
    assert body["number"] == version.number and body["metrics"]["top1_accuracy"] == 1.0
    assert staff_api.get(f"/api/v1/models/{version.pk}/").json()["comparison"]["production"]
    assert staff_api.get("/api/v1/models/").json()["results"][0]["number"] == version.number


@pytest.mark.django_db
def test_plain_users_cannot_read_history_train_activate_or_download(user_api, clean_queue):
    # Model versions and their metrics are for staff or an explicit read role, not any account.
    assert user_api.get("/api/v1/models/").status_code == 403
    assert user_api.get("/api/v1/models/active/").status_code == 403
    assert user_api.post("/api/v1/models/train/", {}, format="json").status_code == 403
    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=1, status=ModelVersion.Status.READY)
    assert user_api.post(f"/api/v1/models/{version.pk}/activate/").status_code == 403
    response = user_api.get(f"/api/v1/models/{version.pk}/labels/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"


@pytest.mark.django_db
def test_active_endpoint_says_so_when_nothing_is_trained_yet(staff_api, clean_queue):
    response = staff_api.get("/api/v1/models/active/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_active_version"


@pytest.mark.django_db
def test_two_train_requests_before_the_worker_starts_give_one_run(staff_api, clean_queue):
    from django_q.models import OrmQ

    from training.models import ModelVersion

    first = staff_api.post("/api/v1/models/train/", {}, format="json")  # on_commit not run: still queued
    second = staff_api.post("/api/v1/models/train/", {"force_activate": True}, format="json")
    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["created"] is False and second.json()["version"]["id"] == first.json()["version"]["id"]
    assert ModelVersion.objects.queued().count() == 1 and ModelVersion.objects.get().force_activate
    assert OrmQ.objects.count() == 0  # nothing was handed to the broker twice


@pytest.mark.django_db
def test_a_train_request_that_loses_the_race_joins_the_winners_run(clean_queue, monkeypatch):
    from training import services
    from training.models import ModelVersion

    first_number = ModelVersion.next_number()
    winner = {}

    def racing_next_number(cls):
        # another web process queues its run between this request's check and its insert
        winner["version"] = ModelVersion.objects.create(number=first_number, status="queued", trigger="admin")
        return first_number + 1

    monkeypatch.setattr(ModelVersion, "next_number", classmethod(racing_next_number))
    version, created = services.request_training(ModelVersion.Trigger.API)
    assert created is False and version.pk == winner["version"].pk
    assert ModelVersion.objects.count() == 1  # the database refused the second queued row


@pytest.mark.django_db
def test_the_database_refuses_a_second_queued_or_running_version(clean_queue):
    from django.db import IntegrityError, transaction

    from training.models import ModelVersion

    for status in (ModelVersion.Status.QUEUED, ModelVersion.Status.TRAINING):
        ModelVersion.objects.create(number=ModelVersion.next_number(), status=status)
        with pytest.raises(IntegrityError), transaction.atomic():
            ModelVersion.objects.create(number=ModelVersion.next_number(), status=status)


@pytest.mark.django_db
def test_a_burst_of_100_enrollment_changes_queues_one_debounced_retrain(clean_queue, django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    from training import services
    from training.models import ModelVersion

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(100):
            services.enrollment_changed()
    assert ModelVersion.objects.count() == 1
    assert Schedule.objects.count() == 1
    schedule = Schedule.objects.get()
    assert schedule.func == "training.tasks.run_training" and schedule.next_run > timezone.now() + timedelta(seconds=30)

    # while that run is training, more changes queue exactly one follow-up run
    ModelVersion.objects.filter(status="queued").update(status="training", heartbeat_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(100):
            services.enrollment_changed()
    assert ModelVersion.objects.running().count() == 1 and ModelVersion.objects.queued().count() == 1
    assert Schedule.objects.count() == 2


@pytest.mark.django_db
def test_accepting_an_enrolled_photo_queues_a_retrain(clean_queue, django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from people import services as people
    from training.models import ModelVersion

    from .conftest import PROBES

    obama = person_named("Barack Obama")
    upload = SimpleUploadedFile("obama1.jpg", (PROBES / "obama1.jpg").read_bytes(), content_type="image/jpeg")
    with django_capture_on_commit_callbacks(execute=True):
        face = people.enroll(obama, upload)
    face.refresh_from_db()
    assert face.status == "accepted"
    version = ModelVersion.objects.queued().get()
    assert version.trigger == ModelVersion.Trigger.ENROLLMENT


@pytest.mark.django_db
def test_a_crashing_run_is_marked_failed_and_leaves_the_active_version(
    training_settings, clean_queue, django_capture_on_commit_callbacks, monkeypatch
):
    from training.engine import comparison
    from training.models import ModelVersion

    first = train(django_capture_on_commit_callbacks)
    assert first.status == ModelVersion.Status.ACTIVE

    def crash(*args, **kwargs):
        raise MemoryError("simulated out-of-memory while fitting")

    monkeypatch.setattr("training.runs.compare", crash)
    crashed = train(django_capture_on_commit_callbacks, force_activate=True)
    assert crashed.status == ModelVersion.Status.FAILED
    assert "simulated out-of-memory" in crashed.error and crashed.finished_at is not None
    assert ModelVersion.objects.active().pk == first.pk

    monkeypatch.setattr("training.runs.compare", comparison.compare)
    again = train(django_capture_on_commit_callbacks)  # the queue is usable afterwards
    assert again.status == ModelVersion.Status.ACTIVE


@pytest.mark.django_db
def test_a_run_whose_worker_was_killed_is_failed_and_the_queue_moves_on(
    training_settings, clean_queue, django_capture_on_commit_callbacks
):
    from training import services
    from training.models import ModelVersion

    # what a SIGKILLed worker leaves behind: a row stuck in "training" that stopped reporting
    stale = timezone.now() - timedelta(seconds=training_settings.TRAINING_STALE_SECONDS + 5)
    dead = ModelVersion.objects.create(number=1, status="training", stage="comparing", progress=40, heartbeat_at=stale)
    version = train(django_capture_on_commit_callbacks)
    dead.refresh_from_db()
    assert dead.status == ModelVersion.Status.FAILED and "stopped reporting progress" in dead.error
    assert version.status == ModelVersion.Status.ACTIVE

    # a worker that died in a task django-q recorded as failed (e.g. timeout) is caught without waiting
    from django_q.models import Task

    Task.objects.create(
        id="t" * 32,
        name="training-run-x",
        func="training.tasks.run_training",
        started=timezone.now(),
        stopped=timezone.now(),
        success=False,
        result="Timeout",
    )
    running = ModelVersion.objects.create(number=9, status="training", heartbeat_at=timezone.now(), task_id="t" * 32)
    assert services.fail_dead_runs() == [running.pk]
    running.refresh_from_db()
    assert running.status == "failed" and "Timeout" in running.error


@pytest.mark.django_db
def test_a_run_whose_worker_process_was_sigkilled_is_failed_at_once(clean_queue):
    import os
    import signal
    import socket
    import subprocess

    from training import services
    from training.models import ModelVersion

    worker = subprocess.Popen(["sleep", "30"])  # a real process standing in for the django-q worker
    version = ModelVersion.objects.create(
        number=1, status="training", stage="comparing", heartbeat_at=timezone.now(), worker=f"{socket.gethostname()}:{worker.pid}"
    )
    assert services.fail_dead_runs() == []  # alive and reporting: left alone
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    assert services.fail_dead_runs() == [version.pk]  # no need to wait TRAINING_STALE_SECONDS
    version.refresh_from_db()
    assert version.status == "failed" and "is gone" in version.error
    assert services.request_training(ModelVersion.Trigger.API)[1] is True  # the queue moves on


@pytest.mark.django_db
def test_deleting_a_person_during_a_run_does_not_break_it(
    training_settings, clean_queue, django_capture_on_commit_callbacks, monkeypatch
):
    import json

    from privacy.services import erase_person
    from training.models import ModelVersion
    from training.runs import TrainingRun

    original = TrainingRun.unknown_faces
    erased = {}

    def erase_then_continue(self, names):
        person = person_named("Rose Leslie")
        erased["id"] = person.pk
        erase_person(person)  # after the run took its snapshot
        return original(self, names)

    monkeypatch.setattr(TrainingRun, "unknown_faces", erase_then_continue)
    version = train(django_capture_on_commit_callbacks)
    assert version.status == ModelVersion.Status.ACTIVE, version.error
    with version.labels.open("rb") as fh:
        labels = json.load(fh)
    assert erased["id"] not in {p["person_id"] for p in labels["people"]}  # erased people are not exported
    assert len(labels["people"]) == 9 and len(labels["gallery"]["labels"]) == len(labels["gallery"]["embeddings"]) == 14


@pytest.mark.django_db
def test_a_worse_version_is_kept_ready_unless_staff_force_it(training_settings, clean_queue, django_capture_on_commit_callbacks):
    from training.models import ModelVersion

    strict = train(django_capture_on_commit_callbacks)
    assert strict.status == "active"
    training_settings.TRAINING_TARGET_FAR = 0.6  # a threshold that lets in most impostors: worse
    lax = train(django_capture_on_commit_callbacks)
    assert lax.status == ModelVersion.Status.READY and lax.activation_note.startswith("Not activated")
    assert ModelVersion.objects.active().pk == strict.pk
    forced = train(django_capture_on_commit_callbacks, force_activate=True)
    assert forced.status == ModelVersion.Status.ACTIVE and "forced" in forced.activation_note


@pytest.mark.django_db
def test_rollback_to_an_earlier_version_is_used_by_recognition_at_once(
    staff_api, training_settings, clean_queue, django_capture_on_commit_callbacks
):
    from recognition import services as recognition

    from .conftest import PROBES, read

    training_settings.TRAINING_TARGET_FAR = 0.6  # two versions with clearly different thresholds
    # without an impostor tail the served threshold is the version's own (with one, the per-search
    # threshold for this gallery's size is served, never below it: tests/test_open_set.py)
    training_settings.OPEN_SET_LFW_TAIL = ""
    first = train(django_capture_on_commit_callbacks)
    training_settings.TRAINING_TARGET_FAR = 0.0
    second = train(django_capture_on_commit_callbacks, force_activate=True)
    assert second.status == "active" and second.threshold != pytest.approx(first.threshold)
    assert recognition.match_threshold() == pytest.approx(second.threshold)

    response = staff_api.post(f"/api/v1/models/{first.pk}/activate/")
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert recognition.match_threshold() == pytest.approx(first.threshold)
    answer = staff_api.post("/api/v1/recognize/", {"image": _upload(read(PROBES / "obama1.jpg"))}, format="multipart").json()
    assert answer["threshold"] == pytest.approx(first.threshold, abs=1e-4)


def _upload(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("probe.jpg", data, content_type="image/jpeg")


@pytest.mark.django_db
def test_a_failed_or_running_version_cannot_be_activated(staff_api, clean_queue):
    from training.models import ModelVersion

    failed = ModelVersion.objects.create(number=1, status="failed", error="boom")
    response = staff_api.post(f"/api/v1/models/{failed.pk}/activate/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_finished"
    assert staff_api.post("/api/v1/models/999999/activate/").status_code == 404


@pytest.mark.django_db
def test_admin_shows_retrain_button_progress_metrics_plots_and_comparison(
    client, staff_user, training_settings, clean_queue, django_capture_on_commit_callbacks
):
    from training.models import ModelVersion

    client.force_login(staff_user)
    page = client.get("/admin/training/modelversion/").content.decode()
    assert "Retrain now" in page
    assert "Open set now" in page and "expected false accepts per search" in page  # with no version active too

    response = client.post("/admin/training/modelversion/retrain/")  # on_commit not run: stays queued
    assert response.status_code == 302
    queued = ModelVersion.objects.queued().get()
    assert queued.trigger == "admin" and queued.requested_by == staff_user
    page = client.get("/admin/training/modelversion/").content.decode()
    assert "<progress" in page and 'http-equiv="refresh"' in page  # the list follows a run as it goes

    queued.delete()
    training_settings.TRAINING_APPROACHES = ["softmax_head", "lbph"]
    version = train(django_capture_on_commit_callbacks, trigger="admin")
    page = client.get(f"/admin/training/modelversion/{version.pk}/change/").content.decode()
    assert "Top-1 accuracy (held-out)" in page and "Unknown rejection" in page
    assert "Open set per search" in page and "1,000,000" in page and "the gallery now" in page
    for approach in ("nearest_neighbour", "softmax_head", "lbph"):
        assert f"<td>{approach}</td>" in page
    assert f"/api/v1/models/{version.pk}/plots/confusion/" in page and f"/api/v1/models/{version.pk}/plots/roc/" in page
    assert client.get(f"/api/v1/models/{version.pk}/plots/roc/")["Content-Type"] == "image/png"
    assert version.comparison["reason"] in page


def _recognize(api, probe: str) -> dict:
    from .conftest import PROBES, read

    response = api.post("/api/v1/recognize/", {"image": _upload(read(PROBES / probe))}, format="multipart")
    assert response.status_code == 200, response.content
    return response.json()


def _named(body: dict) -> list[str]:
    return sorted(face["match"]["name"] for face in body["faces"] if face["match"])


@pytest.mark.django_db
def test_a_softmax_head_version_is_what_recognition_serves_and_rollback_switches_back(
    staff_api, training_settings, clean_queue, django_capture_on_commit_callbacks
):
    import hashlib

    from privacy.services import erase_person
    from recognition import services as recognition

    from .conftest import PEOPLE

    training_settings.TRAINING_APPROACHES = ["nearest_neighbour", "softmax_head"]
    training_settings.TRAINING_RECOGNIZER = "nearest_neighbour"
    nearest = train(django_capture_on_commit_callbacks)
    assert nearest.recognizer == "nearest_neighbour" and not nearest.head

    # Paul Rudd is enrolled only after the head is trained: the head has no class for him
    rudd = person_named("Paul Rudd")
    rudd.is_active = False
    rudd.save()
    training_settings.TRAINING_RECOGNIZER = "softmax_head"
    headed = train(django_capture_on_commit_callbacks, force_activate=True)
    assert headed.status == "active" and headed.recognizer == "softmax_head", headed.error
    assert "TRAINING_RECOGNIZER=softmax_head" in headed.comparison["reason"]
    with headed.head.open("rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == headed.head_sha256
    # five held-out faces are too few impostors to calibrate a 5% FAR: the configured floor holds
    assert headed.head_threshold >= training_settings.TRAINING_HEAD_MIN_PROBABILITY
    assert rudd.pk not in recognition.recognizer().head.classes
    rudd.is_active = True
    rudd.save()

    body = _recognize(staff_api, "obama_and_biden.jpg")
    assert body["recogniser"] == "softmax_head" and body["model_version"] == headed.number
    assert body["threshold"] == pytest.approx(headed.head_threshold, abs=1e-4)
    assert _named(body) == ["Barack Obama", "Joe Biden"]
    for face in body["faces"]:
        if face["match"]:
            assert face["scored_by"] == "softmax_head" and headed.head_threshold <= face["match"]["similarity"] <= 1.0
            assert face["candidates"][0] == face["match"] and face["margin"] is not None
    assert _named(_recognize(staff_api, "kit_with_rose.jpg")) == ["Kit Harington", "Rose Leslie"]
    strangers = _recognize(staff_api, "multiface.jpg")["faces"]
    assert len(strangers) == 6 and all(face["match"] is None for face in strangers)

    # a person enrolled after training is found by the gallery, at the cosine threshold
    rudd_photo = next(p for p in sorted((PEOPLE / "paul_rudd").iterdir()))
    response = staff_api.post("/api/v1/recognize/", {"image": _upload(rudd_photo.read_bytes())}, format="multipart")
    face = response.json()["faces"][0]
    assert face["match"]["name"] == "Paul Rudd" and face["scored_by"] == "nearest_neighbour"

    # an erased person is never named again, nor listed, though the head was trained with them
    biden = person_named("Joe Biden")
    erase_person(biden)
    body = _recognize(staff_api, "obama_and_biden.jpg")
    assert _named(body) == ["Barack Obama"]
    assert biden.pk not in {c["person_id"] for face in body["faces"] for c in face["candidates"]}

    # rollback: the nearest-neighbour version is served on the very next request
    assert staff_api.post(f"/api/v1/models/{nearest.pk}/activate/").status_code == 200
    body = _recognize(staff_api, "kit_with_rose.jpg")
    assert body["recogniser"] == "nearest_neighbour" and body["model_version"] == nearest.number
    assert body["threshold"] == pytest.approx(nearest.threshold, abs=1e-4)
    assert {face["scored_by"] for face in body["faces"]} == {"nearest_neighbour"}
    assert _named(body) == ["Kit Harington", "Rose Leslie"]

    # back to the head, then a new run is compared with it as served: a head at its probability threshold
    assert staff_api.post(f"/api/v1/models/{headed.pk}/activate/").status_code == 200
    assert _recognize(staff_api, "obama1.jpg")["recogniser"] == "softmax_head"
    training_settings.TRAINING_RECOGNIZER = "auto"
    latest = train(django_capture_on_commit_callbacks)
    assert latest.status in ("active", "ready") and f"active v{headed.number}'s" in latest.activation_note
    # this run's head row is the same kind of head at the same (floor) threshold: the same score
    row = next(r for r in latest.comparison["table"] if r["name"] == "softmax_head")
    assert row["threshold"] == pytest.approx(headed.head_threshold)
    assert latest.metrics["active_version_open_set_score"] == pytest.approx(row["open_set_score"])


@pytest.mark.django_db
def test_the_live_check_in_is_matched_by_an_active_softmax_head(
    plain_user, training_settings, clean_queue, django_capture_on_commit_callbacks, monkeypatch
):
    from checkin.models import CheckIn

    from .test_live_stream import OBAMA, four_frames_until_checked_in, run

    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)  # keep the test transaction
    training_settings.CHECKIN_STABLE_FRAMES = 4
    training_settings.TRAINING_APPROACHES = ["nearest_neighbour", "softmax_head"]
    training_settings.TRAINING_RECOGNIZER = "softmax_head"
    headed = train(django_capture_on_commit_callbacks)
    assert headed.status == "active" and headed.recognizer == "softmax_head", headed.error

    replies = run(four_frames_until_checked_in, plain_user, OBAMA)
    assert {m["faces"][0]["name"] for m in replies if m["type"] == "faces"} == {"Barack Obama"}
    checkin = CheckIn.objects.get()
    assert checkin.person == person_named("Barack Obama") and checkin.model_version == headed
    # the head's probability against the head's threshold, not a cosine similarity
    assert checkin.threshold == pytest.approx(headed.head_threshold)
    assert headed.head_threshold <= checkin.similarity <= 1.0


@pytest.mark.django_db
def test_a_head_whose_file_fails_its_sha256_is_not_served(
    staff_api, training_settings, clean_queue, django_capture_on_commit_callbacks, caplog
):
    from training.models import ModelVersion

    training_settings.TRAINING_APPROACHES = ["nearest_neighbour", "softmax_head"]
    training_settings.TRAINING_RECOGNIZER = "softmax_head"
    headed = train(django_capture_on_commit_callbacks)
    assert _recognize(staff_api, "obama1.jpg")["recogniser"] == "softmax_head"
    ModelVersion.objects.filter(pk=headed.pk).update(head_sha256="0" * 64)  # the file no longer matches its record
    body = _recognize(staff_api, "obama1.jpg")
    assert body["recogniser"] == "nearest_neighbour" and _named(body) == ["Barack Obama"]
    assert "not the recorded" in caplog.text


# Train a softmax head version in a separate process, inline (django-q sync), and activate it.
HEAD_RUN_ENV = {
    "Q_SYNC": "1",
    "TRAINING_RECOGNIZER": "softmax_head",
    "TRAINING_APPROACHES": "nearest_neighbour,softmax_head",
    "TRAINING_EXPORT_TFLITE": "0",
    "TRAINING_UNKNOWN_FACES_DIR": "",
}
ACTIVE_VERSION = "from training.models import ModelVersion as M; v = M.objects.active(); print(v.pk, v.number, v.recognizer)"
# The site is shared by the session's server tests: the version this test trains goes, and the one
# active before it (another test's, if any) is active again.
RESTORE_VERSION = """
from training.models import ModelVersion as M
M.objects.filter(pk={new}).delete()
before = M.objects.filter(number={before}).first()
if before is not None:
    before.activate()
"""


@pytest.mark.servers
@pytest.mark.django_db
def test_every_web_worker_serves_a_softmax_head_version_trained_elsewhere_on_its_next_request(live_site):
    from .conftest import PROBES, read

    obama = read(PROBES / "obama1.jpg")
    first, second = live_site.start_web(), live_site.start_web()
    before = first.recognize(obama).json()
    assert before["recogniser"] == "nearest_neighbour"

    live_site.manage("train_model", "--force", env=live_site.with_env(**HEAD_RUN_ENV))
    pk, number, recognizer = live_site.manage("shell", "-c", ACTIVE_VERSION).stdout.split()[-3:]
    try:
        assert recognizer == "softmax_head"
        for server in (second, first):  # neither web process was told
            answer = server.recognize(obama).json()
            assert answer["recogniser"] == "softmax_head" and answer["model_version"] == int(number)
            face = answer["faces"][0]
            assert face["match"]["name"] == "Barack Obama" and face["scored_by"] == "softmax_head"
    finally:
        live_site.manage("shell", "-c", RESTORE_VERSION.format(new=pk, before=before["model_version"] or 0))
    for server in (first, second):
        answer = server.recognize(obama).json()
        assert answer["recogniser"] == "nearest_neighbour" and answer["model_version"] == before["model_version"]
        live_site.stop(server.proc)


@pytest.mark.django_db
def test_a_queued_run_whose_task_was_lost_is_requeued_once_and_runs(training_settings, clean_queue):
    """What a long-lived site meets: a queued version older than the stale window (its task lost
    with a flushed broker). It is queued again once; the requeued task, which checks for dead runs
    first (in sync mode inside the same call), must not queue it yet again."""
    from training import services
    from training.models import ModelVersion

    lost = ModelVersion.objects.create(number=ModelVersion.next_number(), stage="queued")
    long_ago = timezone.now() - timedelta(seconds=training_settings.TRAINING_STALE_SECONDS + 3600)
    ModelVersion.objects.filter(pk=lost.pk).update(created_at=long_ago)
    services.fail_dead_runs()  # django-q runs sync in tests: the requeued task trains right here
    lost.refresh_from_db()
    assert lost.status in (ModelVersion.Status.ACTIVE, ModelVersion.Status.READY), lost.error
    assert ModelVersion.objects.count() == 1
