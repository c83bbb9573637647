"""dlib's ResNet face descriptor network, read from its own file and run in TensorFlow / TFLite.

dlib-bin is built without BLAS and runs its network on one thread: 2.4-2.9x FaceNet's time per face
(BENCHMARKS.md, "Per-face cost"). The network is small (a 29-layer ResNet at 150x150, 128-d out;
``dnn_face_recognition_ex.cpp`` in dlib's examples defines it), so it is rebuilt here from the same
weights file and run where FaceNet runs.

**The file.** ``dlib_face_recognition_resnet_model_v1.dat`` is dlib's serialisation of the whole
network object (dlib/serialize.h, dlib/dnn/core.h, layers.h, input.h, loss.h): integers as a control
byte (bit 7 the sign, bits 0-3 the byte count) and that many little-endian bytes; floating-point
values as two such integers, mantissa and exponent (value = mantissa * 2**exponent); strings as a
length and bytes; bools as ASCII '0' / '1'; tensors as version 2, four sizes (n, k, rows, cols) and
raw little-endian float32. The outermost object comes first and each wrapper (``add_layer``, tag,
skip) writes its version, then its subnetwork, then its own layer, so the layers' own records
follow the versions in forward order (input first). Only numpy and byte slicing read it: no pickle,
nothing executed; anything unexpected (a truncated file, an unknown record, trailing bytes, a
network that is not this one) is a ``DlibFileError``.

**The network.** conv 7x7/2 (32) -> affine -> relu -> max pool 3x3/2 -> 14 residual blocks (3 of
32 filters, 4 of 64, 3 of 128, 3 of 256, 1 of 256; the first of each width after the first
downsamples: its first conv has stride 2 and its shortcut is a 2x2/2 average pool) -> global
average pool -> 128x256 matrix (no bias). dlib's conventions, kept exactly:

- input: ``(pixel - channel mean) / 256`` per RGB channel (means stored in the file);
- a conv with stride 2 has no padding (output ``1 + (n - k) // 2``), with stride 1 pads k // 2,
  as dlib's defaults do (the file records each layer's padding, which is used);
- ``affine`` is frozen batch-norm: per-channel ``gamma * x + beta``, folded here into the conv
  before it (``gamma * (W x + b) + beta = (gamma W) x + (gamma b + beta)``);
- ``add_prev`` adds tensors of different shapes by zero-padding the smaller one at the end of each
  axis (a downsampling block's shortcut has half the channels; at 8 -> 4 pixels the conv gives 3x3
  against the pool's 4x4, at 4 -> 2 it gives 1x1 against 2x2).

The descriptor is the raw 128-d output, as ``dlib.face_recognition_model_v1`` returns it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .facenet import WeightsError
from .tflite_pool import InterpreterPool, converted_once

CHIP_SIZE = 150
DESCRIPTOR_DIM = 128
# Bump when the exported graph changes, so that cached conversions are not reused.
EXPORT_FORMAT = 1


class DlibFileError(WeightsError):
    """The file is not dlib's face recognition network as written by dlib (truncated, altered, other)."""


# ---- the file ------------------------------------------------------------------------------------


