"""FaceNet embeddings: aligned 160x160 crops -> (N, 128) float32, L2-normalised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .facenet import EMBEDDING_DIM, INPUT_SIZE, load_facenet


def prewhiten(batch):
    """Per-image standardisation, as FaceNet was trained: (x - mean) / max(std, 1/sqrt(n))."""
    import tensorflow as tf

    x = tf.cast(batch, tf.float32)
    mean, var = tf.nn.moments(x, axes=[1, 2, 3], keepdims=True)
    n = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    std = tf.maximum(tf.sqrt(var), 1.0 / tf.sqrt(n))
    return (x - mean) / std


class FaceEmbedder:
    """One compiled graph per process; safe to call from several threads (TF graphs are)."""

    dim = EMBEDDING_DIM
    input_size = INPUT_SIZE

    def __init__(self, weights_path: Path | None = None, flip: bool = True, batch_size: int = 32):
        import tensorflow as tf

        self.model = load_facenet(weights_path)
        self.flip = flip
        self.batch_size = batch_size
        self.name = "facenet-irv1-128" + ("-flip" if flip else "")
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)], reduce_retracing=True)
        def _embed(crops):
            x = prewhiten(crops)
            emb = model(x, training=False)
            if flip:
                # Flip test-time augmentation: the mirrored face's embedding is added before
                # normalising, which steadies the embedding against pose (measured on LFW).
                emb = emb + model(tf.reverse(x, axis=[2]), training=False)
            return tf.math.l2_normalize(emb, axis=1)

        self._embed = _embed
        self.embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8))  # warm-up: trace once at start-up

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, 160, 160, 3) uint8 RGB -> (N, 128) float32, L2-normalised."""
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) crops, got {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        parts = [self._embed(crops[i : i + self.batch_size]).numpy() for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(parts).astype(np.float32)
