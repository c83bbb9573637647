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

# Bump when the exported graph changes, so that cached conversions are not reused.
EXPORT_FORMAT = 2


def cache_key(weights_sha256: str, flip: bool) -> str:
    """Conversions are deterministic for (weights, TensorFlow version, graph): cache on all three."""
    import tensorflow as tf

    text = f"{weights_sha256}|tf{tf.__version__}|flip{int(flip)}|format{EXPORT_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def convert_embedder(model, flip: bool = True) -> bytes:
    """A Keras FaceNet model -> TFLite flatbuffer bytes (float32, no quantisation: embeddings must
    match the server's). About 45 s of CPU, 1-2 minutes on two busy cores; the file is ~90 MB.

    The graph goes through a Keras ``ExportArchive`` SavedModel: converting the tf.function
    directly leaves Keras 3 variables unfrozen (a 0.6 MB model that outputs NaN)."""
    import tempfile

    import keras
    import tensorflow as tf

    from recognition.engine.embedding import embedding_graph
    from recognition.engine.facenet import INPUT_SIZE

    def embed(crops):  # the same graph as FaceEmbedder's
        return embedding_graph(model, crops, flip)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", embed, input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    with tempfile.TemporaryDirectory() as saved_model:
        archive.write_out(saved_model, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def cached_embedder_tflite(model, weights_sha256: str, cache_dir: Path, flip: bool = True) -> Path:
    """The converted embedder, converted once per (weights, TF version, graph) and kept in ``cache_dir``."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"facenet-{cache_key(weights_sha256, flip)}.tflite"
    if not path.exists():
        data = convert_embedder(model, flip=flip)
        partial = path.with_suffix(f".{np.random.randint(1 << 30)}.part")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


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
