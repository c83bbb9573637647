"""The face pipeline: image -> faces with aligned crops, embeddings and quality."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .alignment import align_face
from .detection import DetectedFace, make_detector
from .embedding import FaceEmbedder, facenet_name
from .facenet import EMBEDDING_DIM, default_weights_path
from .fused import EMBEDDERS, FUSED_EMBEDDER, MIRRORED_EMBEDDER, FusedEmbedder, fused_name
from .quality import sharpness

DLIB_NAME = "dlib-resnet-v1-128-landmarks"  # DlibDescriptor("landmarks").name, known without loading dlib


@dataclass
class AnalysedFace:
    face: DetectedFace
    crop: np.ndarray  # (160, 160, 3) uint8 RGB
    embedding: np.ndarray  # (D,) float32, L2-normalised; D = the pipeline's dim (128 FaceNet, 256 fused)
    sharpness: float  # quality.sharpness: relative to the face's size


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
    # "keras": the TensorFlow graph; "tflite": the same network in the TFLite interpreter (2.2x
    # faster per face, same embeddings: embedding_lite), converted once into ``embed_cache_dir``.
    embed_runtime: str = "keras"
    embed_cache_dir: Path | None = None
    # or "facenet+dlib": FaceNet fused with dlib's descriptor (engine/fused.py); "facenet-mirrored":
    # FaceNet of the mirrored crop (a cheap second embedder for switch tests)
    embedder: str = "facenet"
    fusion_weight: float | None = None  # the fused embedder's cosine weight v on FaceNet (fit_fusion)
    # Where the fused embedder runs dlib's network: "dlib" (dlib-bin), "tf" or "tflite" (the same
    # network and descriptors rebuilt from its file: dlib_tf; "tflite" converted into embed_cache_dir).
    dlib_runtime: str = "dlib"

    def __post_init__(self):
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"unknown embedder {self.embedder!r}; choose one of {EMBEDDERS}")
        if self.embedder == FUSED_EMBEDDER and self.fusion_weight is None:
            raise ValueError("the fused embedder needs its cosine weight (fusion_weight; see `manage.py fit_fusion`)")
        if self.dlib_runtime not in ("dlib", "tf", "tflite"):
            raise ValueError(f"unknown dlib_runtime {self.dlib_runtime!r}: 'dlib', 'tf' or 'tflite'")

    @property
    def facenet_name(self) -> str:
        return f"{facenet_name(self.flip)}-{self.align_method}{self.align_margin:g}"

    @property
    def embedder_name(self) -> str:
        """The name stored with each embedding this pipeline makes (``FacePipeline.embedder_name``),
        known without loading the models."""
        if self.embedder == FUSED_EMBEDDER:
            return fused_name(self.facenet_name, DLIB_NAME, self.fusion_weight)
        if self.embedder == MIRRORED_EMBEDDER:
            return f"{self.facenet_name}-mirrored"
        return self.facenet_name

    @property
    def dim(self) -> int:
        """The length of this pipeline's embeddings (128 FaceNet, 256 fused)."""
        return 2 * EMBEDDING_DIM if self.embedder == FUSED_EMBEDDER else EMBEDDING_DIM


def facenet_config(config: PipelineConfig) -> PipelineConfig:
    """``config`` with FaceNet alone (the fused pipeline's FaceNet half, e.g. for LFW caches)."""
    return replace(config, embedder="facenet", fusion_weight=None)


def make_embedder(config: PipelineConfig):
    """The embedder ``config`` asks for: ``FaceEmbedder`` or, for ``embed_runtime="tflite"``,
    ``LiteFaceEmbedder`` (same interface and embeddings, hence the same ``embedder_name``)."""
    if config.embed_runtime == "tflite":
        from .embedding_lite import LiteFaceEmbedder

        if config.embed_cache_dir is None:
            raise ValueError("the tflite runtime needs embed_cache_dir (where the converted model is kept)")
        return LiteFaceEmbedder(config.embed_cache_dir, weights_path=config.weights_path, flip=config.flip)
    if config.embed_runtime != "keras":
        raise ValueError(f"unknown embed_runtime {config.embed_runtime!r}: 'keras' or 'tflite'")
    return FaceEmbedder(weights_path=config.weights_path, flip=config.flip)


