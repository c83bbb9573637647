"""The face pipeline: image -> faces with aligned crops, embeddings and quality."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .alignment import align_face
from .detection import DetectedFace, make_detector
from .embedding import FaceEmbedder
from .quality import QualityRules, sharpness


@dataclass
class AnalysedFace:
    face: DetectedFace
    crop: np.ndarray  # (160, 160, 3) uint8 RGB
    embedding: np.ndarray  # (128,) float32, L2-normalised
    sharpness: float


@dataclass(frozen=True)
class PipelineConfig:
    weights_path: Path | None = None
    detector: str = "mtcnn-graph"  # or "mtcnn": the stock package, several times slower (see BENCHMARKS.md)
    detect_max_side: int = 1024
    min_face_size: int = 20
    min_detection_score: float = 0.9
    align_method: str = "box"
    align_margin: float = 0.05
    flip: bool = False
    quality: QualityRules = field(default_factory=QualityRules)


class FacePipeline:
    """MTCNN detection, alignment and FaceNet embedding. Build once per process; thread-safe."""

    def __init__(self, config: PipelineConfig = PipelineConfig()):
        self.config = config
        self.detector = make_detector(
            config.detector,
            max_side=config.detect_max_side,
            min_face_size=config.min_face_size,
            min_score=config.min_detection_score,
        )
        self.embedder = FaceEmbedder(weights_path=config.weights_path, flip=config.flip)

    @property
    def embedder_name(self) -> str:
        return f"{self.embedder.name}-{self.config.align_method}{self.config.align_margin:g}"

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        return self.detector.detect(rgb)

    def analyse(
        self, rgb: np.ndarray, faces: list[DetectedFace] | None = None, max_faces: int | None = None, flip: bool | None = None
    ) -> list[AnalysedFace]:
        """(H, W, 3) uint8 RGB -> every face (largest first), embedded in one batch.

        ``flip`` overrides the configured flip test-time augmentation (see ``FaceEmbedder.embed``)."""
        faces = self.detect(rgb) if faces is None else faces
        if max_faces is not None:
            faces = faces[:max_faces]
        if not faces:
            return []
        crops = np.stack([align_face(rgb, f, method=self.config.align_method, margin=self.config.align_margin) for f in faces])
        embeddings = self.embedder.embed(crops, flip=flip)
        return [AnalysedFace(f, c, e, sharpness(c)) for f, c, e in zip(faces, crops, embeddings)]


_shared: FacePipeline | None = None
_shared_lock = threading.Lock()


def shared_pipeline(config: PipelineConfig | None = None) -> FacePipeline:
    """The process-wide pipeline, built on first use (models load once per process)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = FacePipeline(config or PipelineConfig())
    return _shared