class _Reader:
    """dlib's serialisation primitives over bytes (dlib/serialize.h)."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DlibFileError(f"the file ends inside {what} (byte {self.pos} of {len(self.data)}): truncated?")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self, what: str = "an integer") -> int:
        control = self._take(1, what)[0]
        if control & 0x70:
            raise DlibFileError(f"byte {self.pos - 1} is not an integer's control byte (0x{control:02x}) in {what}")
        size = control & 0x0F
        if size > 8:
            raise DlibFileError(f"an integer of {size} bytes at byte {self.pos - 1} in {what}")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def float(self, what: str = "a number") -> float:
        """float_details: mantissa then exponent, both dlib integers; value = mantissa * 2**exponent."""
        mantissa, exponent = self.int(what), self.int(what)
        if exponent >= 32000:  # dlib's is_inf / is_ninf / is_nan
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(np.ldexp(float(mantissa), exponent))

    def string(self, what: str = "a name") -> str:
        size = self.int(what)
        if size > 1000:
            raise DlibFileError(f"a {size}-byte string at byte {self.pos} in {what}: not a dlib network file?")
        return bytes(self._take(size, what)).decode("latin-1")

    def bool(self, what: str = "a flag") -> bool:
        byte = self._take(1, what)[0]
        if byte not in (0x30, 0x31):
            raise DlibFileError(f"byte {self.pos - 1} should be '0' or '1' in {what}, is 0x{byte:02x}")
        return byte == 0x31

    def tensor(self, what: str) -> np.ndarray:
        """dlib's resizable_tensor (version 2: raw little-endian float32) -> (n, k, nr, nc) float32."""
        version = self.int(what)
        if version != 2:
            raise DlibFileError(f"{what}: tensor format {version}, only dlib's format 2 is read")
        shape = tuple(self.int(what) for _ in range(4))
        if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) > len(self.data):
            raise DlibFileError(f"{what}: impossible tensor shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32).reshape(shape)

    def alias_shape(self, what: str) -> tuple[int, int, int, int]:
        version = self.int(what)
        if version != 1:
            raise DlibFileError(f"{what}: alias tensor format {version}, expected 1")
        return tuple(self.int(what) for _ in range(4))

    def expect_string(self, expected: str, what: str) -> None:
        found = self.string(what)
        if found != expected:
            raise DlibFileError(f"{what}: found {found!r}, expected {expected!r}")


@dataclass
class Layer:
    """One computational layer in forward order: ``kind`` is dlib's record name without its version
    suffix (``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``)."""

    kind: str
    config: dict = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self.weights.items()}
        return f"Layer({self.kind}, {self.config}, {shapes})"


@dataclass
class DlibNetwork:
    """What the file holds: the input's channel means, the layers in forward order, the loss's settings."""

    channel_means: tuple[float, float, float]  # R, G, B, subtracted before dividing by 256
    input_size: tuple[int, int]
    layers: list[Layer]
    loss: dict
    sha256: str


def _layer(reader: _Reader, index: int) -> Layer:
    where = f"layer {index}"
    name = reader.string(f"{where}'s name")
    if name == "con_4" or name == "con_5":
        params = reader.tensor(f"{where} (con) parameters").ravel()
        config = {"filters": reader.int(where), "rows": reader.int(where), "cols": reader.int(where)}
        config["stride"] = (reader.int(where), reader.int(where))
        config["padding"] = (reader.int(where), reader.int(where))
        filters, biases = reader.alias_shape(where), reader.alias_shape(where)
        for _ in range(4):  # learning-rate and weight-decay multipliers (training only)
            reader.float(where)
        use_bias = reader.bool(where) if name == "con_5" else True
        n_filters = int(np.prod(filters))
        n_biases = int(np.prod(biases)) if use_bias else 0
        if filters[0] != config["filters"] or filters[2:] != (config["rows"], config["cols"]):
            raise DlibFileError(f"{where}: filter shape {filters} does not match {config}")
        if params.size != n_filters + n_biases or (use_bias and n_biases != config["filters"]):
            raise DlibFileError(f"{where}: {params.size} parameters for filters {filters} and biases {biases}")
        weights = {"filters": params[:n_filters].reshape(filters)}
        weights["biases"] = params[n_filters:] if use_bias else np.zeros(config["filters"], np.float32)
        return Layer("con", config, weights)
    if name == "affine_":
        params = reader.tensor(f"{where} (affine) parameters").ravel()
        gamma, beta = reader.alias_shape(where), reader.alias_shape(where)
        mode = reader.int(where)
        n = int(np.prod(gamma))
        if int(np.prod(beta)) != n or params.size != 2 * n:
            raise DlibFileError(f"{where}: affine of {params.size} parameters for gamma {gamma}, beta {beta}")
        return Layer("affine", {"mode": mode}, {"gamma": params[:n], "beta": params[n:]})
    if name == "relu_":
        return Layer("relu")
    if name == "add_prev_":
        return Layer("add_prev")
    if name in ("max_pool_2", "avg_pool_2"):
        config = {"rows": reader.int(where), "cols": reader.int(where)}
        config["stride"] = (reader.int(where), reader.int(where))
        config["padding"] = (reader.int(where), reader.int(where))
        return Layer(name[:-2], config)
    if name == "fc_2":
        outputs, inputs = reader.int(where), reader.int(where)
        params = reader.tensor(f"{where} (fc) parameters").ravel()
        weights, biases = reader.alias_shape(where), reader.alias_shape(where)
        bias_mode = reader.int(where)  # dlib's FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        for _ in range(4):
            reader.float(where)
        if weights[:2] != (inputs, outputs) or params.size != inputs * outputs + (outputs if bias_mode == 0 else 0):
            raise DlibFileError(f"{where}: fc of {params.size} parameters for weights {weights} ({inputs} -> {outputs})")
        w = params[: inputs * outputs].reshape(inputs, outputs)  # y = x W, as dlib's gemm
        b = params[inputs * outputs :] if bias_mode == 0 else np.zeros(outputs, np.float32)
        return Layer("fc", {"inputs": inputs, "outputs": outputs}, {"weights": w, "biases": b})
    raise DlibFileError(f"{where}: a {name!r} layer, which dlib's face recognition network does not have")


