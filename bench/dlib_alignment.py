"""Measure the two constants of ``recognition/engine/dlib_descriptor.py``.

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -m bench.dlib_alignment ../shared/datasets/lfw [--images 400]

On LFW photos that ``pairs.txt`` never names (so no evaluation pair takes part), run the product's
MTCNN and dlib's HOG detector on the same photo and print (1) how dlib's box sits against MTCNN's
(size and centre: ``BOX_*``) and (2) where MTCNN's five landmarks land in the 150x150 chip that
dlib's 5-point predictor on the HOG box produces (``MTCNN_LANDMARKS_IN_CHIP``). Geometry only: no
identity is used.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np


def main() -> None:
    import dlib

    from recognition.engine.detection import make_detector
    from recognition.engine.dlib_descriptor import CHIP_PADDING, CHIP_SIZE, checked_model_path
    from recognition.engine.images import decode_image
    from recognition.engine.lfw import read_pairs
    from recognition.engine.lfw_run import pick_central_face

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lfw_dir", type=Path)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pairs = read_pairs(args.lfw_dir)
    named = {p.left for p in pairs} | {p.right for p in pairs}
    spare = sorted(
        str(p.relative_to(args.lfw_dir))
        for p in (args.lfw_dir / "images_deepfunneled").glob("*/*.jpg")
        if str(p.relative_to(args.lfw_dir)) not in named
    )
    sample = random.Random(args.seed).sample(spare, min(args.images, len(spare)))
    detector = make_detector("mtcnn-graph")
    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(checked_model_path("shape_predictor_5_face_landmarks.dat")))

    sizes, shifts, in_chip = [], [], []
    for name in sample:
        rgb = decode_image((args.lfw_dir / name).read_bytes())
        face = pick_central_face(detector.detect(rgb), rgb.shape[1], rgb.shape[0])
        if face is None:
            continue
        x, y, w, h = face.box
        cx, cy = x + w / 2, y + h / 2
        match = [
            d
            for d in hog(rgb, 1)
            if abs(d.center().x - cx) < w / 3 and abs(d.center().y - cy) < h / 3  # the same face
        ]
        if not match:
            continue
        box = match[0]
        sizes.append((box.right() - box.left() + 1) / np.sqrt(w * h))
        shifts.append(((box.center().x - cx) / w, (box.center().y - cy) / h))
        # the chip transform dlib uses for these 5 points, applied to MTCNN's landmarks
        details = dlib.get_face_chip_details(predictor(rgb, box), CHIP_SIZE, CHIP_PADDING)
        angle, rect = details.angle, details.rect
        scale = CHIP_SIZE / rect.width()
        centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
        rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        in_chip.append((face.landmarks - centre) @ rotation.T * scale + (CHIP_SIZE - 1) / 2)
    sizes, shifts, in_chip = np.array(sizes), np.array(shifts), np.array(in_chip)
    print(f"{len(sizes)} faces found by both detectors, of {len(sample)} photos")
    print(f"dlib box side / sqrt(MTCNN w*h): median {np.median(sizes):.3f}, spread {np.std(sizes):.3f}")
    print(f"dlib box centre - MTCNN centre: {np.median(shifts[:, 0]):+.3f} w across, {np.median(shifts[:, 1]):+.3f} h down")
    print(f"MTCNN landmarks in dlib's {CHIP_SIZE}px chip (median): {np.round(np.median(in_chip, 0), 2).tolist()}")
    print(f"  spread: {np.round(np.std(in_chip, 0), 2).tolist()}")


if __name__ == "__main__":
    main()
