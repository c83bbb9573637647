"""The fused embedder: FaceNet and dlib's ResNet descriptor on the same detection, one template.

From one MTCNN detection, FaceNet's 160x160 box crop (``align_face``) and dlib's 150x150 chip (from
MTCNN's own five landmarks, ``DlibDescriptor`` "landmarks" alignment) are embedded and concatenated
as ``fusion.fuse_templates`` does: ``[sqrt(v) f_facenet, sqrt(1 - v) f_dlib]``, a (256,) unit
vector whose inner product with another is ``v cos_facenet + (1 - v) cos_dlib``. So the gallery
index, the open-set calibration and every threshold stay inner products; only their values differ
from FaceNet's (see the calibration file ``fit_fusion`` writes).

v (the cosine weight) comes from the fit on LFW's training folds; it is part of the embedder's name,
since templates made with another v are not comparable.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .detection import DetectedFace
from .dlib_descriptor import DESCRIPTOR_DIM, DlibDescriptor
from .embedding import FaceEmbedder
from .fusion import fuse_templates

FUSED_EMBEDDER = "facenet+dlib"
# FaceNet of the horizontally mirrored crop: a real embedder, as accurate as FaceNet and as cheap,
# whose templates are compared only with its own. It exists to exercise embedder switches (tests,
# the switch benchmark) without dlib's cost; it is not better than FaceNet and no site needs it.
MIRRORED_EMBEDDER = "facenet-mirrored"
EMBEDDERS = ("facenet", FUSED_EMBEDDER, MIRRORED_EMBEDDER)


def fused_name(facenet_name: str, dlib_name: str, cosine_weight: float) -> str:
    """The name stored with each fused template (at most 100 characters, ``FaceImage.embedder``)."""
    return f"{facenet_name}+{dlib_name}-v{cosine_weight:.4f}"


class FusedEmbedder:
    """FaceNet crops + dlib chips of the same faces -> (N, 256) float32 unit templates.

    On dlib-bin (``descriptor.runtime == "dlib"``) the network is not thread-safe, so its calls are
    serialised by a lock; on TensorFlow / TFLite (``descriptor.thread_safe``) concurrent requests
    run it side by side. FaceNet runs in a helper thread meanwhile (TensorFlow and dlib both release
    the GIL in their kernels), so a request pays roughly the slower of the two rather than their
    sum when a core is free."""

    def __init__(self, facenet: FaceEmbedder, descriptor: DlibDescriptor, cosine_weight: float, facenet_name: str):
        if not 0.0 <= cosine_weight <= 1.0:
            raise ValueError(f"cosine weight {cosine_weight} is not in [0, 1]")
        self.facenet = facenet
        self.descriptor = descriptor
        self.cosine_weight = float(cosine_weight)
        self.dim = facenet.dim + DESCRIPTOR_DIM
        self.name = fused_name(facenet_name, descriptor.name, self.cosine_weight)
        self._dlib_lock = contextlib.nullcontext() if getattr(descriptor, "thread_safe", False) else threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fused-facenet")

    def chips(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """(H, W, 3) uint8 RGB + detections -> (N, 150, 150, 3) dlib chips (cheap: one warp each)."""
        return self.descriptor.chips(rgb, faces)

    def embed(self, crops: np.ndarray, chips: np.ndarray, flip: bool | None = None, parallel: bool = True) -> np.ndarray:
        """(N, 160, 160, 3) FaceNet crops + (N, 150, 150, 3) dlib chips of the same faces ->
        (N, 256) float32, L2-normalised. ``flip`` applies to FaceNet's half (dlib's is never flipped)."""
        if len(crops) != len(chips):
            raise ValueError(f"{len(crops)} crops but {len(chips)} chips")
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        if parallel:
            pending = self._pool.submit(self.facenet.embed, crops, flip)
            with self._dlib_lock:
                dlib = self.descriptor.describe_chips(chips)
            facenet = pending.result()
        else:
            facenet = self.facenet.embed(crops, flip=flip)
            with self._dlib_lock:
                dlib = self.descriptor.describe_chips(chips)
        return fuse_templates(facenet, dlib, self.cosine_weight)