def read_dlib_network(source: Path | str | bytes, expected_sha256: str | None = None) -> DlibNetwork:
    """dlib's serialised face recognition network (``anet_type`` of ``dnn_face_recognition_ex``) ->
    ``DlibNetwork``. ``source`` is a path or the file's bytes; with ``expected_sha256`` a file whose
    digest differs is refused before it is parsed. Raises ``DlibFileError`` on anything unexpected."""
    data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise DlibFileError(f"the dlib network file has sha256 {digest}, expected {expected_sha256}")
    reader = _Reader(bytes(data))
    if reader.int("the loss layer's version") != 1:
        raise DlibFileError("not a dlib network with a loss layer (version byte)")
    loss_name = reader.string("the loss layer's name")
    if loss_name != "loss_metric_2":
        raise DlibFileError(f"the loss layer is {loss_name!r}, not dlib's metric loss (loss_metric_2)")
    loss = {"margin": reader.float("the loss"), "distance_threshold": reader.float("the loss")}

    # The wrappers from the top: add_layer (version 2), tag and skip layers (version 1, no data of
    # their own), down to the add_layer that holds the input layer (version 3).
    layer_count, wrappers = 0, 0
    while True:
        version = reader.int("the layers' versions")
        if version == 2:
            layer_count += 1
        elif version == 1:
            wrappers += 1
        elif version == 3:
            break
        else:
            raise DlibFileError(f"a layer of version {version} at byte {reader.pos}: not a network dlib 19.x wrote")
        if layer_count + wrappers > 10_000:
            raise DlibFileError("more than 10,000 nested layers: not a dlib network file")

    reader.expect_string("input_rgb_image_sized", "the input layer")
    means = (reader.float("the input"), reader.float("the input"), reader.float("the input"))
    size = (reader.int("the input"), reader.int("the input"))
    layers = []
    for index in range(layer_count + 1):
        layers.append(_layer(reader, index))
        for _ in range(3):  # setup called, gradient stale, output getters disabled
            reader.bool(f"layer {index}'s state")
        for what in ("x_grad", "cached_output", "params_grad or grad_final"):
            reader.tensor(f"layer {index}'s {what}")  # training state, not used
        if index == 0:
            reader.int("the sample expansion factor")
    if reader.pos != len(reader.data):
        raise DlibFileError(f"{len(reader.data) - reader.pos} bytes after the network's last layer")
    network = DlibNetwork(means, size, layers, loss, digest)
    plan_network(network)  # refuses a network of another shape
    return network


# ---- the network ---------------------------------------------------------------------------------


@dataclass
class Conv:
    """A conv with its affine folded in: HWIO filters, bias, stride, dlib's padding."""

    name: str
    kernel: np.ndarray  # (rows, cols, in, out) float32
    bias: np.ndarray  # (out,) float32
    stride: int
    padding: int


@dataclass
class Block:
    """relu(conv2(relu(conv1(x))) + shortcut(x)); shortcut: x, or a 2x2/2 average pool when downsampling."""

    conv1: Conv
    conv2: Conv
    downsample: bool


@dataclass
class Plan:
    stem: Conv
    stem_pool: tuple[int, int]  # max pool (size, stride), no padding
    blocks: list[Block]
    fc: np.ndarray  # (256, 128)


