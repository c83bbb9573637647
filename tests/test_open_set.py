"""Open set per search: the threshold in force holds OPEN_SET_FAR_PER_SEARCH for the gallery's size
(calibrated on impostor score tails), every answer says so, and the mislabel check uses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.conf import settings

from people.bulk import Embeddings, import_embeddings
from people.models import FaceImage, Person
from recognition import services
from recognition.engine.open_set import ImpostorTail, calibrate, search_far
from training.models import ModelVersion

from .conftest import PEOPLE, PROBES, read
from .test_enrollment import upload_face

pytestmark = pytest.mark.django_db


def lfw_tail() -> ImpostorTail:
    return ImpostorTail.from_dict(json.loads(open(settings.OPEN_SET_LFW_TAIL).read())["tail"])


# ---- the calibration -----------------------------------------------------------------------------


def test_the_committed_lfw_tail_is_for_the_served_embedder_and_holds_scores_only():
    data = json.loads(open(settings.OPEN_SET_LFW_TAIL).read())
    assert data["embedder"] == services.served_embedder()
    assert set(data) == {"embedder", "protocol", "images", "tail"}
    assert set(data["tail"]) == {"n_pairs", "scores", "probabilities", "scale", "source"}
    assert data["tail"]["n_pairs"] > 500_000 and len(data["tail"]["scores"]) < 100


def test_the_threshold_rises_with_the_gallery_size_and_holds_the_target_per_search():
    sizes = [10, 100, 1_000, 10_000, 100_000, 1_000_000]
    calibrated = [services.open_set(None, n) for n in sizes]
    thresholds = [c.calibrated for c in calibrated]
    assert all(a < b for a, b in zip(thresholds, thresholds[1:])), thresholds
    for c in calibrated:
        # never below the per-pair threshold, and a stranger's best score passes it at most 1% of the time
        assert c.threshold >= settings.FACE_MATCH_THRESHOLD
        assert c.expected_far <= settings.OPEN_SET_FAR_PER_SEARCH + 1e-9
    # at a million faces the per-pair threshold lets strangers through in most searches
    tail = lfw_tail()
    assert search_far(tail.pair_far(settings.FACE_MATCH_THRESHOLD), 1_000_000) > 0.5
    assert calibrated[-1].threshold > settings.FACE_MATCH_THRESHOLD + 0.05


def test_the_max_over_n_model_matches_a_simulation():
    rng = np.random.default_rng(0)
    tail = ImpostorTail.from_scores(rng.normal(0.0, 0.12, 2_000_000))
    n, trials = 500, 4000
    t = calibrate([tail], n, 0.05, floor=-1.0).threshold
    best = np.array([rng.normal(0.0, 0.12, n).max() for _ in range(trials)])
    assert 0.035 <= np.mean(best >= t) <= 0.065


def test_a_tail_from_too_few_scores_is_refused():
    with pytest.raises(ValueError, match="too few"):
        ImpostorTail.from_scores(np.zeros(50))


def test_a_missing_or_foreign_lfw_tail_leaves_the_per_pair_threshold(settings, tmp_path):
    committed = lfw_tail()
    settings.OPEN_SET_LFW_TAIL = str(tmp_path / "missing.json")
    assert services.open_set(None, 1_000_000).threshold == settings.FACE_MATCH_THRESHOLD
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"embedder": "another-embedder", "tail": committed.as_dict()}))
    settings.OPEN_SET_LFW_TAIL = str(foreign)
    assert services.open_set(None, 1_000_000).threshold == settings.FACE_MATCH_THRESHOLD
    assert services.open_set(None, 1_000_000).expected_far is None


# ---- the answers ---------------------------------------------------------------------------------


def test_every_recognize_answer_carries_the_threshold_in_force_and_its_expected_false_accepts(user_api):
    reply = user_api.post("/api/v1/recognize/", {"image": _upload(PROBES / "obama1.jpg")}, format="multipart")
    assert reply.status_code == 200, reply.content
    body = reply.json()
    expected = services.open_set(None, body["gallery_size"])
    assert body["threshold"] == round(expected.threshold, 4)
    assert body["target_false_accepts_per_search"] == settings.OPEN_SET_FAR_PER_SEARCH
    assert 0 < body["expected_false_accepts_per_search"] <= settings.OPEN_SET_FAR_PER_SEARCH
    assert body["faces"][0]["match"]["name"] == "Barack Obama"

    # a stricter threshold asked for: a smaller expected rate; a lower one is refused as before
    stricter = user_api.post(
        "/api/v1/recognize/", {"image": _upload(PROBES / "obama1.jpg"), "threshold": 0.7}, format="multipart"
    ).json()
    assert stricter["threshold"] == 0.7
    assert stricter["expected_false_accepts_per_search"] < body["expected_false_accepts_per_search"]
    lower = user_api.post("/api/v1/recognize/", {"image": _upload(PROBES / "obama1.jpg"), "threshold": 0.3}, format="multipart")
    assert lower.status_code == 400 and lower.json()["error"]["code"] == "invalid"


def test_a_stricter_target_raises_the_threshold_in_the_answer(user_api, settings):
    before = user_api.post("/api/v1/recognize/", {"image": _upload(PROBES / "obama1.jpg")}, format="multipart").json()
    settings.OPEN_SET_FAR_PER_SEARCH = 1e-6
    after = user_api.post("/api/v1/recognize/", {"image": _upload(PROBES / "obama1.jpg")}, format="multipart").json()
    assert after["threshold"] > before["threshold"]
    assert after["expected_false_accepts_per_search"] <= 1e-6
    assert after["target_false_accepts_per_search"] == 1e-6


def test_a_training_run_records_the_sites_own_tail_and_serving_uses_it(settings, django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    from training import services as training

    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()

    settings.TRAINING_EXPORT_TFLITE = False
    settings.TRAINING_UNKNOWN_FACES_DIR = None
    settings.TRAINING_APPROACHES = ["nearest_neighbour"]
    settings.OPEN_SET_SITE_MIN_PAIRS = 100  # the fixture gallery is ten people
    with django_capture_on_commit_callbacks(execute=True):
        version, _ = training.request_training(ModelVersion.Trigger.API)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.ACTIVE, version.error
    assert version.open_set["site_pairs"] >= 100
    site = version.open_set["site_tail"]
    assert set(site) == {"n_pairs", "scores", "probabilities", "scale", "source"}  # scores only
    tails = services.impostor_tails(version)
    assert len(tails) == 2
    with_site = services.open_set(version, 10_000)
    per_pair = 1 - (1 - settings.OPEN_SET_FAR_PER_SEARCH) ** (1 / 10_000)
    assert with_site.calibrated == pytest.approx(max(t.threshold_at_pair_far(per_pair) for t in tails))


# ---- the mislabel check --------------------------------------------------------------------------


def strangers_as_seen_from(embedding: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` unit vectors whose similarity to ``embedding`` follows the LFW impostor tail: a
    gallery of strangers as this face meets them (above the median, by the tail; below, spread)."""
    rng = np.random.default_rng(seed)
    tail = lfw_tail()
    q = rng.uniform(0, 1, count)
    upper = q < 0.5
    scores = np.where(upper, 0.0, rng.uniform(-0.3, tail.scores[-1], count))
    scores[upper] = [tail.threshold_at_pair_far(v) for v in q[upper]]
    other = rng.standard_normal((count, len(embedding))).astype(np.float64)
    other -= (other @ embedding)[:, None] * embedding[None]
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    vectors = scores[:, None] * embedding[None] + np.sqrt(1 - scores[:, None] ** 2) * other
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_a_large_gallery_does_not_hold_a_genuine_first_photo_for_review(staff_api, django_capture_on_commit_callbacks, settings):
    settings.TRAINING_RETRAIN_ON_ENROLLMENT = False
    kit = Person.objects.get(name="Kit Harington")
    photos = sorted((PEOPLE / "kit_harington").iterdir())
    FaceImage.objects.filter(person=kit).delete()  # enrolled, with no accepted photo yet
    face, _ = services.main_face(services.read_upload(read(photos[0])))
    count = 50_000
    strangers = strangers_as_seen_from(face.embedding, count)
    names = np.array([f"Stranger {i}" for i in range(count)])
    import_embeddings(Embeddings(names, strangers, services.served_embedder(), np.array([""] * count)), "explicit_consent")
    services.invalidate_gallery()
    best = float((strangers @ face.embedding).max())
    # the old per-pair rule would hold it: some stranger of a large gallery always scores above it
    assert best >= settings.FACE_MATCH_THRESHOLD, best

    response = upload_face(staff_api, kit, read(photos[0]), name=photos[0].name, capture=django_capture_on_commit_callbacks)
    uploaded = FaceImage.objects.get(pk=response.json()["id"])
    assert uploaded.status == FaceImage.Status.ACCEPTED, uploaded.reason
    assert best < services.match_threshold()

    # and a real mislabel in the same large gallery is still held: Biden's photo filed under Kit
    response = upload_face(
        staff_api, kit, read(PEOPLE / "joe_biden/biden2.jpg"), name="biden2.jpg", capture=django_capture_on_commit_callbacks
    )
    held = FaceImage.objects.get(pk=response.json()["id"])
    assert held.status == FaceImage.Status.REVIEW and held.reason_code == "possible_mislabel" and "Joe Biden" in held.reason


def _upload(path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(path.name, read(path))
