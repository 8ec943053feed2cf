"""Anchor assignment: one image's boxes -> `[A, 4 + 1]` training targets.

Columns 0-3 hold the encoded deltas (`boxes.encode`), column 4 the anchor state: the class id
for a positive anchor, `NEGATIVE` or `IGNORE`. Runs inside the tf.data pipeline.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from retinanet.detection import boxes as box_ops
from retinanet.detection import defaults

NEGATIVE = -1.0  # background: trains the classifier towards 0 for every class
IGNORE = -2.0  # between the IoU thresholds: contributes to no loss
# IoUs this close to a box's best count as tied with it: anchors of one shape that a box holds
# whole tie exactly, but float32 rounding sets them a few units in the last place apart.
TIE_TOLERANCE = 1e-6


class LabelEncoder:
    """Match anchors to ground truth by IoU: >= positive_iou positive, < negative_iou negative.

    `allow_low_quality_matches`: every box's best anchors (all anchors that tie its highest IoU,
    within `TIE_TOLERANCE`) are positive for that box too, even below `positive_iou`, so that no
    box is left without a positive anchor (the low-quality matches of torchvision's and Detectron2's `Matcher`). Unlike
    theirs, such an anchor is matched to the box it is the best anchor of, not to the box it
    overlaps most, so that the box really gains it (as TF Object Detection's
    `force_match_for_each_row`); an anchor that is the best of several boxes goes to the one it
    overlaps most. A box that no anchor overlaps at all (best IoU 0) gains nothing: every anchor
    would tie for it.

    Args:
        anchors: Anchor boxes [A, 4] `x1, y1, x2, y2` in network-input pixels (`AnchorSet.boxes`).
        positive_iou: IoU, a fraction in (0, 1]: an anchor whose best IoU with a box is at least
            this is positive for that box. Default `defaults.POSITIVE_IOU` (0.5).
        negative_iou: IoU, a fraction in (0, positive_iou]: an anchor whose best IoU is below this
            is negative (background); between the two it is ignored. Default
            `defaults.NEGATIVE_IOU` (0.4).
        allow_low_quality_matches: Make each box's best anchors positive too, as above. Default
            `defaults.ALLOW_LOW_QUALITY_MATCHES` (False).

    Raises:
        ValueError: The thresholds are not 0 < negative_iou <= positive_iou <= 1.
    """

    def __init__(self, anchors: np.ndarray | tf.Tensor, *, positive_iou: float = defaults.POSITIVE_IOU,
                 negative_iou: float = defaults.NEGATIVE_IOU,
                 allow_low_quality_matches: bool = defaults.ALLOW_LOW_QUALITY_MATCHES):
        if not 0 < negative_iou <= positive_iou <= 1:
            raise ValueError(f"need 0 < negative_iou ({negative_iou}) <= positive_iou ({positive_iou}) <= 1")
        self.anchors = tf.convert_to_tensor(anchors, tf.float32)
        self.positive_iou = positive_iou
        self.negative_iou = negative_iou
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, gt_boxes: tf.Tensor, gt_classes: tf.Tensor) -> tf.Tensor:
        """gt_boxes [N, 4] `x1, y1, x2, y2` in network-input pixels, gt_classes [N] class ids ->
        targets [A, 5] float32 (N may be 0): encoded deltas [A, 4], then the anchor state."""
        return self._encode(tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4]),
                            tf.reshape(tf.cast(gt_classes, tf.float32), [-1]))

    # XLA fuses the [A, N] IoU and the per-anchor encoding: 7x faster than op by op on a CPU.
    @tf.function(jit_compile=True, reduce_retracing=True)
    def _encode(self, gt_boxes, gt_classes):
        num_anchors = tf.shape(self.anchors)[0]
        # A zero-size fallback row keeps argmax defined for images without boxes.
        padded_boxes = tf.concat([gt_boxes, tf.zeros([1, 4])], axis=0)
        padded_classes = tf.concat([gt_classes, [NEGATIVE]], axis=0)
        iou = box_ops.pairwise_iou(self.anchors, padded_boxes)  # [A, N + 1]
        best_iou = tf.reduce_max(iou, axis=1)
        best_index = tf.argmax(iou, axis=1, output_type=tf.int32)
        positive_mask = best_iou >= self.positive_iou
        negative_mask = best_iou < self.negative_iou
        if self.allow_low_quality_matches:
            forced_mask, forced_index = best_anchors_of_boxes(iou)
            positive_mask = positive_mask | forced_mask
            best_index = tf.where(forced_mask, forced_index, best_index)
        state = tf.where(positive_mask, tf.gather(padded_classes, best_index),
                         tf.where(negative_mask, NEGATIVE, IGNORE))
        matched = tf.gather(padded_boxes, best_index)
        deltas = tf.where(positive_mask[:, None], box_ops.encode(matched, self.anchors), 0.0)
        targets = tf.concat([deltas, state[:, None]], axis=-1)
        return tf.ensure_shape(tf.reshape(targets, [num_anchors, 5]), [self.anchors.shape[0], 5])


def best_anchors_of_boxes(iou: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """iou [A, N] -> (forced_mask [A] bool, box_index [A] int32).

    `forced_mask`: the anchor ties (within `TIE_TOLERANCE`) the highest IoU of some box, and that
    IoU is above the tolerance (the zero-size padding box and boxes that no anchor touches never
    qualify: every anchor would tie for them). `box_index`: among
    the boxes whose best anchor it is, the one it overlaps most (meaningful where forced).
    """
    best_per_box = tf.reduce_max(iou, axis=0)  # [N]
    is_best = (iou >= best_per_box[None, :] - TIE_TOLERANCE) & (best_per_box > TIE_TOLERANCE)[None, :]
    forced_mask = tf.reduce_any(is_best, axis=1)
    box_index = tf.argmax(tf.where(is_best, iou, -1.0), axis=1, output_type=tf.int32)
    return forced_mask, box_index