def _fold(name: str, con: Layer, affine: Layer) -> Conv:
    if con.kind != "con" or affine.kind != "affine":
        raise DlibFileError(f"{name}: expected a conv and its affine, found {con.kind} and {affine.kind}")
    c = con.config
    if c["stride"][0] != c["stride"][1] or c["padding"][0] != c["padding"][1] or c["rows"] != c["cols"]:
        raise DlibFileError(f"{name}: a non-square conv {c}")
    gamma, beta = affine.weights["gamma"], affine.weights["beta"]
    if gamma.size != c["filters"]:
        raise DlibFileError(f"{name}: affine of {gamma.size} channels after a conv of {c['filters']}")
    kernel = con.weights["filters"].transpose(2, 3, 1, 0) * gamma  # (n, k, r, c) -> (r, c, k, n), scaled per output
    bias = con.weights["biases"] * gamma + beta
    return Conv(name, kernel.astype(np.float32), bias.astype(np.float32), c["stride"][0], c["padding"][0])


def plan_network(network: DlibNetwork) -> Plan:
    """The layers in forward order, checked against the face recognition network's shape."""
    layers, i = network.layers, 0

    def take(*kinds: str) -> list[Layer]:
        nonlocal i
        found = layers[i : i + len(kinds)]
        if [layer.kind for layer in found] != list(kinds):
            raise DlibFileError(f"layers {i}..: found {[layer.kind for layer in found]}, expected {list(kinds)}")
        i += len(kinds)
        return found

    con, affine, _, pool = take("con", "affine", "relu", "max_pool")
    pc = pool.config
    if pc["padding"] != (0, 0) or pc["rows"] != pc["cols"] or pc["stride"][0] != pc["stride"][1]:
        raise DlibFileError(f"the stem's max pool {pc} is not the face network's")
    stem = _fold("stem", con, affine)
    blocks = []
    while i < len(layers) and layers[i].kind == "con":
        n = len(blocks)
        c1, a1, _, c2, a2 = take("con", "affine", "relu", "con", "affine")
        downsample = layers[i].kind == "avg_pool"
        if downsample:
            (avg,) = take("avg_pool")
            if avg.config != {"rows": 2, "cols": 2, "stride": (2, 2), "padding": (0, 0)}:
                raise DlibFileError(f"block {n}: a shortcut pool {avg.config}, expected 2x2/2")
        take("add_prev", "relu")
        blocks.append(Block(_fold(f"block{n}_conv1", c1, a1), _fold(f"block{n}_conv2", c2, a2), downsample))
    avg, fc = take("avg_pool", "fc")
    if avg.config["rows"] != 0 or avg.config["cols"] != 0:
        raise DlibFileError(f"the last pool {avg.config} is not a global average")
    if i != len(layers) or fc.config["outputs"] != DESCRIPTOR_DIM or np.any(fc.weights["biases"]):
        raise DlibFileError("the network does not end in one 128-d fc without bias")
    if network.input_size != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFileError(f"the network's input is {network.input_size}, expected {CHIP_SIZE}x{CHIP_SIZE}")
    return Plan(stem, (pc["rows"], pc["stride"][0]), blocks, fc.weights["weights"].astype(np.float32))


def _pad_to(x, shape):
    """Zero-pad x (N, H, W, C) at the end of each axis to (H, W, C) = shape, as dlib's add does."""
    import tensorflow as tf

    h, w, c = (int(d) for d in x.shape[1:])
    if (h, w, c) == tuple(shape):
        return x
    return tf.pad(x, [[0, 0], [0, shape[0] - h], [0, shape[1] - w], [0, shape[2] - c]])


