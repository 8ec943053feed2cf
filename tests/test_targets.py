"""Tests for retinanet.detection.targets: anchor assignment against the seed-002 example and a numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from retinanet.detection import boxes as box_ops
from retinanet.detection.anchors import generate_anchors_numpy
from retinanet.config import AnchorConfig
from retinanet.detection.targets import IGNORE, NEGATIVE, LabelEncoder

SEED_ANCHORS = np.array([[1, 5, 17, 25], [22, 3, 38, 15], [4, 16, 22, 37], [23, 23, 38, 35]], np.float32)
# Seed 002's targets after ordering the corners (the first is written [20, 15, 35, 3]); classes 5 and 3.
SEED_TARGETS = np.array([[20, 3, 35, 15], [5, 3, 16, 30]], np.float32)
SEED_CLASSES = np.array([5, 3], np.float32)


def numpy_iou(boxes_a, boxes_b):
    """[N, 4], [M, 4] -> [N, M], written independently of retinanet.detection.boxes."""
    result = np.zeros((len(boxes_a), len(boxes_b)))
    for i, a in enumerate(boxes_a.astype(np.float64)):
        for j, b in enumerate(boxes_b.astype(np.float64)):
            width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            intersection = width * height
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
            result[i, j] = intersection / union if union > 0 else 0.0
    return result


def test_named_states():
    assert NEGATIVE == -1
    assert IGNORE == -2


def test_seed_002_example():
    targets = LabelEncoder(SEED_ANCHORS)(SEED_TARGETS, SEED_CLASSES).numpy()
    assert targets.shape == (4, 5)
    # Anchor 1 overlaps target 2 (IoU 0.5542, class 3); anchor 2 target 1 (IoU 0.7222, class 5).
    np.testing.assert_array_equal(targets[:, 4], [3, 5, NEGATIVE, NEGATIVE])
    expected_first = box_ops.encode(SEED_TARGETS[1], SEED_ANCHORS[0]).numpy()
    expected_second = box_ops.encode(SEED_TARGETS[0], SEED_ANCHORS[1]).numpy()
    np.testing.assert_allclose(targets[0, :4], expected_first, atol=1e-5)
    np.testing.assert_allclose(targets[1, :4], expected_second, atol=1e-5)
    np.testing.assert_array_equal(targets[2:, :4], 0.0)


def test_seed_002_deltas_by_hand():
    targets = LabelEncoder(SEED_ANCHORS)(SEED_TARGETS, SEED_CLASSES).numpy()
    # Anchor 2: centre (30, 9), 16 x 12; target 1: centre (27.5, 9), 15 x 12.
    expected = [(27.5 - 30) / 16 / 0.1, 0.0, np.log(15 / 16) / 0.2, 0.0]
    np.testing.assert_allclose(targets[1, :4], expected, atol=1e-5)


def test_iou_between_thresholds_is_ignored():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    encoder = LabelEncoder(anchors, positive_iou=0.5, negative_iou=0.4)
    # IoU 0.45 -> IGNORE, with zero deltas.
    targets = encoder(np.array([[0, 0, 10, 4.5]], np.float32), np.array([0], np.float32)).numpy()
    np.testing.assert_array_equal(targets[:, 4], IGNORE)
    np.testing.assert_array_equal(targets[:, :4], 0.0)


@pytest.mark.parametrize("height, expected_state", [(5.0, 0.0), (4.0, IGNORE), (3.9, NEGATIVE), (6.0, 0.0)])
def test_threshold_boundaries(height, expected_state):
    """IoU >= 0.5 positive, < 0.4 negative (the paper's matching): IoU = height / 10 here."""
    anchors = np.array([[0, 0, 10, 10]], np.float32)
    targets = LabelEncoder(anchors)(np.array([[0, 0, 10, height]], np.float32), np.array([0.0])).numpy()
    assert targets[0, 4] == expected_state


def test_custom_thresholds():
    anchors = np.array([[0, 0, 10, 10]], np.float32)
    box = np.array([[0, 0, 10, 6]], np.float32)  # IoU 0.6
    strict = LabelEncoder(anchors, positive_iou=0.7, negative_iou=0.65)(box, [0]).numpy()
    assert strict[0, 4] == NEGATIVE
    loose = LabelEncoder(anchors, positive_iou=0.55, negative_iou=0.3)(box, [0]).numpy()
    assert loose[0, 4] == 0


def test_invalid_thresholds_raise():
    with pytest.raises(ValueError):
        LabelEncoder(SEED_ANCHORS, positive_iou=0.4, negative_iou=0.5)


def test_no_boxes_gives_all_negative():
    encoder = LabelEncoder(SEED_ANCHORS)
    targets = encoder(np.zeros([0, 4], np.float32), np.zeros([0], np.float32)).numpy()
    assert targets.shape == (4, 5)
    np.testing.assert_array_equal(targets[:, 4], NEGATIVE)
    np.testing.assert_array_equal(targets[:, :4], 0.0)


def test_anchor_takes_the_best_box():
    anchors = np.array([[0, 0, 10, 10]], np.float32)
    boxes = np.array([[0, 0, 10, 6], [0, 0, 10, 9]], np.float32)  # IoU 0.6 and 0.9
    targets = LabelEncoder(anchors)(boxes, np.array([1, 2], np.float32)).numpy()
    assert targets[0, 4] == 2
    np.testing.assert_allclose(targets[0, :4], box_ops.encode(boxes[1], anchors[0]).numpy(), atol=1e-5)


def test_real_anchors_small_image():
    anchors = generate_anchors_numpy((128, 128))
    box = np.array([[30, 20, 90, 110]], np.float32)  # 60 x 90, tall like RSNA boxes
    targets = LabelEncoder(anchors)(box, np.array([0], np.float32)).numpy()
    assert targets.shape == (anchors.shape[0], 5)
    assert targets.dtype == np.float32
    iou = numpy_iou(anchors, box)[:, 0]
    positive = targets[:, 4] >= 0
    assert positive.sum() > 0
    assert (iou[positive] >= 0.5 - 1e-6).all()
    np.testing.assert_array_equal(positive, iou >= 0.5)
    np.testing.assert_array_equal(targets[:, 4] == NEGATIVE, iou < 0.4)
    np.testing.assert_array_equal(targets[:, 4] == IGNORE, (iou >= 0.4) & (iou < 0.5))
    np.testing.assert_array_equal(targets[positive, 4], 0)
    # Positive deltas decode back to the box; the rest are zero.
    decoded = box_ops.decode(targets[positive, :4], anchors[positive]).numpy()
    np.testing.assert_allclose(decoded, np.repeat(box, positive.sum(), axis=0), atol=1e-3)
    np.testing.assert_array_equal(targets[~positive, :4], 0.0)


def test_real_anchors_two_boxes_two_classes():
    anchors = generate_anchors_numpy((128, 128))
    boxes = np.array([[8, 8, 40, 56], [70, 60, 120, 124]], np.float32)
    classes = np.array([0, 1], np.float32)
    targets = LabelEncoder(anchors)(boxes, classes).numpy()
    iou = numpy_iou(anchors, boxes)
    best = iou.argmax(axis=1)
    positive = iou.max(axis=1) >= 0.5
    assert (targets[:, 4] == 0).sum() > 0 and (targets[:, 4] == 1).sum() > 0
    np.testing.assert_array_equal(targets[positive, 4], classes[best[positive]])
    np.testing.assert_array_equal(targets[:, 4] >= 0, positive)


# --- low-quality matches (anchors.allow_low_quality_matches) -------------------------------------

def test_low_quality_match_makes_every_tied_best_anchor_positive():
    # The box [0, 0, 10, 3] overlaps the two identical anchors at IoU 30/100 = 0.3, the shifted one
    # at 15/115 (intersection 5 x 3, union 100 + 30 - 15) and the far one not at all.
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10], [40, 40, 50, 50]], np.float32)
    box, classes = np.array([[0, 0, 10, 3]], np.float32), np.array([7], np.float32)
    plain = LabelEncoder(anchors)(box, classes).numpy()
    np.testing.assert_array_equal(plain[:, 4], NEGATIVE)  # 0.3 < negative_iou: the box trains nothing
    matched = LabelEncoder(anchors, allow_low_quality_matches=True)(box, classes).numpy()
    np.testing.assert_array_equal(matched[:, 4], [7, 7, NEGATIVE, NEGATIVE])
    # Anchor centre (5, 5), 10 x 10; box centre (5, 1.5), 10 x 3.
    expected = [0.0, (1.5 - 5) / 10 / 0.1, 0.0, np.log(3 / 10) / 0.2]
    np.testing.assert_allclose(matched[0, :4], expected, atol=1e-5)
    np.testing.assert_allclose(matched[1, :4], expected, atol=1e-5)
    np.testing.assert_array_equal(matched[2:, :4], 0.0)


