"""Exporting the embedder for edge clients as TFLite.

The exported graph is the whole server-side embedder, not just the network: raw RGB crops
(N, 160, 160, 3) float32 in 0..255 -> prewhiten -> FaceNet, plus the mirrored crop (flip
test-time augmentation) -> L2-normalise each, sum -> L2-normalise -> (N, 128) float32. An edge client therefore gets
the server's embeddings from the same aligned crops without re-implementing any preprocessing.

A site serving the fused embedder (FaceNet + dlib's descriptor, ``recognition.engine.fused``) exports
dlib's network as a second .tflite (the file its own "tflite" runtime runs), and its label map says
how the device rebuilds the server's 256-d templates (``fused_template``): the cosine weight, the
chip alignment and both files' sha256. ``TFLiteFusedEmbedder`` is that device side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from recognition.engine import dlib_descriptor, dlib_tf

# The conversion and its per-machine cache live with the served TFLite embedder (the server runs
# the same converted file, recognition.engine.embedding_lite); re-exported here for the edge export.
from recognition.engine.embedding_lite import (  # noqa: E402,F401
    EXPORT_FORMAT,
    cache_key,
    cached_embedder_tflite,
    convert_embedder,
)
from recognition.engine.facenet import EMBEDDING_DIM
from recognition.engine.fusion import fuse_templates
from recognition.engine.tflite_pool import InterpreterPool

FUSED_KIND = "fused"


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


def cached_dlib_tflite(cache_dir: Path | str) -> Path:
    """dlib's face network as TFLite, converted once per machine into ``cache_dir``: the same file
    the server's "tflite" dlib runtime runs (``DlibDescriptor(runtime="tflite")``)."""
    network = dlib_descriptor.checked_model_path(dlib_descriptor.NETWORK_FILE)
    return dlib_tf.cached_tflite(network, Path(cache_dir), dlib_descriptor.MODEL_FILES[dlib_descriptor.NETWORK_FILE])


def fused_template(cosine_weight: float, facenet_sha256: str, dlib_sha256: str) -> dict:
    """The label map's ``"template"`` on a fused site: what a device needs to make the server's
    templates, ``[sqrt(v) facenet, sqrt(1 - v) dlib]`` (``fusion.fuse_templates``)."""
    return {
        "kind": FUSED_KIND,
        "dim": EMBEDDING_DIM + dlib_descriptor.DESCRIPTOR_DIM,
        "cosine_weight": float(cosine_weight),
        "facenet": {"dim": EMBEDDING_DIM, "tflite_sha256": facenet_sha256},
        "dlib": {
            "dim": dlib_descriptor.DESCRIPTOR_DIM,
            "tflite_sha256": dlib_sha256,
            "pixels": "RGB uint8 chip, raw descriptors out (L2-normalise them)",
            "chip": dlib_descriptor.chip_alignment(),
        },
    }


class TFLiteFusedEmbedder:
    """The fused embedder from an edge pair: the FaceNet .tflite on the aligned crops, dlib's .tflite
    on chips cut from MTCNN's landmarks as the server cuts them (``dlib_descriptor.landmark_chips``
    with the label map's parameters), fused with the label map's cosine weight -> the server's
    (N, 256) templates. One interpreter per model (an edge client embeds one frame at a time)."""

    def __init__(self, facenet_model: bytes | str | Path, dlib_model: str | Path, template: dict, threads: int | None = None):
        chip = template["dlib"]["chip"]
        if template.get("kind") != FUSED_KIND or chip.get("method") != "landmarks":
            raise ValueError(f"not a fused template this client can make: {template.get('kind')!r}, chips {chip.get('method')!r}")
        self.facenet = TFLiteEmbedder(facenet_model, threads=threads)
        self.dlib = dlib_tf.DlibResNetLite(Path(dlib_model), threads=threads, max_interpreters=1)
        self.cosine_weight = float(template["cosine_weight"])
        self.landmarks_in_chip = np.asarray(chip["landmarks_in_chip"], np.float32)
        self.chip_size = int(chip["size"])
        self.dim = int(template["dim"])

    def embed(self, rgb: np.ndarray, faces: list, crops: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB, its MTCNN detections and their (N, 160, 160, 3) aligned crops ->
        (N, dim) float32, L2-normalised."""
        if len(faces) == 0:
            return np.zeros((0, self.dim), np.float32)
        chips = dlib_descriptor.landmark_chips(rgb, faces, self.landmarks_in_chip, self.chip_size)
        return fuse_templates(self.facenet.embed(crops), dlib_descriptor.unit_descriptors(self.dlib, chips), self.cosine_weight)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