class DlibResNetTF:
    """The network as a TensorFlow module: ``__call__`` (N, 150, 150, 3) uint8 RGB chips ->
    (N, 128) float32 raw descriptors (dlib's output, not normalised). Weights are named variables
    (``stem/kernel``, ``block3_conv1/bias``, ``fc/weights``), set from the parsed file."""

    def __init__(self, network: DlibNetwork):
        import tensorflow as tf

        self.plan = plan_network(network)
        self.sha256 = network.sha256
        module = tf.Module(name="dlib_resnet_v1")
        self.module = module
        self.variables: dict[str, tf.Variable] = {}

        def variable(name, value):
            self.variables[name] = tf.Variable(value, trainable=False, name=name)
            return self.variables[name]

        convs = [self.plan.stem] + [c for b in self.plan.blocks for c in (b.conv1, b.conv2)]
        self._weights = {c.name: (variable(f"{c.name}/kernel", c.kernel), variable(f"{c.name}/bias", c.bias)) for c in convs}
        self._fc = variable("fc/weights", self.plan.fc)
        self._mean = np.array(network.channel_means, np.float32)  # a constant of the traced graph
        module.variables_by_name = self.variables  # tracked, so a SavedModel holds them
        module.__call__ = tf.function(self._forward, input_signature=[tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.uint8)])

    def _conv(self, x, conv: Conv):
        import tensorflow as tf

        kernel, bias = self._weights[conv.name]
        k = conv.kernel.shape[0]
        if conv.padding == 0:
            padding = "VALID"
        elif conv.stride == 1 and conv.padding == k // 2 and k % 2 == 1:
            padding = "SAME"  # identical to dlib's symmetric k // 2 at stride 1
        else:
            x, padding = tf.pad(x, [[0, 0], [conv.padding] * 2, [conv.padding] * 2, [0, 0]]), "VALID"
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, conv.stride, padding), bias)

    def _forward(self, chips):
        import tensorflow as tf

        x = (tf.cast(chips, tf.float32) - self._mean) / 256.0
        x = tf.nn.relu(self._conv(x, self.plan.stem))
        size, stride = self.plan.stem_pool
        x = tf.nn.max_pool2d(x, size, stride, "VALID")
        for block in self.plan.blocks:
            y = self._conv(tf.nn.relu(self._conv(x, block.conv1)), block.conv2)
            shortcut = tf.nn.avg_pool2d(x, 2, 2, "VALID") if block.downsample else x
            shape = tuple(max(int(a), int(b)) for a, b in zip(y.shape[1:], shortcut.shape[1:]))
            x = tf.nn.relu(_pad_to(y, shape) + _pad_to(shortcut, shape))
        x = tf.reduce_mean(x, axis=[1, 2])
        return tf.matmul(x, self._fc)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        return self.module.__call__(np.asarray(chips, np.uint8)).numpy()


# ---- TFLite ----------------------------------------------------------------------------------------


def cache_key(weights_sha256: str) -> str:
    """Conversions are deterministic for (weights, TensorFlow version, graph): cache on all three."""
    import tensorflow as tf

    text = f"{weights_sha256}|tf{tf.__version__}|format{EXPORT_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def convert_to_tflite(model: DlibResNetTF) -> bytes:
    """The TensorFlow module -> TFLite flatbuffer bytes (float32, no quantisation), through a SavedModel."""
    import tempfile

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved_model:
        tf.saved_model.save(model.module, saved_model, signatures={"serving_default": model.module.__call__})
        return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def cached_tflite(network_path: Path, cache_dir: Path, weights_sha256: str) -> Path:
    """The converted network, converted once per (weights, TF version, graph) into ``cache_dir``."""

    def convert() -> bytes:
        return convert_to_tflite(DlibResNetTF(read_dlib_network(network_path, expected_sha256=weights_sha256)))

    path = Path(cache_dir) / f"dlib-resnet-{cache_key(weights_sha256)}.tflite"
    return converted_once(path, convert, "dlib's face network")


class DlibResNetLite:
    """The converted network in the TFLite interpreter: (N, 150, 150, 3) uint8 RGB chips ->
    (N, 128) float32 raw descriptors. Thread-safe: a bounded pool of ``max_interpreters``
    interpreters (default: the cores, made and warmed up here), all mapping the same file, each
    used by one call at a time; ``threads`` per interpreter (default: the cores). See
    ``tflite_pool.InterpreterPool``."""

    def __init__(self, model_path: Path, threads: int | None = None, max_interpreters: int | None = None):
        self.model_path = Path(model_path)
        self.pool = InterpreterPool(self.model_path, size=max_interpreters, threads=threads)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        return self.pool.run(np.ascontiguousarray(chips, np.uint8))
