"""640x480 test frames built from real photographs (the fixture probes and LFW)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from recognition.engine.images import decode_image

FRAME_W, FRAME_H = 640, 480
# Where the labelled face sits in a 250x250 deep-funneled LFW image (x, y, w, h), as in lfw_run.
LFW_FACE_BOX = (78.0, 70.0, 94.0, 118.0)
ROOT = Path(__file__).resolve().parent.parent
PROBES = ROOT / "tests" / "fixtures" / "faces" / "probes"
PEOPLE = ROOT / "tests" / "fixtures" / "faces" / "people"
# Faces in each probe image, from tests/fixtures/faces/README.md.
PROBE_FACES = {
    "obama1.jpg": 1,
    "alex_lacamoire1.jpg": 1,
    "johnsnow_test1.jpg": 1,
    "kit_with_rose.jpg": 2,
    "obama_and_biden.jpg": 2,
    "two_people.jpg": 2,
    "obama_small.jpg": 1,
    "obama-240p.jpg": 1,
    "obama-720p.jpg": 1,
    "obama-1080p.jpg": 1,
    "obama_partial_face.jpg": 1,
    "obama_partial_face2.jpg": 1,
    "32bit.png": 1,
    "multiface.jpg": 6,
}


@dataclass
class Frame:
    name: str
    rgb: np.ndarray  # (480, 640, 3) uint8
    faces: int  # faces known to be in it
    boxes: list[tuple[float, float, float, float]]  # known face boxes (x, y, w, h), when known


def read_rgb(path: Path) -> np.ndarray:
    return decode_image(Path(path).read_bytes())


def background(rng: np.random.Generator) -> np.ndarray:
    """A plain, slightly noisy wall: no face-like structure for a detector to find."""
    base = rng.integers(90, 170, size=3)
    noise = rng.normal(0, 6, size=(FRAME_H, FRAME_W, 1))
    return np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)


def letterbox(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Fit an image into 640x480 (shrink or enlarge) on a plain background: frame, scale, offset."""
    h, w = rgb.shape[:2]
    scale = min(FRAME_W / w, FRAME_H / h)
    nw, nh = round(w * scale), round(h * scale)
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    frame = background(rng)
    x0, y0 = (FRAME_W - nw) // 2, (FRAME_H - nh) // 2
    frame[y0 : y0 + nh, x0 : x0 + nw] = resized
    return frame, scale, (x0, y0)


def probe_frames(seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    frames = []
    for name, count in PROBE_FACES.items():
        frame, _, _ = letterbox(read_rgb(PROBES / name), rng)
        frames.append(Frame(name, frame, count, []))
    return frames


def lfw_image_paths(lfw_dir: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` LFW images, one per person, people drawn at random (seeded)."""
    people = sorted(p for p in (Path(lfw_dir) / "images_deepfunneled").iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(people), size=min(n, len(people)), replace=False)
    return [sorted(people[i].glob("*.jpg"))[0] for i in chosen]


def lfw_frames(lfw_dir: Path, n: int, seed: int = 0) -> list[Frame]:
    """One LFW photo (250x250, face about 100 px) per frame, at a random place on a plain wall."""
    rng = np.random.default_rng(seed)
    frames = []
    for path in lfw_image_paths(lfw_dir, n, seed):
        photo = read_rgb(path)
        frame = background(rng)
        x0, y0 = int(rng.integers(0, FRAME_W - 250)), int(rng.integers(0, FRAME_H - 250))
        frame[y0 : y0 + 250, x0 : x0 + 250] = photo
        bx, by, bw, bh = LFW_FACE_BOX
        frames.append(Frame(path.name, frame, 1, [(bx + x0, by + y0, bw, bh)]))
    return frames


def group_frames(lfw_dir: Path, n: int, faces: int = 3, seed: int = 1) -> list[Frame]:
    """``faces`` LFW photos side by side (shrunk to 200x200) in each frame."""
    rng = np.random.default_rng(seed)
    paths = lfw_image_paths(lfw_dir, n * faces, seed)
    frames = []
    side = 200
    gap = (FRAME_W - faces * side) // (faces + 1)
    for k in range(n):
        frame = background(rng)
        boxes = []
        for j in range(faces):
            photo = cv2.resize(read_rgb(paths[k * faces + j]), (side, side), interpolation=cv2.INTER_AREA)
            x0, y0 = gap + j * (side + gap), 140
            frame[y0 : y0 + side, x0 : x0 + side] = photo
            s = side / 250
            bx, by, bw, bh = LFW_FACE_BOX
            boxes.append((x0 + bx * s, y0 + by * s, bw * s, bh * s))
        frames.append(Frame(f"group{k}", frame, faces, boxes))
    return frames


def centre_crops(lfw_dir: Path, n: int, seed: int = 2) -> np.ndarray:
    """(n, 160, 160, 3) aligned-as-the-product crops of LFW faces, from the known centre box."""
    from recognition.engine.alignment import align_face
    from recognition.engine.detection import DetectedFace

    face = DetectedFace(box=LFW_FACE_BOX, landmarks=np.zeros((5, 2), np.float32), score=1.0)
    return np.stack([align_face(read_rgb(p), face) for p in lfw_image_paths(lfw_dir, n, seed)])


def hit(box: tuple[float, float, float, float], truth: tuple[float, float, float, float]) -> bool:
    """A detection counts for a known face when its centre lies inside the known box."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return truth[0] <= cx <= truth[0] + truth[2] and truth[1] <= cy <= truth[1] + truth[3]


def stream_frames(photo: np.ndarray, face_box, n: int, seed: int = 0, face_px: float = 140.0) -> list[Frame]:
    """A webcam-like stream: the head around ``face_box`` (x, y, w, h in ``photo``), scaled so the face
    is ~``face_px`` wide, drifting and swaying on a plain wall (up to ~8 px and 1% scale per frame,
    as a person standing at a kiosk does)."""
    rng = np.random.default_rng(seed)
    wall = background(rng)
    bx, by, bw, bh = face_box
    half = 1.1 * max(bw, bh)  # a square head-and-shoulders region around the face
    cx, cy = bx + bw / 2, by + bh / 2
    frames = []
    for k in range(n):
        s = face_px / bw * (1.0 + 0.04 * np.sin(2 * np.pi * k / 30))
        side = round(2 * half * s)
        # the region, scaled by s, as an affine warp (parts outside the photo become black)
        matrix = np.array([[s, 0, side / 2 - s * cx], [0, s, side / 2 - s * cy]], np.float32)
        head = cv2.warpAffine(photo, matrix, (side, side), flags=cv2.INTER_LINEAR)
        side = min(side, FRAME_H)
        head = head[:side, :side]
        x0 = int(np.clip(round((FRAME_W - side) / 2 + 90 * np.sin(2 * np.pi * k / 70)), 0, FRAME_W - side))
        y0 = int(np.clip(round((FRAME_H - side) / 2 + 20 * np.sin(2 * np.pi * k / 45)), 0, FRAME_H - side))
        frame = wall.copy()
        frame[y0 : y0 + side, x0 : x0 + side] = head
        face = (x0 + side / 2 - bw * s / 2, y0 + side / 2 - bh * s / 2, bw * s, bh * s)
        frames.append(Frame(f"stream{k}", frame, 1, [face]))
    return frames