def test_low_quality_match_gives_the_anchor_to_the_box_it_is_best_for():
    # Q = [0, 0, 10, 9] overlaps X most (0.9) but is the best anchor of Y (40/90 against P's 0.4):
    # Y gains Q, and X keeps P (IoU 1).
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 9]], np.float32)
    boxes, classes = np.array([[0, 0, 10, 10], [0, 0, 10, 4]], np.float32), np.array([1, 2], np.float32)
    np.testing.assert_array_equal(LabelEncoder(anchors)(boxes, classes).numpy()[:, 4], [1, 1])
    matched = LabelEncoder(anchors, allow_low_quality_matches=True)(boxes, classes).numpy()
    np.testing.assert_array_equal(matched[:, 4], [1, 2])
    np.testing.assert_allclose(matched[1, :4], box_ops.encode(boxes[1], anchors[1]).numpy(), atol=1e-5)


def test_an_anchor_best_for_two_boxes_goes_to_the_one_it_overlaps_most():
    anchors = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    boxes, classes = np.array([[0, 0, 10, 2], [0, 0, 10, 3]], np.float32), np.array([1, 2], np.float32)
    matched = LabelEncoder(anchors, allow_low_quality_matches=True)(boxes, classes).numpy()
    np.testing.assert_array_equal(matched[:, 4], [2, NEGATIVE])  # IoU 0.3 beats 0.2