class FacePipeline:
    """MTCNN detection, alignment and FaceNet embedding. Build once per process; thread-safe."""

    def __init__(
        self, config: PipelineConfig = PipelineConfig(), detector=None, embedder: FaceEmbedder | None = None, descriptor=None
    ):
        """``detector``, ``embedder`` and ``descriptor`` (built from ``config`` when omitted) let
        pipelines whose configs differ only in cheap parameters share the loaded weights (see
        ``shared_pipeline``). ``self.embedder`` is always FaceNet; ``self.fused`` is the fused
        embedder when the config asks for it (None otherwise)."""
        self.config = config
        self.detector = detector or make_detector(
            config.detector,
            max_side=config.detect_max_side,
            min_face_size=config.min_face_size,
            min_score=config.min_detection_score,
        )
        self.embedder = embedder or make_embedder(config)
        self.fused: FusedEmbedder | None = None
        self.fused_parallel = True  # FaceNet in a helper thread while dlib runs (bench/fused_cost.py)
        if config.embedder == FUSED_EMBEDDER:
            if descriptor is None:
                from .dlib_descriptor import DlibDescriptor

                descriptor = DlibDescriptor("landmarks", runtime=config.dlib_runtime, cache_dir=config.embed_cache_dir)
            self.fused = FusedEmbedder(self.embedder, descriptor, config.fusion_weight, config.facenet_name)

    @property
    def embedder_name(self) -> str:
        return self.config.embedder_name

    @property
    def dim(self) -> int:
        return self.config.dim

    def embed_faces(
        self, images: list[np.ndarray], faces: list[DetectedFace], flip: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One detected face per image (the same image may repeat) -> (FaceNet crops (N, 160, 160, 3),
        embeddings (N, dim) float32 L2-normalised), all in one batch per network."""
        crops = np.stack(
            [
                align_face(rgb, f, method=self.config.align_method, margin=self.config.align_margin)
                for rgb, f in zip(images, faces)
            ]
        )
        if self.config.embedder == MIRRORED_EMBEDDER:
            return crops, self.embedder.embed(np.ascontiguousarray(crops[:, :, ::-1]), flip=flip)
        if self.fused is None:
            return crops, self.embedder.embed(crops, flip=flip)
        chips = np.concatenate([self.fused.chips(rgb, [f]) for rgb, f in zip(images, faces)])
        return crops, self.fused.embed(crops, chips, flip=flip, parallel=self.fused_parallel)

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
        crops, embeddings = self.embed_faces([rgb] * len(faces), faces, flip=flip)
        return [AnalysedFace(f, c, e, sharpness(rgb, f.box)) for f, c, e in zip(faces, crops, embeddings)]


class _PipelineRegistry:
    """Pipelines by config, like deepface's model cache: each config gets its own pipeline, so a
    changed setting takes effect instead of whichever config asked first winning for the process.

    At most ``size`` pipelines are kept (least recently used dropped). Pipelines share their
    detector and embedder with any other whose config asks for the same ones (weak references:
    the weights are freed once no kept pipeline uses them), so configs that differ only in cheap
    parameters (alignment) never load the models twice.
    """

    def __init__(self, size: int = 3):
        self.size = size
        self._lock = threading.Lock()
        self._pipelines: OrderedDict[PipelineConfig, FacePipeline] = OrderedDict()
        self._detectors: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._embedders: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._descriptors: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def get(self, config: PipelineConfig) -> FacePipeline:
        with self._lock:
            found = self._pipelines.get(config)
            if found is None:
                found = self._build(config)
                self._pipelines[config] = found
                while len(self._pipelines) > self.size:
                    self._pipelines.popitem(last=False)
            self._pipelines.move_to_end(config)
            return found

    def _build(self, config: PipelineConfig) -> FacePipeline:
        detector_key = (config.detector, config.detect_max_side, config.min_face_size, config.min_detection_score)
        weights = Path(config.weights_path) if config.weights_path else default_weights_path()
        embedder_key = (str(weights.resolve()), config.flip, config.embed_runtime)
        detector, embedder = self._detectors.get(detector_key), self._embedders.get(embedder_key)
        descriptor_key = ("landmarks", config.dlib_runtime)
        descriptor = self._descriptors.get(descriptor_key)
        pipeline = FacePipeline(config, detector=detector, embedder=embedder, descriptor=descriptor)
        self._detectors[detector_key], self._embedders[embedder_key] = pipeline.detector, pipeline.embedder
        if pipeline.fused is not None:
            self._descriptors[descriptor_key] = pipeline.fused.descriptor
        return pipeline

    def __len__(self) -> int:
        return len(self._pipelines)


_registry = _PipelineRegistry()


def shared_pipeline(config: PipelineConfig | None = None) -> FacePipeline:
    """The process's pipeline for ``config`` (default ``PipelineConfig()``), built on first use;
    models load once per process and are shared between configs (see ``_PipelineRegistry``)."""
    return _registry.get(config or PipelineConfig())
