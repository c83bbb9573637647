"""MTCNN in one compiled TensorFlow graph, on the ``mtcnn`` package's bundled P/R/O-Net weights.

The stock ``mtcnn.MTCNN.detect_faces`` runs every pyramid level, NMS and refine stage as eager
TensorFlow calls glued with NumPy, and its NMS builds an N x N IoU matrix over every PNet proposal
(thousands on a 640x480 frame). Here the whole cascade -- image pyramid, PNet on every level, NMS,
batched RNet and ONet refinement, the final NMS -- is one ``tf.function`` traced once per process
for any image size, so a frame is a single graph call.

Differences from the stock package, on purpose:
- the PNet and RNet NMS are TensorFlow's greedy NMS (a box is dropped only by a *kept* box), where
  the stock drops a box when *any* better box overlaps it, kept or not. Greedy keeps a superset of
  candidates for the next stage, so recall can only go up;
- the number of PNet proposals passed to RNet is capped (``max_proposals``, best scores first);
  on real frames it stays far below the cap.
Everything else (pyramid scales, AREA resize, normalisation, crop-and-resize boxes, thresholds,
the final "min" NMS) follows the stock implementation, so boxes and landmarks agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MTCNNSettings:
    min_face_size: int = 20  # pixels; the pyramid's largest level makes a face this big 12 px
    scale_factor: float = 0.709
    threshold_pnet: float = 0.6
    threshold_rnet: float = 0.7
    threshold_onet: float = 0.8
    nms_pnet_scale: float = 0.5  # per pyramid level
    nms_pnet: float = 0.7  # across levels
    nms_rnet: float = 0.7
    nms_onet: float = 0.7  # "min" IoU: intersection over the smaller box
    max_proposals: int = 2000


def pyramid_scales(height: int, width: int, min_face_size: int, scale_factor: float, min_size: int = 12) -> np.ndarray:
    """The stock package's pyramid: (S,) float32 scales, largest first."""
    min_dim = min(width, height)
    count = round(-((np.log(min_dim / min_size) / np.log(scale_factor)) + 1))
    return (min_size / min_face_size * scale_factor ** np.arange(max(count, 0))).astype(np.float32)


class FastMTCNN:
    """Face boxes, scores and five landmarks for one image per call. Thread-safe; build once per process."""

    def __init__(self, settings: MTCNNSettings = MTCNNSettings()):
        import tensorflow as tf
        from mtcnn.network.onet import ONet
        from mtcnn.network.pnet import PNet
        from mtcnn.network.rnet import RNet
        from mtcnn.utils.tensorflow import load_weights

        self.settings = settings
        nets = []
        for net_class, weights in ((PNet, "pnet.lz4"), (RNet, "rnet.lz4"), (ONet, "onet.lz4")):
            net = net_class()
            net.build()
            net.set_weights(load_weights(weights))
            nets.append(net)
        self._pnet, self._rnet, self._onet = nets
        self._detect = tf.function(
            self._cascade,
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None], tf.float32)],
            reduce_retracing=True,
        )
        self.detect(np.zeros((64, 64, 3), np.uint8))  # warm-up: trace the graph once at start-up

    def detect(self, rgb: np.ndarray, min_face_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB -> boxes (N, 4) x1,y1,x2,y2 pixels, scores (N,), landmarks (N, 5, 2).

        Faces come best score first; boxes are clipped to the image like the stock ``fit_to_image``.
        Landmark order: left eye, right eye, nose, mouth left, mouth right (the stock order).
        """
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        height, width = rgb.shape[:2]
        min_face_size = min_face_size or self.settings.min_face_size
        scales = pyramid_scales(height, width, min_face_size, self.settings.scale_factor)
        # levels smaller than PNet's 12x12 window find nothing (and the stock would fail on them)
        scales = scales[np.minimum(height * scales, width * scales) >= 12]
        if len(scales) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        boxes, scores, landmarks = (t.numpy() for t in self._detect(rgb, scales))
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width - 1)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height - 1)
        return boxes, scores, landmarks.reshape(-1, 2, 5).transpose(0, 2, 1)

    # ---- the graph -----------------------------------------------------------------------------

    def _cascade(self, rgb, scales):
        import tensorflow as tf

        s = self.settings
        image = (tf.cast(rgb, tf.float32) - 127.5) / 128.0
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        batch = image[None]

        # PNet over every pyramid level: proposals as [x1, y1, x2, y2, score] in original pixels
        proposals = tf.TensorArray(tf.float32, size=tf.shape(scales)[0], infer_shape=False, element_shape=[None, 5])
        for i in tf.range(tf.shape(scales)[0]):
            scale = scales[i]
            # the stock resize truncates the scaled size (a float shape cast to int)
            size = tf.cast(shape * scale, tf.int32)
            level = tf.image.resize(batch, size, method=tf.image.ResizeMethod.AREA)
            reg, prob = self._pnet(level, training=False)
            level_boxes = _pnet_boxes(reg[0], prob[0, :, :, 1], s.threshold_pnet) / tf.stack([scale] * 4 + [1.0])
            proposals = proposals.write(i, _greedy_nms(level_boxes, s.nms_pnet_scale, s.max_proposals))
        boxes = proposals.concat()
        boxes = _greedy_nms(boxes, s.nms_pnet, s.max_proposals)
        boxes = _square(boxes)

        # RNet on every proposal in one batch
        offsets, prob = _run_on_patches(self._rnet, _crop(batch, boxes, shape, 24))
        boxes = _refine(boxes, offsets, prob[:, 1])
        boxes = tf.boolean_mask(boxes, boxes[:, 4] > s.threshold_rnet)
        boxes = _greedy_nms(boxes, s.nms_rnet, s.max_proposals)
        boxes = _square(boxes)

        # ONet on the survivors in one batch: final boxes, scores and landmarks
        offsets, marks, prob = _run_on_patches(self._onet, _crop(batch, boxes, shape, 48))
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1.0
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1.0
        marks = tf.concat([w * marks[:, 0:5] + boxes[:, 0:1] - 1.0, h * marks[:, 5:10] + boxes[:, 1:2] - 1.0], axis=1)
        boxes = _refine(boxes, offsets, prob[:, 1])
        keep = boxes[:, 4] > s.threshold_onet
        boxes, marks = tf.boolean_mask(boxes, keep), tf.boolean_mask(marks, keep)
        order = tf.argsort(boxes[:, 4], direction="DESCENDING")
        boxes, marks = tf.gather(boxes, order), tf.gather(marks, order)
        keep = _stock_min_nms(boxes[:, :4], s.nms_onet)
        boxes, marks = tf.gather(boxes, keep), tf.gather(marks, keep)
        return boxes[:, :4], boxes[:, 4], marks


def _pnet_boxes(reg, prob, threshold):
    """PNet's (h, w, 4) offsets and (h, w) face probability -> [x1, y1, x2, y2, score] in level pixels."""
    import tensorflow as tf

    where = tf.where(prob > threshold)  # (n, 2): y, x
    yx = tf.cast(where, tf.float32)
    offsets = tf.gather_nd(reg, where)
    scores = tf.gather_nd(prob, where)
    # the 12x12 window at stride 2; offsets are fractions of its size
    x1, y1 = yx[:, 1] * 2.0 + 1.0, yx[:, 0] * 2.0 + 1.0
    x2, y2 = yx[:, 1] * 2.0 + 12.0, yx[:, 0] * 2.0 + 12.0
    return tf.stack(
        [x1 + offsets[:, 0] * 11.0, y1 + offsets[:, 1] * 11.0, x2 + offsets[:, 2] * 11.0, y2 + offsets[:, 3] * 11.0, scores],
        axis=1,
    )


def _greedy_nms(boxes, iou_threshold, max_output):
    import tensorflow as tf

    keep = tf.image.non_max_suppression(
        tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]], axis=1), boxes[:, 4], max_output, iou_threshold
    )
    return tf.gather(boxes, keep)


