"""Tests for retinanet.detection.boxes against plain-loop oracles and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinanet.detection import boxes as box_ops

# --- oracles ----------------------------------------------------------------------------------


def loop_iou(box_a, box_b) -> float:
    width = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
    height = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    intersection = max(width, 0.0) * max(height, 0.0)
    area_a = max(box_a[2] - box_a[0], 0.0) * max(box_a[3] - box_a[1], 0.0)
    area_b = max(box_b[2] - box_b[0], 0.0) * max(box_b[3] - box_b[1], 0.0)
    union = area_a + area_b - intersection
    return intersection / union if union > 0 else 0.0


def random_boxes(rng, count, low=0.0, high=100.0, min_size=1.0, max_size=60.0):
    x1 = rng.uniform(low, high, count)
    y1 = rng.uniform(low, high, count)
    width = rng.uniform(min_size, max_size, count)
    height = rng.uniform(min_size, max_size, count)
    return np.stack([x1, y1, x1 + width, y1 + height], axis=-1).astype(np.float32)


# --- pairwise IoU -----------------------------------------------------------------------------


def test_pairwise_iou_matches_loop_on_random_boxes():
    rng = np.random.default_rng(0)
    boxes_a = random_boxes(rng, 40)
    boxes_b = random_boxes(rng, 30)
    result = box_ops.pairwise_iou(boxes_a, boxes_b).numpy()
    assert result.shape == (40, 30)
    expected = np.array([[loop_iou(a, b) for b in boxes_b] for a in boxes_a])
    np.testing.assert_allclose(result, expected, atol=1e-6)
    # The random set must exercise both overlapping and disjoint pairs.
    assert (expected > 0).any() and (expected == 0).any()


def test_pairwise_iou_special_cases():
    boxes_a = np.array([
        [0, 0, 10, 10],  # reference
        [20, 20, 30, 30],  # disjoint from the reference
        [2, 2, 6, 6],  # nested inside the reference
        [10, 0, 20, 10],  # touching the reference along x = 10
        [5, 5, 5, 9],  # zero width
        [3, 3, 3, 3],  # a point
    ], np.float32)
    boxes_b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [3, 3, 3, 3]], np.float32)
    result = box_ops.pairwise_iou(boxes_a, boxes_b).numpy()
    expected = np.array([[loop_iou(a, b) for b in boxes_b] for a in boxes_a])
    np.testing.assert_allclose(result, expected, atol=1e-6)
    # Hand values.
    assert result[0, 0] == pytest.approx(1.0)
    assert result[0, 1] == pytest.approx(50 / 150)
    assert result[1, 0] == 0.0
    assert result[2, 0] == pytest.approx(16 / 100)
    assert result[3, 0] == 0.0  # touching edges share no area
    assert result[3, 1] == pytest.approx(50 / 150)
    assert result[4, 0] == 0.0  # zero area box inside the reference
    assert result[5, 2] == 0.0  # empty union: 0, not NaN
    assert np.isfinite(result).all()


def test_pairwise_iou_is_symmetric_and_bounded():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 25, min_size=0.0)
    forward = box_ops.pairwise_iou(boxes, boxes).numpy()
    np.testing.assert_allclose(forward, forward.T, atol=1e-6)
    assert (forward >= 0).all() and (forward <= 1 + 1e-6).all()


def test_pairwise_iou_with_empty_set():
    result = box_ops.pairwise_iou(np.zeros([0, 4], np.float32), np.array([[0, 0, 1, 1]], np.float32))
    assert tuple(result.shape) == (0, 1)


def test_seed_002_worked_example():
    anchors = np.array([[1, 5, 17, 25], [22, 3, 38, 15], [4, 16, 22, 37], [23, 23, 38, 35]], np.float32)
    # The seed writes the first target as [20, 15, 35, 3] and orders the corners with min/max.
    raw_targets = np.array([[20, 15, 35, 3], [5, 3, 16, 30]], np.float32)
    targets = np.concatenate([np.minimum(raw_targets[:, :2], raw_targets[:, 2:]),
                              np.maximum(raw_targets[:, :2], raw_targets[:, 2:])], axis=1)
    np.testing.assert_array_equal(targets, [[20, 3, 35, 15], [5, 3, 16, 30]])
    result = box_ops.pairwise_iou(anchors, targets).numpy()
    # Hand: anchor 1 vs target 2: 11*20 / (320 + 297 - 220); anchor 2 vs target 1: 13*12 / (192 + 180 - 156);
    # anchor 3 vs target 2: 11*14 / (378 + 297 - 154).
    assert result[0, 1] == pytest.approx(220 / 397, abs=1e-6)
    assert result[1, 0] == pytest.approx(156 / 216, abs=1e-6)
    assert result[2, 1] == pytest.approx(154 / 521, abs=1e-6)
    np.testing.assert_allclose(result, [[0, 0.5542], [0.7222, 0], [0, 0.2956], [0, 0]], atol=5e-5)


# --- conversions ------------------------------------------------------------------------------


def test_conversions_hand_values():
    xywh = np.array([[10, 20, 30, 40]], np.float32)
    np.testing.assert_allclose(box_ops.xywh_to_xyxy(xywh).numpy(), [[10, 20, 40, 60]])
    np.testing.assert_allclose(box_ops.xyxy_to_xywh([[10, 20, 40, 60]]).numpy(), [[10, 20, 30, 40]])
    np.testing.assert_allclose(box_ops.xyxy_to_center([[10, 20, 40, 60]]).numpy(), [[25, 40, 30, 40]])
    np.testing.assert_allclose(box_ops.center_to_xyxy([[25, 40, 30, 40]]).numpy(), [[10, 20, 40, 60]])


def test_conversions_round_trip_with_batch_dimensions():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 24).reshape(2, 3, 4, 4)
    via_xywh = box_ops.xywh_to_xyxy(box_ops.xyxy_to_xywh(boxes)).numpy()
    via_center = box_ops.center_to_xyxy(box_ops.xyxy_to_center(boxes)).numpy()
    assert via_xywh.shape == boxes.shape and via_center.shape == boxes.shape
    np.testing.assert_allclose(via_xywh, boxes, atol=1e-4)
    np.testing.assert_allclose(via_center, boxes, atol=1e-4)
    xywh = box_ops.xyxy_to_xywh(boxes).numpy()
    np.testing.assert_allclose(box_ops.xyxy_to_xywh(box_ops.xywh_to_xyxy(xywh)).numpy(), xywh, atol=1e-4)


def test_area():
    boxes = np.array([[0, 0, 10, 5], [3, 3, 3, 8], [5, 5, 2, 2]], np.float32)
    np.testing.assert_allclose(box_ops.area(boxes).numpy(), [50, 0, 0])


# --- clip and shrink --------------------------------------------------------------------------


def test_clip_to_image():
    boxes = np.array([[-5, -3, 50, 20], [10, 10, 200, 300], [20, 20, 30, 30]], np.float32)
    # height 100, width 120
    result = box_ops.clip(boxes, 100, 120).numpy()
    np.testing.assert_allclose(result, [[0, 0, 50, 20], [10, 10, 120, 100], [20, 20, 30, 30]])


def test_shrink_keeps_centre_and_scales_size():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 10)
    factor = 0.875
    result = box_ops.shrink(boxes, factor).numpy()
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    np.testing.assert_allclose((result[:, :2] + result[:, 2:]) / 2, centre, atol=1e-4)
    np.testing.assert_allclose(result[:, 2:] - result[:, :2], size * factor, atol=1e-4)
    np.testing.assert_allclose(box_ops.shrink([[0, 0, 100, 40]], 0.5).numpy(), [[25, 10, 75, 30]])
    np.testing.assert_allclose(box_ops.shrink(boxes, 1.0).numpy(), boxes, atol=1e-5)


# --- encode / decode --------------------------------------------------------------------------


def test_box_variance_is_the_documented_vector():
    assert tuple(box_ops.BOX_VARIANCE) == (0.1, 0.1, 0.2, 0.2)


def test_encode_hand_computed():
    anchor = np.array([[0, 0, 20, 10]], np.float32)  # centre (10, 5), 20 x 10
    box = np.array([[4, 2, 44, 12]], np.float32)  # centre (24, 7), 40 x 10
    raw = [(24 - 10) / 20, (7 - 5) / 10, math.log(40 / 20), math.log(10 / 10)]
    expected = [raw[0] / 0.1, raw[1] / 0.1, raw[2] / 0.2, raw[3] / 0.2]
    np.testing.assert_allclose(box_ops.encode(box, anchor).numpy(), [expected], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box_ops.decode([expected], anchor).numpy(), box, atol=1e-4)


def test_encode_of_the_anchor_itself_is_zero():
    anchors = np.array([[1, 2, 33, 66], [10, 10, 20, 15]], np.float32)
    np.testing.assert_allclose(box_ops.encode(anchors, anchors).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(box_ops.decode(np.zeros([2, 4]), anchors).numpy(), anchors, atol=1e-5)


def test_encode_decode_round_trip_random():
    rng = np.random.default_rng(4)
    anchors = random_boxes(rng, 200, high=500.0, min_size=16.0, max_size=300.0)
    # Ground truth near each anchor (sizes within e^4 of it, as a detector would see).
    boxes = random_boxes(rng, 200, high=500.0, min_size=8.0, max_size=400.0)
    deltas = box_ops.encode(boxes, anchors)
    assert deltas.shape == (200, 4)
    np.testing.assert_allclose(box_ops.decode(deltas, anchors).numpy(), boxes, atol=1e-3)


def test_encode_decode_with_batch_dimensions():
    rng = np.random.default_rng(5)
    anchors = random_boxes(rng, 12, min_size=8.0).reshape(3, 4, 4)
    boxes = random_boxes(rng, 12, min_size=8.0).reshape(3, 4, 4)
    round_trip = box_ops.decode(box_ops.encode(boxes, anchors), anchors).numpy()
    np.testing.assert_allclose(round_trip, boxes, atol=1e-3)


def test_decode_clamps_huge_size_deltas():
    anchors = np.array([[0, 0, 10, 10]], np.float32)
    result = box_ops.decode([[0, 0, 1000, 1000]], anchors).numpy()
    assert np.isfinite(result).all()
    # The log-size delta is clamped to MAX_LOG_SIZE_DELTA.
    expected_size = 10 * math.exp(box_ops.MAX_LOG_SIZE_DELTA)
    np.testing.assert_allclose(result[0, 2:] - result[0, :2], [expected_size, expected_size], rtol=1e-4)


# --- One overlap primitive, TensorFlow and numpy twins, against hand-computed areas --------------

# (box a, box b, intersection, union), worked out by hand.
OVERLAP_CASES = [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1.0, 7.0),  # corners overlap by a 1 x 1 square
    ([0, 0, 10, 10], [0, 0, 10, 6], 60.0, 100.0),  # one inside the other
    ([0, 0, 4, 2], [4, 0, 6, 2], 0.0, 12.0),  # touching edges: no overlap
    ([0, 0, 3, 3], [5, 5, 7, 8], 0.0, 15.0),  # apart
    ([2, 2, 2, 5], [0, 0, 4, 4], 0.0, 16.0),  # zero width: area 0
    ([1.5, 0.5, 4.5, 2.5], [2.0, 1.0, 6.0, 2.0], 2.5, 7.5),  # fractional: 2.5 x 1 of 3 x 2 = 6 and 4 x 1 = 4
]


@pytest.mark.parametrize("twin", ["tensorflow", "numpy"])
def test_intersection_and_union_twins_match_hand_computed_areas(twin):
    from retinanet.detection.metrics import intersection_and_union as numpy_twin

    boxes_a = np.array([case[0] for case in OVERLAP_CASES], np.float32)
    boxes_b = np.array([case[1] for case in OVERLAP_CASES], np.float32)
    if twin == "tensorflow":
        intersection, union = (value.numpy() for value in box_ops.intersection_and_union(boxes_a, boxes_b))
    else:
        intersection, union = numpy_twin(boxes_a, boxes_b)
    np.testing.assert_allclose(intersection, [case[2] for case in OVERLAP_CASES], atol=1e-6)
    np.testing.assert_allclose(union, [case[3] for case in OVERLAP_CASES], atol=1e-6)


def test_every_iou_rests_on_the_same_hand_computed_areas():
    from retinanet.detection.losses import iou_loss
    from retinanet.detection.metrics import pairwise_iou as metric_iou

    boxes_a = np.array([case[0] for case in OVERLAP_CASES], np.float32)
    boxes_b = np.array([case[1] for case in OVERLAP_CASES], np.float32)
    expected = np.array([case[2] / case[3] for case in OVERLAP_CASES])
    np.testing.assert_allclose(box_ops.iou(boxes_a, boxes_b).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(np.diag(box_ops.pairwise_iou(boxes_a, boxes_b).numpy()), expected, rtol=1e-6)
    np.testing.assert_allclose(np.diag(metric_iou(boxes_a, boxes_b)), expected, rtol=1e-6)
    # GIoU of the first case: IoU 1/7, enclosing box 3 x 3 = 9, so GIoU = 1/7 - (9 - 7)/9.
    giou_loss = float(iou_loss(boxes_a[:1], boxes_b[:1], "giou")[0])
    assert giou_loss == pytest.approx(1.0 - (1 / 7 - 2 / 9), abs=1e-5)
