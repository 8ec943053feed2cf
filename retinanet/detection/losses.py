"""RetinaNet losses: sigmoid one-hot focal loss (or its IoU-aware form, the quality focal loss),
smooth L1 (or GIoU / CIoU), image-level BCE.

The targets come from `retinanet.detection.targets` (`[B, A, 4 + 1]`); the loss only weights and
normalises. Both detection terms are divided by max(1, positive anchors), so images without
boxes still train the classifier through their negatives. Everything is computed in float32.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from retinanet.detection import boxes as box_ops
from retinanet.detection import defaults
from retinanet.detection.targets import NEGATIVE


def focal_loss(labels: tf.Tensor, logits: tf.Tensor, *, alpha: float = defaults.FOCAL_ALPHA,
               gamma: float = defaults.FOCAL_GAMMA) -> tf.Tensor:
    """Elementwise sigmoid focal loss: labels [...] in [0, 1] (smoothed labels allowed) and logits
    [...] of the same shape -> float32 [...].

    FL = alpha_t * (1 - p_t)^gamma * CE, with CE from logits (stable for any logit).

    Args:
        labels: Targets, fractions in [0, 1], shaped as `logits`.
        logits: Class logits (before the sigmoid).
        alpha: Weight of the positive term, a fraction in [0, 1]; the negative term gets
            1 - alpha. Default `defaults.FOCAL_ALPHA` (0.25).
        gamma: Focusing exponent, >= 0; 0 gives the weighted cross-entropy. Default
            `defaults.FOCAL_GAMMA` (2.0).
    """
    labels = tf.cast(labels, tf.float32)
    logits = tf.cast(logits, tf.float32)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    probabilities = tf.sigmoid(logits)
    p_t = labels * probabilities + (1.0 - labels) * (1.0 - probabilities)
    alpha_t = labels * alpha + (1.0 - labels) * (1.0 - alpha)
    return alpha_t * tf.pow(1.0 - p_t, gamma) * cross_entropy


def smooth_l1(targets: tf.Tensor, predictions: tf.Tensor, delta: float = defaults.SMOOTH_L1_DELTA) -> tf.Tensor:
    """Smooth L1 of targets [..., C] and predictions [..., C] (C = 4 deltas in the loss) summed over the
    last axis -> float32 [...]:
    0.5 x^2 / delta for |x| < delta, |x| - 0.5 delta beyond.

    `delta` is in the units of the values (encoded deltas in the loss); default
    `defaults.SMOOTH_L1_DELTA` (1/9).
    """
    difference = tf.abs(tf.cast(targets, tf.float32) - tf.cast(predictions, tf.float32))
    elementwise = tf.where(difference < delta, 0.5 * tf.square(difference) / delta, difference - 0.5 * delta)
    return tf.reduce_sum(elementwise, axis=-1)


def iou_loss(target_boxes: tf.Tensor, predicted_boxes: tf.Tensor, kind: str = "giou") -> tf.Tensor:
    """1 - GIoU (`kind` "giou") or 1 - CIoU ("ciou") of matching boxes [..., 4] `x1, y1, x2, y2`
    -> float32 [...]."""
    eps = 1e-7
    intersection, union = box_ops.intersection_and_union(target_boxes, predicted_boxes)
    iou = intersection / (union + eps)
    enclosing_top_left = tf.minimum(target_boxes[..., :2], predicted_boxes[..., :2])
    enclosing_bottom_right = tf.maximum(target_boxes[..., 2:], predicted_boxes[..., 2:])
    enclosing_size = tf.maximum(enclosing_bottom_right - enclosing_top_left, 0.0)
    if kind == "giou":
        enclosing_area = tf.reduce_prod(enclosing_size, axis=-1)
        return 1.0 - (iou - (enclosing_area - union) / (enclosing_area + eps))
    target_center, predicted_center = box_ops.xyxy_to_center(target_boxes), box_ops.xyxy_to_center(predicted_boxes)
    center_distance = tf.reduce_sum(tf.square(target_center[..., :2] - predicted_center[..., :2]), axis=-1)
    diagonal = tf.reduce_sum(tf.square(enclosing_size), axis=-1) + eps
    aspect = (4.0 / math.pi**2) * tf.square(
        tf.atan(target_center[..., 2] / (target_center[..., 3] + eps))
        - tf.atan(predicted_center[..., 2] / (predicted_center[..., 3] + eps)))
    trade_off = tf.stop_gradient(aspect / (1.0 - iou + aspect + eps))
    return 1.0 - (iou - center_distance / diagonal - trade_off * aspect)


def smooth_l1_box_loss(target_deltas: tf.Tensor, predicted_deltas: tf.Tensor, *, anchors: tf.Tensor | None,
                       smooth_l1_delta: float) -> tf.Tensor:
    """Smooth L1 on the encoded deltas [..., 4] -> [...]; the anchors are not needed."""
    return smooth_l1(target_deltas, predicted_deltas, smooth_l1_delta)


def decoded_iou_loss(kind: str):
    """The box loss `iou_loss(kind)` of the boxes decoded from the deltas [..., A, 4] at the anchors
    [A, 4] -> [..., A]."""

    def box_loss(target_deltas: tf.Tensor, predicted_deltas: tf.Tensor, *, anchors: tf.Tensor,
                 smooth_l1_delta: float) -> tf.Tensor:
        return iou_loss(box_ops.decode(target_deltas, anchors), box_ops.decode(predicted_deltas, anchors), kind)

    return box_loss


# loss.classification: "focal" learns 1 for every positive anchor; "quality_focal" (Li et al. 2020,
# generalised focal loss) learns each positive anchor's predicted box's IoU with its true box, so
# that the score ranks boxes by how well they land (NMS then keeps the best-placed one). Both use
# alpha and gamma as the focal loss does.
CLASSIFICATION_LOSSES = ("focal", "quality_focal")

# loss.box_loss -> per-anchor box loss (target deltas, predicted deltas, anchors, delta) -> [...].
# The config accepts exactly these names.
BOX_LOSSES = {"smooth_l1": smooth_l1_box_loss, "giou": decoded_iou_loss("giou"), "ciou": decoded_iou_loss("ciou")}


class RetinaNetLoss:
    """Detection loss on `y_true [B, A, 5]` and `y_pred [B, A, 4 + K]`.

    `loss(y_true, y_pred)` returns the total (classification + box_weight * box) divided by
    max(1, positive anchors in the batch). `components(...)` returns the unnormalised sums and
    the positive count, so that a distributed step can normalise by the global count.

    Args:
        num_classes: K, the number of object classes (class logits per anchor), a count.
            Default `defaults.NUM_CLASSES` (1).
        alpha: Focal loss weight of the positive term, a fraction in [0, 1]. Default
            `defaults.FOCAL_ALPHA` (0.25).
        gamma: Focal loss focusing exponent, >= 0. Default `defaults.FOCAL_GAMMA` (2.0).
        smooth_l1_delta: Where smooth L1 turns from quadratic to linear, in encoded-delta units
            (deltas divided by `boxes.BOX_VARIANCE`); used by box_loss "smooth_l1" only. Default
            `defaults.SMOOTH_L1_DELTA` (1/9).
        box_loss: A name of `BOX_LOSSES`: "smooth_l1" on the deltas, or "giou" / "ciou" on the
            decoded boxes. Default `defaults.BOX_LOSS` ("smooth_l1").
        classification: A name of `CLASSIFICATION_LOSSES`: "focal" (one-hot labels) or
            "quality_focal" (a positive anchor's label is its predicted box's IoU with the true
            box; needs `anchors`). Default `defaults.CLASSIFICATION_LOSS` ("focal").
        box_weight: Multiplier of the box term in the total, >= 0. Default `defaults.BOX_WEIGHT` (1.0).
        label_smoothing: Fraction in [0, 1) of each one-hot label moved towards 0.5. Default
            `defaults.LABEL_SMOOTHING` (0.0).
        anchors: Anchor boxes [A, 4] `x1, y1, x2, y2` in network-input pixels (`AnchorSet.boxes`);
            needed by "giou" and "ciou", which decode the deltas. Default None.

    Raises:
        ValueError: An unknown `box_loss` or `classification`, or "giou" / "ciou" / "quality_focal"
            without `anchors`.
    """

    def __init__(self, num_classes: int = defaults.NUM_CLASSES, *, alpha: float = defaults.FOCAL_ALPHA,
                 gamma: float = defaults.FOCAL_GAMMA, smooth_l1_delta: float = defaults.SMOOTH_L1_DELTA,
                 box_loss: str = defaults.BOX_LOSS, box_weight: float = defaults.BOX_WEIGHT,
                 label_smoothing: float = defaults.LABEL_SMOOTHING,
                 classification: str = defaults.CLASSIFICATION_LOSS, anchors: np.ndarray | tf.Tensor | None = None):
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
        if classification not in CLASSIFICATION_LOSSES:
            raise ValueError(f"classification must be one of {', '.join(CLASSIFICATION_LOSSES)}, "
                             f"got {classification!r}")
        if (BOX_LOSSES[box_loss] is not smooth_l1_box_loss or classification == "quality_focal") and anchors is None:
            raise ValueError(f"box_loss={box_loss!r} with classification={classification!r} decodes boxes and needs "
                             "the anchors")
        self.num_classes = num_classes
        self.alpha = alpha
        self.gamma = gamma
        self.smooth_l1_delta = smooth_l1_delta
        self.box_loss = box_loss
        self.box_weight = box_weight
        self.label_smoothing = label_smoothing
        self.classification = classification
        self.anchors = None if anchors is None else tf.convert_to_tensor(anchors, tf.float32)

    def components(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> dict[str, tf.Tensor]:
        """y_true [B, A, 5] (`LabelEncoder` targets), y_pred [B, A, 4 + K] -> {"classification", "box"}
        sums over the batch and "num_positive" (float32 scalars [])."""
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        states = y_true[..., 4]
        positive_mask = states >= 0.0
        valid_mask = tf.cast(tf.logical_or(positive_mask, tf.equal(states, NEGATIVE)), tf.float32)
        labels = tf.one_hot(tf.cast(tf.where(positive_mask, states, -1.0), tf.int32), self.num_classes)
        if self.classification == "quality_focal":
            labels = labels * self.quality(y_true[..., :4], y_pred[..., :4])[..., None]
        if self.label_smoothing:
            labels = labels * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        classification = focal_loss(labels, y_pred[..., 4:], alpha=self.alpha, gamma=self.gamma)
        classification = tf.reduce_sum(tf.reduce_sum(classification, axis=-1) * valid_mask)
        # Positive anchors only; elsewhere decoded boxes are meaningless but masked out.
        per_anchor = BOX_LOSSES[self.box_loss](y_true[..., :4], y_pred[..., :4], anchors=self.anchors,
                                               smooth_l1_delta=self.smooth_l1_delta)
        box = tf.reduce_sum(tf.where(positive_mask, per_anchor, 0.0))
        return {"classification": classification, "box": box,
                "num_positive": tf.reduce_sum(tf.cast(positive_mask, tf.float32))}

    def quality(self, target_deltas: tf.Tensor, predicted_deltas: tf.Tensor) -> tf.Tensor:
        """The IoU [B, A] of each anchor's predicted box with its target box (decoded from deltas
        [B, A, 4]), held constant: the quality focal loss's label, not a path for the box's gradient."""
        target = box_ops.decode(target_deltas, self.anchors)
        predicted = box_ops.decode(tf.stop_gradient(predicted_deltas), self.anchors)
        return tf.stop_gradient(box_ops.iou(target, predicted))

    def normalize(self, components: dict[str, tf.Tensor], num_positive: tf.Tensor) -> dict[str, tf.Tensor]:
        """Divide the sums by max(1, num_positive) (a scalar []); adds the weighted "total" (scalars [])."""
        normalizer = tf.maximum(1.0, tf.cast(num_positive, tf.float32))
        classification = components["classification"] / normalizer
        box = components["box"] / normalizer
        return {"classification": classification, "box": box, "total": classification + self.box_weight * box}

    def __call__(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """y_true [B, A, 5], y_pred [B, A, 4 + K] -> the normalised total, a float32 scalar []."""
        components = self.components(y_true, y_pred)
        return self.normalize(components, components["num_positive"])["total"]


def image_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy per image: labels [B], logits [B, 1] or [B] -> [B]."""
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1])
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32), logits=logits)

