"""Exporting the embedder for edge clients as TFLite.

The exported graph is the whole server-side embedder, not just the network: raw RGB crops
(N, 160, 160, 3) float32 in 0..255 -> prewhiten -> FaceNet, plus the mirrored crop (flip
test-time augmentation) -> L2-normalise each, sum -> L2-normalise -> (N, 128) float32. An edge client therefore gets
the server's embeddings from the same aligned crops without re-implementing any preprocessing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

# The conversion and its per-machine cache live with the served TFLite embedder (the server runs
# the same converted file, recognition.engine.embedding_lite); re-exported here for the edge export.
from recognition.engine.embedding_lite import (  # noqa: E402,F401
    EXPORT_FORMAT,
    cache_key,
    cached_embedder_tflite,
    convert_embedder,
)


class TFLiteEmbedder:
    """Embeddings from an exported .tflite file: what an edge client runs."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None):
        import tensorflow as tf

        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = None

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, 160, 160, 3) uint8 or float RGB -> (N, 128) float32, L2-normalised."""
        crops = np.asarray(crops, np.float32)
        if len(crops) == 0:
            return np.zeros((0, 128), np.float32)
        if self._batch != len(crops):
            self.interpreter.resize_tensor_input(self._input, list(crops.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(crops)
        self.interpreter.set_tensor(self._input, crops)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output).copy()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
