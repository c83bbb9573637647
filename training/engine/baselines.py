"""The classic recognizers the product's predecessors used, on aligned face crops (not embeddings):
LBPH (OpenCV's ``cv2.face``) and Eigenfaces (PCA + nearest neighbour). They score probes the same
way as the embedding heads, (P, C) higher = more likely, here minus a distance."""

from __future__ import annotations

import numpy as np

from .dataset import FaceSet
from .heads import per_class_max

CROP_SIDE = 64  # both baselines work on small grey crops, as they were designed for


def grey_crops(crops: np.ndarray, side: int = CROP_SIDE) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, side, side) uint8 grey, histogram-equalised."""
    import cv2

    out = np.empty((len(crops), side, side), np.uint8)
    for i, crop in enumerate(crops):
        grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
        out[i] = cv2.equalizeHist(cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA))
    return out


class LBPH:
    """Local Binary Pattern Histograms (OpenCV): chi-square distance between a probe's histogram
    and each training image's; a person's score is minus the smallest distance."""

    name = "lbph"

    def fit(self, faces: FaceSet) -> LBPH:
        import cv2

        self.classes = np.unique(faces.labels)
        self._recognizer = cv2.face.LBPHFaceRecognizer_create(radius=1, neighbors=8, grid_x=8, grid_y=8)
        self._recognizer.train(list(grey_crops(faces.crops)), np.searchsorted(self.classes, faces.labels).astype(np.int32))
        return self

    def scores(self, crops: np.ndarray) -> np.ndarray:
        import cv2

        out = np.full((len(crops), len(self.classes)), -np.inf)
        for i, grey in enumerate(grey_crops(crops)):
            collector = cv2.face.StandardCollector_create()
            self._recognizer.predict_collect(grey, collector)
            for label, distance in collector.getResults(False):
                out[i, label] = max(out[i, label], -distance)
        return out


class Eigenfaces:
    """PCA on pixel intensities (Turk & Pentland 1991), then nearest neighbour in the PCA space;
    a person's score is minus the Euclidean distance to their closest training image."""

    name = "eigenfaces"

    def __init__(self, components: int = 100):
        self.components = components

    def fit(self, faces: FaceSet) -> Eigenfaces:
        from sklearn.decomposition import PCA

        self.classes = np.unique(faces.labels)
        x = grey_crops(faces.crops).reshape(len(faces), -1).astype(np.float32) / 255.0
        self._pca = PCA(n_components=max(1, min(self.components, len(faces) - 1, x.shape[1])), random_state=0)
        self._gallery = self._pca.fit_transform(x)
        self._labels = faces.labels
        return self

    def scores(self, crops: np.ndarray) -> np.ndarray:
        x = grey_crops(crops).reshape(len(crops), -1).astype(np.float32) / 255.0
        z = self._pca.transform(x)
        distance = np.sqrt(np.maximum(((z[:, None, :] - self._gallery[None, :, :]) ** 2).sum(-1), 0.0))
        return per_class_max(-distance, self._labels, self.classes)