def test_a_box_no_anchor_touches_and_an_empty_image_gain_no_positive():
    encoder = LabelEncoder(SEED_ANCHORS, allow_low_quality_matches=True)
    far = encoder(np.array([[100, 100, 110, 110]], np.float32), np.array([0], np.float32)).numpy()
    np.testing.assert_array_equal(far[:, 4], NEGATIVE)
    empty = encoder(np.zeros([0, 4], np.float32), np.zeros([0], np.float32)).numpy()
    np.testing.assert_array_equal(empty[:, 4], NEGATIVE)


def oracle_targets_states(anchors, boxes, classes, allow_low_quality_matches, positive=0.5, negative=0.4):
    """Anchor states by plain loops: an independent reading of the matching rule."""
    iou = numpy_iou(anchors, boxes)
    states, matched = np.full(len(anchors), NEGATIVE), np.full(len(anchors), -1)
    for a in range(len(anchors)):
        best = int(iou[a].argmax())
        if iou[a, best] >= positive:
            states[a], matched[a] = classes[best], best
        elif iou[a, best] >= negative:
            states[a] = IGNORE
    if allow_low_quality_matches:
        owner_iou = np.full(len(anchors), -1.0)
        for b in range(len(boxes)):
            top = iou[:, b].max()
            for a in np.flatnonzero(iou[:, b] >= top - 1e-6) if top > 1e-6 else []:
                if iou[a, b] > owner_iou[a]:
                    owner_iou[a], states[a], matched[a] = iou[a, b], classes[b], b
    return states, matched


@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
def test_states_match_a_loop_oracle_on_real_anchors(allow_low_quality_matches):
    anchors = generate_anchors_numpy((128, 128), sizes=(16.0, 32.0, 64.0, 128.0, 256.0))
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 100, size=(6, 2))
    # Tall and flat boxes of 6-40 px: several have no anchor at IoU 0.5.
    sizes = rng.uniform(6, 40, size=(6, 2)) * np.array([[1, 3]] * 3 + [[3, 0.5]] * 3)
    boxes = np.concatenate([corners, np.minimum(corners + sizes, 128)], axis=1).astype(np.float32)
    classes = np.arange(6, dtype=np.float32)
    targets = LabelEncoder(anchors, allow_low_quality_matches=allow_low_quality_matches)(boxes, classes).numpy()
    states, matched = oracle_targets_states(anchors, boxes, classes, allow_low_quality_matches)
    np.testing.assert_array_equal(targets[:, 4], states)
    positive = states >= 0
    decoded = box_ops.decode(targets[positive, :4], anchors[positive]).numpy()
    np.testing.assert_allclose(decoded, boxes[matched[positive]], atol=1e-2)
    plain_positive = numpy_iou(anchors, boxes).max(axis=0) >= 0.5
    assert not plain_positive.all()  # the case the option exists for
    boxes_with_positive = np.isin(np.arange(6), matched[positive])
    assert boxes_with_positive.all() == allow_low_quality_matches


def test_statistics_positive_anchors_follow_the_option():
    from retinanet.analysis.statistics import positive_anchors

    config = AnchorConfig(sizes=(16.0, 32.0, 64.0, 128.0, 256.0))
    box = [[10, 10, 16, 40]]  # 6 x 30 px: no anchor reaches IoU 0.5
    assert len(positive_anchors(box, (128, 128), config)[0]) == 0
    forced, _ = positive_anchors(box, (128, 128), AnchorConfig(sizes=config.sizes, allow_low_quality_matches=True))
    assert len(forced) >= 1


def test_low_quality_matches_are_off_by_default():
    assert AnchorConfig().allow_low_quality_matches is False
    assert LabelEncoder(SEED_ANCHORS).allow_low_quality_matches is False
