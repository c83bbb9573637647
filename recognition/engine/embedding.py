"""FaceNet embeddings: aligned 160x160 crops -> (N, 128) float32, L2-normalised."""

from __future__ import annotations

import queue
import threading
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


def embedding_graph(model, crops, flip: bool):
    """The embedder's TensorFlow graph (shared by ``FaceEmbedder`` and the TFLite export):
    (N, 160, 160, 3) RGB crops in 0..255 (any dtype) -> prewhiten -> FaceNet -> L2-normalise;
    with ``flip`` the mirrored crop's unit embedding is added and the sum L2-normalised again
    (flip test-time augmentation, which steadies the embedding against pose: +0.10 points on LFW
    at twice the cost, BENCHMARKS.md). Equal to combine_flipped(embed(x), embed(mirrored x))."""
    import tensorflow as tf

    x = prewhiten(crops)
    emb = tf.math.l2_normalize(model(x, training=False), axis=1)
    if flip:
        emb = tf.math.l2_normalize(emb + tf.math.l2_normalize(model(tf.reverse(x, axis=[2]), training=False), axis=1), axis=1)
    return emb


def combine_flipped(embeddings: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Flip test-time augmentation from separate passes: (N, 128) unit embeddings of the crops and
    of their mirror images -> (N, 128) float32, L2-normalised (what ``embed(..., flip=True)`` gives)."""
    total = embeddings + mirrored
    return (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)


def facenet_name(flip: bool) -> str:
    """The name of ``FaceEmbedder(flip=flip)``'s embeddings, known without loading the model."""
    return "facenet-irv1-128" + ("-flip" if flip else "")


class FaceEmbedder:
    """One compiled graph per process; safe to call from several threads.

    With ``batch_across_calls`` small calls (a request's few faces) go through one worker thread
    that runs everything queued meanwhile as one batch, so faces from concurrent requests share a
    forward pass; a lone caller's call runs at once, nothing waits for a batch to fill. It is off by
    default because it did not pay on the 2-core machine this was measured on: there a batch of 32
    faces cost more per face than 32 single passes, and 8 concurrent callers ran 0.86x as fast
    batched (BENCHMARKS.md, "Embedding"). Turn it on where larger batches are cheaper per face.
    """

    dim = EMBEDDING_DIM
    input_size = INPUT_SIZE

    def __init__(
        self, weights_path: Path | None = None, flip: bool = True, batch_size: int = 32, batch_across_calls: bool = False
    ):
        import tensorflow as tf

        self.model = load_facenet(weights_path)
        self.flip = flip
        self.batch_size = batch_size
        self.name = facenet_name(flip)
        model = self.model

        def graph(mirror: bool):
            @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)], reduce_retracing=True)
            def _embed(crops):
                return embedding_graph(model, crops, mirror)

            return _embed

        self._graphs = {False: graph(False), True: graph(True)}
        self._batcher = _CallBatcher(self._embed_now, batch_size) if batch_across_calls else None
        for mirror in (False, True):  # warm-up: trace both graphs once at start-up
            self.embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8), flip=mirror)

    def embed(self, crops: np.ndarray, flip: bool | None = None) -> np.ndarray:
        """(N, 160, 160, 3) uint8 RGB -> (N, 128) float32, L2-normalised.

        ``flip`` (default: the embedder's own setting) adds the mirrored face's embedding. Embeddings
        compared with each other should be made the same way.
        """
        flip = self.flip if flip is None else flip
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) crops, got {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        if self._batcher is not None and len(crops) < self.batch_size and flip == self.flip:
            return self._batcher.run(crops)
        return self._embed_now(crops, flip)

    def _embed_now(self, crops: np.ndarray, flip: bool | None = None) -> np.ndarray:
        graph = self._graphs[self.flip if flip is None else flip]
        parts = [graph(crops[i : i + self.batch_size]).numpy() for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(parts).astype(np.float32)


class _CallBatcher:
    """Runs ``fn`` on the concatenation of everything callers queued while the last run was busy."""

    def __init__(self, fn, max_batch: int):
        self._fn = fn
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="face-embedder-batcher", daemon=True).start()

    def run(self, items: np.ndarray) -> np.ndarray:
        call = {"items": items, "done": threading.Event()}
        self._queue.put(call)
        call["done"].wait()
        if "error" in call:
            raise call["error"]
        return call["result"]

    def _serve(self) -> None:
        while True:
            calls = [self._queue.get()]
            size = len(calls[0]["items"])
            while size < self._max_batch:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                calls.append(call)
                size += len(call["items"])
            try:
                results = self._fn(np.concatenate([c["items"] for c in calls]))
                start = 0
                for call in calls:
                    call["result"] = results[start : start + len(call["items"])]
                    start += len(call["items"])
            except Exception as error:  # handed to every waiting caller, never lost in this thread
                for call in calls:
                    call["error"] = error
            for call in calls:
                call["done"].set()
