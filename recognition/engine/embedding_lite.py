"""The FaceNet embedder in the TFLite (LiteRT) interpreter: the same network and preprocessing as
``FaceEmbedder``, 2.2x faster per face on this machine's CPU (BENCHMARKS.md, "Kiosk capacity").

The conversion (Keras ``ExportArchive`` -> ``TFLiteConverter``) costs 45-100 s of CPU, so it is done
once per machine and kept on disk, keyed by the weights' sha256, the TensorFlow version and the
exported graph (``cache_key``); the edge export (training.engine.export) reads the same cache, so a
machine converts the no-flip graph once for both. Flip test-time augmentation runs the interpreter
twice (the crop and its mirror image) and combines the two unit embeddings exactly as the Keras
graph does (``combine_flipped``): one converted file serves both settings.

The interpreters are a bounded pool (``tflite_pool.InterpreterPool``, ``max_interpreters``, default:
the cores, all made and warmed up at start): a call borrows one for its duration; a thread finding all
in use waits, so memory stays bounded however many threads embed.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from .embedding import combine_flipped, embedding_graph, facenet_name
from .facenet import EMBEDDING_DIM, INPUT_SIZE, WEIGHTS_SHA256, default_weights_path, load_facenet, sha256_of
from .tflite_pool import InterpreterPool, converted_once

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

    def embed(crops):  # the same graph as FaceEmbedder's
        return embedding_graph(model, crops, flip)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", embed, input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    with tempfile.TemporaryDirectory() as saved_model:
        archive.write_out(saved_model, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def cached_path(weights_sha256: str, cache_dir: Path, flip: bool) -> Path:
    return Path(cache_dir) / f"facenet-{cache_key(weights_sha256, flip)}.tflite"


def cached_embedder_tflite(model, weights_sha256: str, cache_dir: Path, flip: bool = True) -> Path:
    """The converted embedder, converted once per (weights, TF version, graph) and kept in ``cache_dir``.
    ``model`` is the Keras model, or a callable returning it (only called when a conversion is due)."""

    def convert() -> bytes:
        return convert_embedder(model() if callable(model) and not hasattr(model, "layers") else model, flip=flip)

    return converted_once(cached_path(weights_sha256, cache_dir, flip), convert, "the FaceNet embedder")


class LiteFaceEmbedder:
    """``FaceEmbedder``'s interface (``embed``, ``name``, ``flip``, ``model``) on the TFLite interpreter.

    Safe to call from several threads: at most ``max_interpreters`` interpreters (default: the
    cores), each used by one call at a time; ``threads`` is each interpreter's own CPU threads
    (default: the cores). Both as ``tflite_pool.InterpreterPool``."""

    dim = EMBEDDING_DIM
    input_size = INPUT_SIZE
    runtime = "tflite"

    def __init__(
        self,
        cache_dir: Path,
        weights_path: Path | None = None,
        flip: bool = False,
        threads: int | None = None,
        max_interpreters: int | None = None,
    ):
        """``cache_dir``: where the converted model is kept (converted there on first use)."""
        path = Path(weights_path) if weights_path else default_weights_path()
        self.weights_path = path
        # The default weights' digest is known; another file is hashed once (~0.3 s for 90 MB).
        self.weights_sha256 = WEIGHTS_SHA256 if not weights_path else sha256_of(path)
        self.flip = flip
        self.name = facenet_name(flip)  # the same embeddings as FaceEmbedder's, so the same name
        self._model = None
        self._model_lock = threading.Lock()
        self.model_path = cached_embedder_tflite(lambda: self.model, self.weights_sha256, Path(cache_dir), flip=False)
        self.pool = InterpreterPool(self.model_path, size=max_interpreters, threads=threads)
        self.threads = self.pool.threads

    @property
    def model(self):
        """The Keras model, loaded only when asked for (a conversion, or the edge export's cache check)."""
        with self._model_lock:
            if self._model is None:
                self._model = load_facenet(self.weights_path)
            return self._model

    def embed(self, crops: np.ndarray, flip: bool | None = None) -> np.ndarray:
        """(N, 160, 160, 3) uint8 RGB -> (N, 128) float32, L2-normalised (as ``FaceEmbedder.embed``)."""
        flip = self.flip if flip is None else flip
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) crops, got {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        x = crops.astype(np.float32)
        with self.pool.borrowed() as interpreter:
            embeddings = interpreter.run(x)
            if flip:
                embeddings = combine_flipped(embeddings, interpreter.run(np.ascontiguousarray(x[:, :, ::-1])))
        return embeddings.astype(np.float32)
