"""dlib's face network read from its own file and run in TensorFlow and TFLite: the same descriptors
as dlib-bin on real faces, and a clear refusal of a file that is not the one dlib wrote."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from django.conf import settings

from recognition.engine import dlib_descriptor
from recognition.engine.dlib_descriptor import MODEL_FILES, NETWORK_FILE, DlibDescriptor, checked_model_path, landmark_chips
from recognition.engine.dlib_tf import DlibFileError, plan_network, read_dlib_network
from recognition.engine.facenet import WeightsError
from recognition.engine.images import decode_image
from recognition.engine.pipeline import PipelineConfig, shared_pipeline

from .conftest import PEOPLE, PROBES, read


@pytest.fixture(scope="module")
def network_bytes() -> bytes:
    return checked_model_path(NETWORK_FILE).read_bytes()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """dlib chips of 12 real faces: one photo of each of the ten fixture people and two probes,
    found by the product's detector and aligned as the fused embedder aligns them."""
    pipeline = shared_pipeline()
    photos = [sorted(p.iterdir())[0] for p in sorted(PEOPLE.iterdir())] + [PROBES / "obama1.jpg", PROBES / "johnsnow_test1.jpg"]
    found = []
    for path in photos:
        rgb = decode_image(read(path))
        found.append(landmark_chips(rgb, pipeline.detect(rgb)[:1]))
    return np.concatenate(found)


@pytest.fixture(scope="module")
def on_dlib():
    return DlibDescriptor("landmarks", runtime="dlib")


@pytest.fixture(scope="module")
def on_tflite():
    return DlibDescriptor("landmarks", runtime="tflite", cache_dir=settings.TRAINING_CACHE_DIR)


def raw_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_file_holds_dlibs_29_layer_resnet_with_its_input_means(network_bytes):
    network = read_dlib_network(network_bytes, expected_sha256=MODEL_FILES[NETWORK_FILE])
    plan = plan_network(network)
    assert network.channel_means == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert network.input_size == (150, 150)
    assert sum(layer.kind == "con" for layer in network.layers) == 29
    assert [b.downsample for b in plan.blocks] == [False] * 3 + [True] + [False] * 3 + [True, False, False] * 2 + [True]
    assert [b.conv2.kernel.shape[-1] for b in plan.blocks] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    assert plan.stem.kernel.shape == (7, 7, 3, 32) and plan.stem.stride == 2 and plan.stem.padding == 0
    assert plan.fc.shape == (256, 128)
    assert network.loss["distance_threshold"] == pytest.approx(0.6)


