"""Embedding the LFW images with a FacePipeline (the protocol itself is in lfw.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .alignment import align_face
from .detection import DetectedFace
from .embedding import combine_flipped
from .images import decode_image
from .lfw import Pair
from .lfw_cache import cache_file, read_rows, write_rows
from .pipeline import FacePipeline

# Where the face sits in a 250x250 deep-funneled LFW image, for the few the detector misses
# (the standard fallback of LFW evaluations: the images are centred on the face).
_LFW_CENTRE_FACE = DetectedFace(
    box=(78.0, 70.0, 94.0, 118.0),
    landmarks=np.array([[105, 115], [145, 115], [125, 138], [108, 160], [142, 160]], np.float32),
    score=0.0,
)


def pick_central_face(faces: list[DetectedFace], width: int, height: int) -> DetectedFace | None:
    """The face nearest the image centre (LFW's labelled person is the centred one)."""
    if not faces:
        return None
    cx, cy = width / 2.0, height / 2.0
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2 - cx) ** 2 + (f.box[1] + f.box[3] / 2 - cy) ** 2)


def lfw_face(pipeline: FacePipeline, lfw_dir: Path, name: str) -> tuple[np.ndarray, DetectedFace, bool]:
    """An LFW image (RGB), its labelled face (the detection nearest the centre) and whether the
    detector missed it (then the standard centre box stands in)."""
    rgb = decode_image((Path(lfw_dir) / name).read_bytes())
    face = pick_central_face(pipeline.detect(rgb), rgb.shape[1], rgb.shape[0])
    return rgb, face or _LFW_CENTRE_FACE, face is None


def embed_lfw_images(
    pipeline: FacePipeline,
    lfw_dir: Path,
    pairs: list[Pair],
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    batch: int = 64,
    faces: tuple[dict[str, DetectedFace], int] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Embed every image the pairs name, as it is and mirrored.

    Returns ({relative path: (128,) embedding}, {relative path: (128,) embedding of the mirror
    image}, number of detector misses); ``combine_flipped`` of the two is the flip-TTA embedding.
    Embeddings are cached per pipeline configuration, so a re-run costs seconds. ``faces``: this
    pipeline's detections of the images and its misses, already made (``lfw_fusion.detect_lfw_faces``:
    the same faces ``lfw_face`` picks), so they are not detected again.
    """
    files = sorted({p.left for p in pairs} | {p.right for p in pairs})
    # where the converted model is kept does not change an embedding: checkouts share the cache
    made_by = (pipeline.embedder_name, pipeline.detector.name, replace(pipeline.config, embed_cache_dir=None))
    cache = cache_file(cache_dir, "lfw-embeddings", made_by)
    stored = read_rows(cache, files)
    if stored is not None and "mirrored" in stored:
        if progress:
            progress(len(files))
        return dict(zip(files, stored["vectors"])), dict(zip(files, stored["mirrored"])), int(stored["misses"])

    embeddings: dict[str, np.ndarray] = {}
    mirrored: dict[str, np.ndarray] = {}
    misses = 0
    pending_names, pending_crops = [], []

    def flush():
        if pending_crops:
            crops = np.stack(pending_crops)
            embeddings.update(zip(pending_names, pipeline.embedder.embed(crops, flip=False)))
            mirrored.update(zip(pending_names, pipeline.embedder.embed(crops[:, :, ::-1], flip=False)))
            pending_names.clear()
            pending_crops.clear()

    cfg = pipeline.config
    for name in files:
        if faces is None:
            rgb, face, missed = lfw_face(pipeline, lfw_dir, name)
            misses += missed
        else:
            rgb, face = decode_image((Path(lfw_dir) / name).read_bytes()), faces[0][name]
        pending_names.append(name)
        pending_crops.append(align_face(rgb, face, method=cfg.align_method, margin=cfg.align_margin))
        if len(pending_crops) >= batch:
            flush()
        if progress:
            progress(1)
    flush()
    if faces is not None:
        misses = faces[1]
    write_rows(
        cache,
        files,
        vectors=np.stack([embeddings[n] for n in files]),
        mirrored=np.stack([mirrored[n] for n in files]),
        misses=misses,
    )
    return embeddings, mirrored, misses


def flipped_embeddings(plain: dict[str, np.ndarray], mirrored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The flip-TTA embeddings ({relative path: (128,) unit}) from ``embed_lfw_images``' two halves."""
    names = list(plain)
    return dict(zip(names, combine_flipped(np.stack([plain[n] for n in names]), np.stack([mirrored[n] for n in names]))))


def lfw_files(lfw_dir: Path, names: list[str], per_person: int, images: str = "images_deepfunneled") -> list[str]:
    """The first ``per_person`` images of each named person ("Name/Name_0001.jpg")."""
    root = Path(lfw_dir) / images
    return [f"{n}/{f.name}" for n in names for f in sorted((root / n).glob("*.jpg"))[:per_person]]