def _square(boxes):
    """Grow each box to a square about its centre (the stock ``resize_to_square``)."""
    import tensorflow as tf

    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = tf.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return tf.stack([x1, y1, x1 + side, y1 + side, boxes[:, 4]], axis=1)


def _crop(batch, boxes, shape, size):
    """Patches of the normalised image under ``boxes``, resized to size x size (as the stock crops them)."""
    import tensorflow as tf

    height, width = shape[0], shape[1]
    normalised = tf.stack([boxes[:, 1] / height, boxes[:, 0] / width, boxes[:, 3] / height, boxes[:, 2] / width], axis=1)
    return tf.image.crop_and_resize(batch, normalised, tf.zeros(tf.shape(boxes)[:1], tf.int32), [size, size])


def _run_on_patches(net, patches):
    """Run a refine net on (n, s, s, 3) patches, n possibly 0.

    oneDNN's convolution mishandles an empty batch, so one blank patch rides along and its outputs
    are dropped.
    """
    import tensorflow as tf

    outputs = net(tf.concat([patches, tf.zeros([1, *patches.shape[1:]])], axis=0), training=False)
    return [output[:-1] for output in outputs]


def _refine(boxes, offsets, scores):
    """Apply a refine net's box offsets (fractions of the box size) and take its score."""
    import tensorflow as tf

    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    corners = boxes[:, :4] + offsets * tf.stack([w, h, w, h], axis=1)
    return tf.concat([corners, scores[:, None]], axis=1)


def _stock_min_nms(boxes, threshold):
    """The stock final NMS: drop a box when any better-scored box covers more than ``threshold`` of
    the smaller of the two. ``boxes`` (n, 4) sorted best first; n is small after ONet."""
    import tensorflow as tf

    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    left = tf.maximum(boxes[None, :, 0], boxes[:, None, 0])
    top = tf.maximum(boxes[None, :, 1], boxes[:, None, 1])
    right = tf.minimum(boxes[None, :, 2], boxes[:, None, 2])
    bottom = tf.minimum(boxes[None, :, 3], boxes[:, None, 3])
    inter = tf.maximum(0.0, right - left) * tf.maximum(0.0, bottom - top)
    overlap = inter / tf.minimum(area[:, None], area[None, :])
    n = tf.shape(boxes)[0]
    earlier = tf.linalg.band_part(tf.ones([n, n]), 0, -1) - tf.eye(n)  # [i, j] = 1 where i < j
    suppressed = tf.reduce_any((overlap > threshold) & (earlier > 0), axis=0)
    return tf.where(~suppressed)[:, 0]
