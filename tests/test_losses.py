"""Tests for retinanet.detection.losses against numpy formulations and the seed-000 worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinanet.detection import boxes as box_ops
from retinanet.detection.losses import RetinaNetLoss, focal_loss, image_loss, iou_loss, smooth_l1
from retinanet.detection.targets import IGNORE, NEGATIVE

# --- numpy oracles ----------------------------------------------------------------------------


def numpy_sigmoid(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def numpy_bce(labels, logits):
    """-y log p - (1 - y) log(1 - p), via log(1 + e^-|x|) so that it is stable for any logit."""
    labels = np.asarray(labels, np.float64)
    logits = np.asarray(logits, np.float64)
    log_p = -np.logaddexp(0.0, -logits)  # log sigmoid(x)
    log_one_minus_p = -np.logaddexp(0.0, logits)  # log (1 - sigmoid(x))
    return -(labels * log_p + (1 - labels) * log_one_minus_p)


def numpy_focal(labels, logits, alpha=0.25, gamma=2.0):
    labels = np.asarray(labels, np.float64)
    p = numpy_sigmoid(logits)
    p_t = labels * p + (1 - labels) * (1 - p)
    alpha_t = labels * alpha + (1 - labels) * (1 - alpha)
    return alpha_t * (1 - p_t) ** gamma * numpy_bce(labels, logits)


def numpy_smooth_l1(x, delta):
    x = np.abs(np.asarray(x, np.float64))
    return np.where(x < delta, 0.5 * x**2 / delta, x - 0.5 * delta)


def _y_true(deltas, states):
    deltas = np.asarray(deltas, np.float32)
    states = np.asarray(states, np.float32)
    return np.concatenate([deltas, states[..., None]], axis=-1)


# --- the seed-000 "Classification Test" ---------------------------------------------------------


def test_seed_000_classification_example():
    logits = np.array([[0.3, 0.4], [0.7, 0.4]])
    # States [0, 1] with two classes: one-hot labels [[1, 0], [0, 1]]; both anchors positive.
    labels = np.array([[1.0, 0.0], [0.0, 1.0]])
    alpha, gamma = 0.25, 2.0
    expected_per_anchor = []
    for anchor_logits, anchor_labels in zip(logits, labels):
        total = 0.0
        for logit, label in zip(anchor_logits, anchor_labels):
            p = 1 / (1 + math.exp(-logit))
            p_t = p if label == 1 else 1 - p
            alpha_t = alpha if label == 1 else 1 - alpha
            total += alpha_t * (1 - p_t) ** gamma * -math.log(p_t)
        expected_per_anchor.append(total)
    expected = sum(expected_per_anchor) / 2  # two positive anchors

    y_true = _y_true(np.zeros([1, 2, 4]), [[0, 1]])
    y_pred = np.concatenate([np.zeros([1, 2, 4]), logits[None]], axis=-1).astype(np.float32)
    loss = RetinaNetLoss(num_classes=2, alpha=alpha, gamma=gamma)
    components = loss.components(y_true, y_pred)
    assert float(components["num_positive"]) == 2.0
    normalized = loss.normalize(components, components["num_positive"])
    assert float(normalized["classification"]) == pytest.approx(expected, rel=1e-5)
    assert float(normalized["box"]) == 0.0  # zero deltas predicted for zero targets
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    # The per-anchor sums also match focal_loss elementwise.
    per_anchor = focal_loss(labels, logits).numpy().sum(axis=-1)
    np.testing.assert_allclose(per_anchor, expected_per_anchor, rtol=1e-5)


# --- focal loss -------------------------------------------------------------------------------


def test_focal_loss_matches_numpy_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(6, 50, 3)).astype(np.float32)
    labels = (rng.uniform(size=logits.shape) < 0.3).astype(np.float32)
    result = focal_loss(labels, logits, alpha=0.25, gamma=2.0).numpy()
    np.testing.assert_allclose(result, numpy_focal(labels, logits), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 0.0), (0.5, 1.0), (0.75, 3.0)])
def test_focal_loss_other_parameters(alpha, gamma):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(40,)).astype(np.float32)
    labels = (rng.uniform(size=40) < 0.5).astype(np.float32)
    result = focal_loss(labels, logits, alpha=alpha, gamma=gamma).numpy()
    np.testing.assert_allclose(result, numpy_focal(labels, logits, alpha, gamma), rtol=1e-4, atol=1e-6)


def test_focal_loss_gamma_zero_is_weighted_bce():
    logits = np.array([-2.0, 0.5, 3.0], np.float32)
    labels = np.array([1.0, 0.0, 1.0], np.float32)
    result = focal_loss(labels, logits, alpha=0.25, gamma=0.0).numpy()
    np.testing.assert_allclose(result, np.array([0.25, 0.75, 0.25]) * numpy_bce(labels, logits), rtol=1e-5)


def test_focal_loss_extreme_logits_are_finite():
    logits = np.array([50.0, -50.0, 50.0, -50.0, 0.0], np.float32)
    labels = np.array([1.0, 0.0, 0.0, 1.0, 1.0], np.float32)
    result = focal_loss(labels, logits).numpy()
    assert np.isfinite(result).all()
    # Confidently right: ~0; confidently wrong: alpha_t * 1 * 50.
    np.testing.assert_allclose(result[:2], 0.0, atol=1e-12)
    assert result[2] == pytest.approx(0.75 * 50.0, rel=1e-4)
    assert result[3] == pytest.approx(0.25 * 50.0, rel=1e-4)
    np.testing.assert_allclose(result, numpy_focal(labels, logits), rtol=1e-4, atol=1e-12)


def test_detection_loss_with_extreme_logits_is_finite():
    y_true = _y_true(np.zeros([1, 4, 4]), [[0, NEGATIVE, 0, NEGATIVE]])
    logits = np.array([[[-50.0], [50.0], [50.0], [-50.0]]], np.float32)
    y_pred = np.concatenate([np.zeros([1, 4, 4], np.float32), logits], axis=-1)
    value = float(RetinaNetLoss()(y_true, y_pred))
    assert math.isfinite(value)
    assert value == pytest.approx((0.25 * 50 + 0.75 * 50) / 2, rel=1e-4)


# --- ignored anchors, normaliser ----------------------------------------------------------------


def test_ignored_anchors_contribute_nothing():
    rng = np.random.default_rng(2)
    states = np.array([[0, NEGATIVE, IGNORE, IGNORE, 1, NEGATIVE]], np.float32)
    deltas = rng.normal(size=(1, 6, 4)).astype(np.float32)
    y_true = _y_true(deltas, states)
    y_pred = rng.normal(size=(1, 6, 4 + 2)).astype(np.float32)
    loss = RetinaNetLoss(num_classes=2)
    before = loss.components(y_true, y_pred)
    changed = y_pred.copy()
    changed[0, 2:4, 4:] = [[40.0, -40.0], [-7.0, 13.0]]  # any logits on the ignored anchors
    changed[0, 2:4, :4] = 99.0  # and any box predictions
    after = loss.components(y_true, changed)
    for key in ("classification", "box", "num_positive"):
        assert float(after[key]) == pytest.approx(float(before[key]), rel=1e-6)
    # And the classification sum is exactly the focal loss of the non-ignored anchors.
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], np.float64)
    kept = y_pred[0, [0, 1, 4, 5], 4:]
    assert float(before["classification"]) == pytest.approx(numpy_focal(labels, kept).sum(), rel=1e-5)
    assert float(before["num_positive"]) == 2.0


def test_batch_without_positives():
    rng = np.random.default_rng(3)
    states = np.full([2, 5], NEGATIVE, np.float32)
    states[1, 2] = IGNORE
    y_true = _y_true(np.zeros([2, 5, 4]), states)
    y_pred = rng.normal(size=(2, 5, 5)).astype(np.float32)
    loss = RetinaNetLoss()
    components = loss.components(y_true, y_pred)
    assert float(components["num_positive"]) == 0.0
    assert float(components["box"]) == 0.0
    normalized = loss.normalize(components, components["num_positive"])
    classification = float(normalized["classification"])
    assert math.isfinite(classification) and classification > 0
    # Normaliser 1: the normalised value equals the raw sum.
    valid = states != IGNORE
    expected = numpy_focal(np.zeros([int(valid.sum()), 1]), y_pred[valid][:, 4:]).sum()
    assert classification == pytest.approx(expected, rel=1e-5)
    assert float(normalized["box"]) == 0.0
    assert float(normalized["total"]) == pytest.approx(expected, rel=1e-5)


def test_normalizer_is_the_positive_count():
    y_true = _y_true(np.ones([1, 4, 4]) * 0.5, [[0, 0, 0, NEGATIVE]])
    y_pred = np.zeros([1, 4, 5], np.float32)
    loss = RetinaNetLoss()
    components = loss.components(y_true, y_pred)
    normalized = loss.normalize(components, 3.0)
    assert float(normalized["classification"]) == pytest.approx(float(components["classification"]) / 3, rel=1e-6)
    assert float(normalized["box"]) == pytest.approx(float(components["box"]) / 3, rel=1e-6)
    # A distributed step may pass the global count.
    assert float(loss.normalize(components, 6.0)["box"]) == pytest.approx(float(components["box"]) / 6, rel=1e-6)


# --- smooth L1 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0.11, 1.0, 15.0])
def test_smooth_l1_piecewise(delta):
    rng = np.random.default_rng(4)
    targets = rng.normal(0, 2 * delta, size=(30, 4)).astype(np.float32)
    predictions = rng.normal(0, 2 * delta, size=(30, 4)).astype(np.float32)
    result = smooth_l1(targets, predictions, delta).numpy()
    assert result.shape == (30,)
    expected = numpy_smooth_l1(targets.astype(np.float64) - predictions, delta).sum(axis=-1)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)
    # Both branches are exercised.
    difference = np.abs(targets - predictions)
    assert (difference < delta).any() and (difference > delta).any()


@pytest.mark.parametrize("delta", [0.11, 1.0, 15.0])
def test_smooth_l1_continuous_at_delta(delta):
    below = smooth_l1([[delta * (1 - 1e-4), 0, 0, 0]], [[0, 0, 0, 0]], delta).numpy()[0]
    at = smooth_l1([[delta, 0, 0, 0]], [[0, 0, 0, 0]], delta).numpy()[0]
    above = smooth_l1([[delta * (1 + 1e-4), 0, 0, 0]], [[0, 0, 0, 0]], delta).numpy()[0]
    assert at == pytest.approx(0.5 * delta, rel=1e-5)
    assert below == pytest.approx(0.5 * delta, rel=1e-3)
    assert above == pytest.approx(0.5 * delta, rel=1e-3)


def test_smooth_l1_hand_values():
    # delta 1: |x| = 0.5 -> 0.125; |x| = 3 -> 2.5; summed over the last axis.
    assert float(smooth_l1([[0.5, -3.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]], 1.0)[0]) == pytest.approx(2.625)


def test_box_term_counts_only_positive_anchors():
    rng = np.random.default_rng(5)
    states = np.array([[0, NEGATIVE, IGNORE, 0, NEGATIVE]], np.float32)
    deltas = rng.normal(size=(1, 5, 4)).astype(np.float32)
    y_true = _y_true(deltas, states)
    y_pred = rng.normal(size=(1, 5, 5)).astype(np.float32)
    loss = RetinaNetLoss(smooth_l1_delta=0.11)
    components = loss.components(y_true, y_pred)
    positive = [0, 3]
    expected = numpy_smooth_l1(deltas[0, positive] - y_pred[0, positive, :4], 0.11).sum()
    assert float(components["box"]) == pytest.approx(expected, rel=1e-5)
    changed = y_pred.copy()
    changed[0, [1, 2, 4], :4] += 100.0
    assert float(loss.components(y_true, changed)["box"]) == pytest.approx(expected, rel=1e-5)
    # box_weight scales the box term in the total.
    weighted = RetinaNetLoss(smooth_l1_delta=0.11, box_weight=2.0)
    plain_total = float(loss(y_true, y_pred))
    weighted_total = float(weighted(y_true, y_pred))
    assert weighted_total - plain_total == pytest.approx(expected / 2, rel=1e-4)


# --- IoU-family box losses ----------------------------------------------------------------------


def test_giou_and_ciou_hand_values():
    target = np.array([[0, 0, 10, 10]], np.float32)
    half_overlap = np.array([[5, 0, 15, 10]], np.float32)
    apart = np.array([[20, 0, 30, 10]], np.float32)
    # GIoU: IoU 1/3, enclosing area 150 = union -> loss 2/3; apart: 0 - (300 - 200) / 300 -> 4/3.
    assert float(iou_loss(target, half_overlap, "giou")[0]) == pytest.approx(2 / 3, rel=1e-5)
    assert float(iou_loss(target, apart, "giou")[0]) == pytest.approx(4 / 3, rel=1e-5)
    # CIoU with equal aspect ratios: 1 - IoU + centre distance^2 / enclosing diagonal^2.
    assert float(iou_loss(target, half_overlap, "ciou")[0]) == pytest.approx(1 - 1 / 3 + 25 / 325, rel=1e-5)
    assert float(iou_loss(target, apart, "ciou")[0]) == pytest.approx(1 + 400 / 1000, rel=1e-5)


@pytest.mark.parametrize("kind", ["giou", "ciou"])
def test_iou_losses_zero_for_identical_and_growing_with_separation(kind):
    anchors = np.array([[10, 10, 42, 74], [50, 20, 114, 52], [0, 0, 32, 32]], np.float32)
    target_boxes = np.array([[12, 8, 40, 70], [52, 22, 110, 50], [2, 4, 30, 36]], np.float32)
    target_deltas = box_ops.encode(target_boxes, anchors).numpy()
    states = np.array([[0, 0, 0]], np.float32)
    y_true = _y_true(target_deltas[None], states)
    loss = RetinaNetLoss(box_loss=kind, anchors=anchors)
    logits = np.zeros([1, 3, 1], np.float32)

    def box_loss_for(predicted_boxes):
        deltas = box_ops.encode(predicted_boxes, anchors).numpy()
        y_pred = np.concatenate([deltas[None], logits], axis=-1)
        return float(loss.components(y_true, y_pred)["box"])

    assert box_loss_for(target_boxes) == pytest.approx(0.0, abs=1e-4)
    values = [box_loss_for(target_boxes + np.array([shift, 0, shift, 0], np.float32))
              for shift in (2.0, 8.0, 20.0, 60.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] > 1e-3


@pytest.mark.parametrize("kind", ["giou", "ciou"])
def test_iou_box_loss_needs_anchors(kind):
    with pytest.raises(ValueError):
        RetinaNetLoss(box_loss=kind)


def test_unknown_box_loss_raises():
    with pytest.raises(ValueError):
        RetinaNetLoss(box_loss="l2")


def test_iou_box_loss_ignores_non_positive_anchors():
    anchors = np.array([[0, 0, 32, 32], [40, 40, 72, 72]], np.float32)
    target_deltas = box_ops.encode(np.array([[2, 2, 30, 34], [0, 0, 1, 1]], np.float32), anchors).numpy()
    y_true = _y_true(target_deltas[None], [[0, NEGATIVE]])
    y_pred = np.concatenate([target_deltas[None], np.zeros([1, 2, 1], np.float32)], axis=-1)
    loss = RetinaNetLoss(box_loss="giou", anchors=anchors)
    base = float(loss.components(y_true, y_pred)["box"])
    y_pred[0, 1, :4] = [3.0, -2.0, 1.0, 1.0]
    assert float(loss.components(y_true, y_pred)["box"]) == pytest.approx(base, abs=1e-6)
    assert base == pytest.approx(0.0, abs=1e-4)


# --- label smoothing ------------------------------------------------------------------------------


def test_label_smoothing_moves_labels_towards_one_half():
    """YOLOv5-style smoothing: positive 1 - eps/2, negative eps/2 (seed 001)."""
    epsilon = 0.2
    rng = np.random.default_rng(6)
    states = np.array([[0, 1, NEGATIVE, IGNORE, 2]], np.float32)
    y_true = _y_true(np.zeros([1, 5, 4]), states)
    y_pred = np.concatenate([np.zeros([1, 5, 4]), rng.normal(size=(1, 5, 3))], axis=-1).astype(np.float32)
    smoothed = RetinaNetLoss(num_classes=3, label_smoothing=epsilon).components(y_true, y_pred)
    plain = RetinaNetLoss(num_classes=3).components(y_true, y_pred)
    hard = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], np.float64)
    soft = hard * (1 - epsilon) + epsilon / 2
    np.testing.assert_allclose(soft[0], [0.9, 0.1, 0.1])
    logits = y_pred[0, [0, 1, 2, 4], 4:]
    assert float(smoothed["classification"]) == pytest.approx(numpy_focal(soft, logits).sum(), rel=1e-5)
    assert float(plain["classification"]) == pytest.approx(numpy_focal(hard, logits).sum(), rel=1e-5)
    assert float(smoothed["classification"]) != pytest.approx(float(plain["classification"]), rel=1e-3)


# --- image-level loss -----------------------------------------------------------------------------


def test_image_loss_is_bce():
    labels = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    logits = np.array([[2.0], [-1.0], [-3.0], [50.0]], np.float32)
    result = image_loss(labels, logits).numpy()
    assert result.shape == (4,)
    expected = [-math.log(1 / (1 + math.exp(-2.0))), -math.log(1 - 1 / (1 + math.exp(1.0))),
                -math.log(1 / (1 + math.exp(3.0))), 50.0]
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    np.testing.assert_allclose(image_loss(labels, logits[:, 0]).numpy(), numpy_bce(labels, logits[:, 0]), rtol=1e-5)


def test_quality_focal_loss_labels_a_positive_anchor_with_its_boxs_iou():
    # Anchor 0 positive: its predicted box is the target shifted by half its width (IoU 1/3); anchor
    # 1 negative; anchor 2 ignored. The quality focal loss is the focal loss with label 1/3 there.
    import tensorflow as tf

    anchors = np.array([[0, 0, 32, 32], [40, 40, 72, 72], [80, 0, 112, 32]], np.float32)
    target = np.array([[4, 4, 28, 28]], np.float32)
    predicted = target + np.array([12, 0, 12, 0], np.float32)  # overlap 12 x 24 of a 24 x 24 box: IoU 1/3
    deltas = np.zeros((1, 3, 4), np.float32)
    deltas[0, 0] = box_ops.encode(target, anchors[:1]).numpy()[0]
    predicted_deltas = np.zeros((1, 3, 4), np.float32)
    predicted_deltas[0, 0] = box_ops.encode(predicted, anchors[:1]).numpy()[0]
    y_true = _y_true(deltas, np.array([[0, NEGATIVE, IGNORE]], np.float32))
    logits = np.array([[[0.4], [-1.2], [3.0]]], np.float32)
    y_pred = tf.constant(np.concatenate([predicted_deltas, logits], axis=-1))
    loss = RetinaNetLoss(anchors=anchors, classification="quality_focal")
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        classification = loss.components(y_true, y_pred)["classification"]
    positive, negative = focal_loss(np.float32(1 / 3), np.float32(0.4)), focal_loss(np.float32(0), np.float32(-1.2))
    expected = float(positive) + float(negative)
    assert float(classification) == pytest.approx(expected, rel=1e-5)
    # The label is held constant: the classification term sends no gradient into the box deltas.
    gradient = tape.gradient(classification, y_pred).numpy()
    assert np.all(gradient[..., :4] == 0) and gradient[0, 0, 4] != 0
    plain = RetinaNetLoss(anchors=anchors).components(y_true, y_pred)["classification"]
    assert float(plain) != pytest.approx(expected)  # one-hot labels give another value


def test_quality_focal_loss_needs_anchors_and_a_known_name():
    with pytest.raises(ValueError, match="needs the anchors"):
        RetinaNetLoss(classification="quality_focal")
    with pytest.raises(ValueError, match="classification must be one of focal, quality_focal"):
        RetinaNetLoss(classification="softmax")
