#!/usr/bin/env python
"""Offline face recognition on an edge device with the server's exported model.

    # once (or after each retrain): fetch the active version's TFLite embedder and label map
    python scripts/edge_client.py download --server http://127.0.0.1:8000 --token $TOKEN --out var/edge
    # then, with no server round-trip:
    python scripts/edge_client.py recognize photo.jpg --model-dir var/edge
    python scripts/edge_client.py recognize clip.mp4 --model-dir var/edge --every 5

The token's account needs staff status or the "Can download model files" permission: the label map
holds names and face embeddings of the enrolled people: the folder is made 0700 and the files 0600
(the owner's only), and should stay so.
Detection and alignment are the repository's MTCNN code (plain Python, no Django); the embedding
runs in tf.lite.Interpreter; matching is what the version serves: cosine nearest neighbour with
its threshold, or, when its softmax head is in production, the head (one dense layer whose weights
are in the label map, applied here in numpy) with the head's probability threshold.

For a kiosk (webcam, check-ins queued offline, model updates followed by itself) see
``python -m edge`` (edge/README.md); this script stays the minimal example.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.json"


def download(server: str, token: str, out: Path) -> dict:
    """Fetch the active version's .tflite and label map into ``out`` (0700, files 0600); check both sha256 sums."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)  # the label map names people and holds their embeddings
    api = server.rstrip("/") + "/api/v1/models"
    headers = {"Authorization": f"Token {token}"}

    def get(url: str) -> tuple[bytes, dict]:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=300) as response:
            return response.read(), dict(response.headers)

    active = json.loads(get(f"{api}/active/")[0])
    for name, url_key, sha_key in ((MODEL_FILE, "tflite_url", "tflite_sha256"), (LABELS_FILE, "labels_url", "labels_sha256")):
        if not active.get(url_key):
            raise SystemExit(f"version {active['number']} has no {name} (was the TFLite export switched off?)")
        data, _ = get(active[url_key])
        if hashlib.sha256(data).hexdigest() != active[sha_key]:
            raise SystemExit(f"{name}: sha256 does not match the server's; not saved")
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an older client may have been readable by all
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    return active


@dataclass
class Recognition:
    box: list[int]
    name: str | None  # None: not anyone enrolled
    similarity: float  # cosine similarity, or the head's probability when the label map has a head


class EdgeRecognizer:
    def __init__(self, model_dir: Path):
        from recognition.engine.detection import MTCNNDetector
        from training.engine.export import TFLiteEmbedder

        model_dir = Path(model_dir)
        self.labels = json.loads((model_dir / LABELS_FILE).read_text())
        if self.labels.get("template"):  # a fused site: two networks, 256-d templates (edge/ makes them)
            raise SystemExit(
                f"{model_dir / LABELS_FILE} is a {self.labels['template'].get('kind')} site's label map: this example "
                "client runs FaceNet alone; use the edge kiosk (python -m edge), which makes the fused templates."
            )
        self.embedder = TFLiteEmbedder(model_dir / MODEL_FILE)
        self.detector = MTCNNDetector()
        self.names = {p["index"]: p["name"] for p in self.labels["people"]}
        self.gallery = np.asarray(self.labels["gallery"]["embeddings"], np.float32).reshape(-1, 128)
        self.gallery_labels = np.asarray(self.labels["gallery"]["labels"], np.int64)
        self.threshold = float(self.labels["threshold"])
        self.head = self.labels.get("head") if self.labels.get("matching") == "softmax_head" else None
        self.alignment = self.labels.get("alignment", {"method": "box", "margin": 0.05, "size": 160})

    def recognize(self, rgb: np.ndarray) -> list[Recognition]:
        """(H, W, 3) uint8 RGB -> every face with its name (or None) and score (cosine or probability)."""
        from recognition.engine.alignment import align_face

        faces = self.detector.detect(rgb)
        if not faces:
            return []
        a = self.alignment
        crops = np.stack([align_face(rgb, f, size=a["size"], method=a["method"], margin=a["margin"]) for f in faces])
        embeddings = self.embedder.embed(crops)
        if self.head is not None:
            return [Recognition(face.box_ints(), name, score) for face, (name, score) in zip(faces, self.classify(embeddings))]
        results = []
        for face, embedding in zip(faces, embeddings):
            if len(self.gallery) == 0:
                results.append(Recognition(face.box_ints(), None, 0.0))
                continue
            similarity = self.gallery @ embedding
            best = int(np.argmax(similarity))
            name = self.names.get(int(self.gallery_labels[best])) if similarity[best] >= self.threshold else None
            results.append(Recognition(face.box_ints(), name, float(similarity[best])))
        return results

    def classify(self, embeddings: np.ndarray) -> list[tuple[str | None, float]]:
        """(N, 128) embeddings -> (name or None, probability) by the version's softmax head."""
        out = []
        for person, probability in head_predictions(self.head, embeddings):
            accepted = person is not None and probability >= float(self.head["threshold"])
            out.append((self.names.get(person) if accepted else None, probability))
        return out


def head_predictions(head: dict, embeddings: np.ndarray) -> list[tuple[int | None, float]]:
    """The label map's softmax head on (N, 128) embeddings -> (person index, probability) of each
    one's likeliest person, before the threshold: logits = embeddings @ kernel + bias, softmax."""
    embeddings = np.asarray(embeddings, np.float32)
    kernel = np.asarray(head["kernel"], np.float32).reshape(embeddings.shape[1], -1)
    if kernel.shape[1] == 0:
        return [(None, 0.0)] * len(embeddings)
    logits = embeddings @ kernel + np.asarray(head["bias"], np.float32)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    best = probabilities.argmax(axis=1)
    return [(int(head["people"][b]), float(row[b])) for b, row in zip(best, probabilities)]


def frames(path: Path, every: int):
    """(index, RGB frame) of an image, or of every ``every``-th frame of a video."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is not None:
        yield 0, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return
    video = cv2.VideoCapture(str(path))
    if not video.isOpened():
        raise SystemExit(f"{path}: neither an image nor a video OpenCV can read")
    index = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        if index % every == 0:
            yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1
    video.release()


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # what this writes (the model folder, the label map) is the owner's only
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch the active model and label map")
    get.add_argument("--server", default="http://127.0.0.1:8000")
    get.add_argument("--token", default=os.environ.get("FACESITE_TOKEN"), help="API token (or FACESITE_TOKEN)")
    get.add_argument("--out", type=Path, default=Path("var/edge"))
    run = commands.add_parser("recognize", aliases=["recognise"], help="recognize faces in an image or video, offline")
    run.add_argument("path", type=Path)
    run.add_argument("--model-dir", type=Path, default=Path("var/edge"))
    run.add_argument("--every", type=int, default=5, help="video: look at every n-th frame")
    args = parser.parse_args(argv)

    if args.command == "download":
        if not args.token:
            parser.error("--token (or FACESITE_TOKEN) is required")
        active = download(args.server, args.token, args.out)
        print(f"version {active['number']} saved to {args.out} ({len(active['metrics'].get('people_names', {}))} people)")
        return 0
    recognizer = EdgeRecognizer(args.model_dir)
    score = "probability" if recognizer.head is not None else "similarity"
    for index, rgb in frames(args.path, max(1, args.every)):
        for r in recognizer.recognize(rgb):
            print(f"frame {index}: {r.name or 'unknown'} ({score} {r.similarity:.2f}) at {r.box}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