def test_tensorflow_and_tflite_give_dlib_bins_descriptors_on_real_faces(chips, on_dlib, on_tflite):
    tf_runtime = DlibDescriptor("landmarks", runtime="tf")
    expected = on_dlib._network(chips)
    for descriptor in (tf_runtime, on_tflite):
        found = descriptor._network(chips)
        cosines = raw_cosines(expected, found)
        assert cosines.min() >= 0.9999, (descriptor.runtime, cosines.min())
        # the raw vectors too, not only their directions (dlib's distances are on raw vectors)
        np.testing.assert_allclose(np.linalg.norm(found, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-3)
        assert descriptor.name == on_dlib.name  # the same descriptors, so the same stored name
    # and the descriptors still tell people apart: each face nearest itself across runtimes
    unit = on_tflite.describe_chips(chips) @ on_dlib.describe_chips(chips).T
    assert (unit.argmax(axis=1) == np.arange(len(chips))).all()


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")  # the bare one below
def test_tflite_threads_beyond_the_pool_make_no_interpreter_and_get_the_single_thread_answers(chips, on_tflite):
    """Six threads describing at once (a batch of 4, then single chips) on a pool of two interpreters:
    never a third (each thread used to make its own, never freed: memory grew with every thread that
    ever embedded a fused face) and, bit for bit, what one thread gets alone and what a bare
    interpreter on the same file gets (the per-thread runner's path: no pool, no warm-up)."""
    import tensorflow as tf

    from recognition.engine.tflite_pool import PooledInterpreter

    pooled = DlibDescriptor("landmarks", runtime="tflite", cache_dir=settings.TRAINING_CACHE_DIR, max_interpreters=2)
    network = pooled._network
    assert (network.pool.size, network.pool.made) == (2, 2)  # made and warmed up at start
    batch, singles = chips[:4], [chips[i : i + 1] for i in range(4)]
    bare = PooledInterpreter(tf.lite.Interpreter(model_path=str(network.model_path), num_threads=network.pool.threads))
    expected = [bare.run(batch)] + [bare.run(c) for c in singles]
    alone = [network(batch)] + [network(c) for c in singles]
    for got, want in zip(alone, expected):
        np.testing.assert_array_equal(got, want)
    start = threading.Barrier(6)

    def describe():
        start.wait()
        return [[network(batch)] + [network(c) for c in singles] for _ in range(3)]

    with ThreadPoolExecutor(6) as threads:
        outcomes = [f.result() for f in [threads.submit(describe) for _ in range(6)]]
    assert network.pool.made == 2  # six threads at once borrowed the two; none made another
    for rounds in outcomes:
        for results in rounds:
            for got, want in zip(results, expected):
                np.testing.assert_array_equal(got, want)
    # the descriptor itself, as the fused embedder calls it, from the shared pipeline's pool
    np.testing.assert_array_equal(pooled.describe_chips(batch), on_tflite.describe_chips(batch))


def test_the_converted_network_is_reused_from_the_cache(on_tflite):
    path = on_tflite._network.model_path
    before = path.stat().st_mtime_ns
    again = DlibDescriptor("landmarks", runtime="tflite", cache_dir=settings.TRAINING_CACHE_DIR)
    assert again._network.model_path == path and path.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "cut, message",
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-1], "truncated"),
        (lambda data: data + b"\x00", "bytes after the network's last layer"),
        (lambda data: b"", "truncated"),
        (lambda data: b"<html>not a network</html>", "control byte"),
    ],
    ids=["half", "last-byte", "trailing-byte", "empty", "html"],
)
def test_a_damaged_file_is_refused_with_a_clear_error(network_bytes, cut, message):
    with pytest.raises(DlibFileError, match=message):
        read_dlib_network(cut(network_bytes))


def test_a_renamed_layer_is_refused(network_bytes):
    at = network_bytes.index(b"relu_")
    altered = network_bytes[:at] + b"gelu_" + network_bytes[at + 5 :]
    with pytest.raises(DlibFileError, match="'gelu_' layer"):
        read_dlib_network(altered)


def test_a_file_with_another_sha256_is_refused_before_it_is_parsed(network_bytes):
    at = len(network_bytes) // 2  # inside a weight tensor: it would parse, with one wrong weight
    altered = network_bytes[:at] + bytes([network_bytes[at] ^ 0x01]) + network_bytes[at + 1 :]
    assert len(read_dlib_network(altered).layers) == 108
    with pytest.raises(DlibFileError, match="sha256"):
        read_dlib_network(altered, expected_sha256=MODEL_FILES[NETWORK_FILE])


@pytest.mark.parametrize("runtime", ["tf", "tflite"])
def test_altered_weights_are_refused_on_every_runtime(tmp_path, monkeypatch, runtime):
    fake = tmp_path / NETWORK_FILE
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(dlib_descriptor, "model_path", lambda name: fake)
    with pytest.raises(WeightsError, match="sha256"):
        DlibDescriptor("landmarks", runtime=runtime, cache_dir=tmp_path)


def test_an_unknown_runtime_or_a_tflite_runtime_without_a_cache_is_refused():
    with pytest.raises(ValueError, match="unknown dlib runtime"):
        DlibDescriptor("landmarks", runtime="onnx")
    with pytest.raises(ValueError, match="cache_dir"):
        DlibDescriptor("landmarks", runtime="tflite")
    with pytest.raises(ValueError, match="dlib_runtime"):
        PipelineConfig(dlib_runtime="onnx")