def read_people_folds(lfw_dir: Path) -> list[list[str]]:
    """``people.txt``: the 10 folds of LFW people (names; a few appear in two folds)."""
    lines = [line.split("\t") for line in (Path(lfw_dir) / "people.txt").read_text().split("\n") if line.strip()]
    folds, i = [], 1
    for _ in range(int(lines[0][0])):
        count = int(lines[i][0])
        folds.append([row[0] for row in lines[i + 1 : i + 1 + count]])
        i += 1 + count
    return folds


def embed_lfw_people(
    pipeline: FacePipeline,
    lfw_dir: Path,
    cache_dir: Path | None = None,
    images: str = "images_deepfunneled",
    progress: Callable[[int], None] | None = None,
    batch: int = 64,
    files: list[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """LFW images (``files``, "Name/Name_0001.jpg"; default all) embedded as the served pipeline
    embeds a photo (detected face nearest the centre, aligned, no mirror): (names of the people
    (P,), labels (N,) index into names, embeddings (N, D) float32). Cached per pipeline
    configuration, and resumable."""
    root = Path(lfw_dir) / images
    if files is None:
        files = sorted(f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir() for f in d.iterdir() if f.suffix == ".jpg")
    cache = cache_file(cache_dir, "lfw-people-embeddings", (pipeline.embedder_name, pipeline.detector.name, pipeline.config))
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            cached = dict(zip(stored["files"].tolist(), stored["vectors"]))
    else:
        cached = {}
    todo = [f for f in files if f not in cached]
    pending_names, pending_images, pending_faces = [], [], []

    def flush():
        if pending_faces:
            # the pipeline's own embedding (FaceNet, or FaceNet fused with dlib), no mirror
            cached.update(zip(pending_names, pipeline.embed_faces(pending_images, pending_faces, flip=False)[1]))
            pending_names.clear()
            pending_images.clear()
            pending_faces.clear()

    for n, name in enumerate(todo, 1):
        rgb, face, _ = lfw_face(pipeline, root, name)
        pending_names.append(name)
        pending_images.append(rgb)
        pending_faces.append(face)
        if len(pending_faces) >= batch:
            flush()
        if cache is not None and n % 512 == 0:  # resumable: a long first run keeps what it did
            _save_people_cache(cache, cached)
        if progress:
            progress(1)
    flush()
    if cache is not None and todo:
        _save_people_cache(cache, cached)
    people = sorted({f.split("/")[0] for f in files})
    index = {p: i for i, p in enumerate(people)}
    labels = np.array([index[f.split("/")[0]] for f in files], np.int64)
    return people, labels, np.stack([cached[f] for f in files]).astype(np.float32)


def _save_people_cache(cache: Path, cached: dict[str, np.ndarray]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.stem + ".part.npz")
    names = sorted(cached)
    np.savez(partial, files=np.array(names), vectors=np.stack([cached[n] for n in names]))
    partial.replace(cache)


@dataclass(frozen=True)
class OpenSetSplit:
    """LFW people split by ``people.txt`` folds so that the open-set threshold is checked on people
    it was not calibrated on: ``calibration`` (folds 1-5, one image per person: the committed impostor
    tail) and, from people only in folds 6-10, ``enrolled`` (people with two or more images: the
    first is enrolled, the second is their probe) and ``strangers`` (people with one image, never
    enrolled). Images as "Name/Name_0001.jpg"."""

    calibration: list[str]
    enrolled: list[tuple[str, str]]  # (gallery image, probe image)
    strangers: list[str]

    @property
    def files(self) -> list[str]:
        return sorted({*self.calibration, *(f for pair in self.enrolled for f in pair), *self.strangers})


def open_set_split(
    lfw_dir: Path,
    max_calibration: int = 1500,
    max_enrolled: int = 700,
    max_strangers: int = 1000,
    seed: int = 0,
    images: str = "images_deepfunneled",
) -> OpenSetSplit:
    """The fixed-seed split of ``OpenSetSplit`` (sizes capped to keep the first embedding run short)."""
    folds = read_people_folds(lfw_dir)
    first, second = {p for f in folds[:5] for p in f}, {p for f in folds[5:] for p in f}
    root = Path(lfw_dir) / images
    counts = {p: len(list((root / p).glob("*.jpg"))) for p in first | second}
    rng = np.random.default_rng(seed)

    def pick(people, n):
        people = sorted(p for p in people if counts[p] > 0)
        return sorted(rng.choice(people, min(n, len(people)), replace=False).tolist())

    calibration = pick(first, max_calibration)
    only_second = second - first
    enrolled = pick({p for p in only_second if counts[p] >= 2}, max_enrolled)
    strangers = pick({p for p in only_second if counts[p] == 1}, max_strangers)
    pairs = [tuple(lfw_files(lfw_dir, [p], 2, images)) for p in enrolled]
    return OpenSetSplit(lfw_files(lfw_dir, calibration, 1, images), pairs, lfw_files(lfw_dir, strangers, 1, images))
