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
from recognition.engine.tflite_pool import InterpreterPool


class TFLiteEmbedder:
    """Embeddings from an exported .tflite file: what an edge client runs. Thread-safe: a pool of
    ``max_interpreters`` interpreters (default one: an edge client embeds one frame at a time),
    ``threads`` each (default: the cores); see ``recognition.engine.tflite_pool``."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None, max_interpreters: int = 1):
        self.pool = InterpreterPool(model, size=max_interpreters, threads=threads)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, 160, 160, 3) uint8 or float RGB -> (N, 128) float32, L2-normalised."""
        crops = np.asarray(crops, np.float32)
        if len(crops) == 0:
            return np.zeros((0, 128), np.float32)
        return self.pool.run(crops)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
