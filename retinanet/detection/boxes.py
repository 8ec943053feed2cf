"""Pure box math on `x1, y1, x2, y2` boxes in absolute pixels (TensorFlow ops).

Every function takes float tensors (or anything `tf.convert_to_tensor` accepts, such as numpy
arrays) and returns float32 tensors; shapes are in the docstrings, `...` for any leading
dimensions. Encode and decode are one inverse pair sharing `BOX_VARIANCE`.
"""

from __future__ import annotations

import tensorflow as tf

# Deltas are divided by these so that their targets have roughly unit variance.
BOX_VARIANCE = (0.1, 0.1, 0.2, 0.2)
# exp() of a larger log-size delta would overflow; log(1000 / 16) as in detectron2.
MAX_LOG_SIZE_DELTA = 4.135


def xywh_to_xyxy(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] `x, y, width, height` (top-left corner) -> [..., 4] `x1, y1, x2, y2`."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    return tf.concat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] `x1, y1, x2, y2` -> [..., 4] `x, y, width, height` (top-left corner)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    return tf.concat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xyxy_to_center(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] `x1, y1, x2, y2` -> [..., 4] `cx, cy, width, height`."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    return tf.concat([(boxes[..., :2] + boxes[..., 2:]) / 2.0, boxes[..., 2:] - boxes[..., :2]], axis=-1)


def center_to_xyxy(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] `cx, cy, width, height` -> [..., 4] `x1, y1, x2, y2`."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    half = boxes[..., 2:] / 2.0
    return tf.concat([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def area(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] -> [...]; degenerate boxes have area 0."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    sizes = tf.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return sizes[..., 0] * sizes[..., 1]


def intersection_and_union(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[..., 4] and [..., 4] (broadcast against each other) -> (intersection [...], union [...]) areas.

    The one overlap primitive behind IoU, GIoU/CIoU and fusion; `retinanet.detection.metrics` has its
    numpy twin. Sizes are `x2 - x1`, no +1; a degenerate box has area 0.
    """
    boxes_a = tf.convert_to_tensor(boxes_a, tf.float32)
    boxes_b = tf.convert_to_tensor(boxes_b, tf.float32)
    top_left = tf.maximum(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = tf.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
    sizes = tf.maximum(bottom_right - top_left, 0.0)
    intersection = sizes[..., 0] * sizes[..., 1]
    return intersection, area(boxes_a) + area(boxes_b) - intersection


def iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """[..., 4] and [..., 4] (broadcast) -> [...] intersection over union (0 where the union is empty)."""
    return tf.math.divide_no_nan(*intersection_and_union(boxes_a, boxes_b))


def pairwise_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """[N, 4], [M, 4] -> [N, M] intersection over union (0 where the union is empty)."""
    boxes_a = tf.convert_to_tensor(boxes_a, tf.float32)
    boxes_b = tf.convert_to_tensor(boxes_b, tf.float32)
    return iou(boxes_a[:, None, :], boxes_b[None, :, :])


def clip(boxes: tf.Tensor, height: float | tf.Tensor, width: float | tf.Tensor) -> tf.Tensor:
    """[..., 4] -> [..., 4] clipped to the image `[0, width] x [0, height]` (scalars [], pixels)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return tf.stack([tf.clip_by_value(x1, 0.0, width), tf.clip_by_value(y1, 0.0, height),
                     tf.clip_by_value(x2, 0.0, width), tf.clip_by_value(y2, 0.0, height)], axis=-1)


def encode(boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Ground-truth boxes [..., 4] against anchors [..., 4] -> scaled deltas [..., 4].

    deltas = [(gx - ax) / aw, (gy - ay) / ah, log(gw / aw), log(gh / ah)] / BOX_VARIANCE
    """
    box = xyxy_to_center(boxes)
    anchor = xyxy_to_center(anchors)
    deltas = tf.concat([(box[..., :2] - anchor[..., :2]) / anchor[..., 2:],
                        tf.math.log(tf.maximum(box[..., 2:], 1e-6) / anchor[..., 2:])], axis=-1)
    return deltas / tf.constant(BOX_VARIANCE, tf.float32)


def decode(deltas: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Scaled deltas [..., 4] applied to anchors [..., 4] -> boxes [..., 4]; inverse of `encode`."""
    deltas = tf.cast(deltas, tf.float32) * tf.constant(BOX_VARIANCE, tf.float32)
    anchor = xyxy_to_center(anchors)
    centers = anchor[..., :2] + deltas[..., :2] * anchor[..., 2:]
    sizes = anchor[..., 2:] * tf.exp(tf.minimum(deltas[..., 2:], MAX_LOG_SIZE_DELTA))
    return center_to_xyxy(tf.concat([centers, sizes], axis=-1))


def shrink(boxes: tf.Tensor, factor: float) -> tf.Tensor:
    """[..., 4] -> [..., 4], width and height multiplied by `factor` about their centres (1 keeps them)."""
    center = xyxy_to_center(boxes)
    return center_to_xyxy(tf.concat([center[..., :2], center[..., 2:] * factor], axis=-1))
