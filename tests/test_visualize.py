"""Overlays people read: TP/FP/FN marks, the legend band, and the evaluation curves' points."""

from __future__ import annotations

import numpy as np
import pytest

from retinanet.data.rsna import Record
from retinanet.evaluate.evaluation import gating_effect
from retinanet.evaluate.plots import froc_points, operating_point
from retinanet.detection.metrics import image_level_metrics, roc_curve
from retinanet.visualize import GROUND_TRUTH_COLOR, PREDICTION_COLOR, draw_boxes, fit_tile, grid, match_predictions

TRUTH = np.array([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0]])


def test_matching_is_greedy_by_score_at_iou_one_half():
    predictions = np.array([[12.0, 10.0, 50.0, 50.0],   # IoU 0.95 with the first truth
                            [10.0, 10.0, 50.0, 50.0],   # the same truth, lower score: already taken
                            [0.0, 60.0, 30.0, 90.0]])   # overlaps nothing
    is_true_positive, found = match_predictions(TRUTH, predictions, [0.5, 0.9, 0.7])
    # The 0.9 prediction takes the first truth; the 0.5 one finds it taken.
    assert is_true_positive.tolist() == [False, True, False]
    assert found.tolist() == [True, False]
    none, missed = match_predictions(TRUTH, np.zeros((0, 4)), [])
    assert none.shape == (0,) and missed.tolist() == [False, False]


def test_overlay_has_a_band_above_and_boxes_in_their_colours():
    image = np.full((100, 320), 128, np.uint8)
    plain = draw_boxes(image, TRUTH, TRUTH[:1] + 1, [0.8], legend=False)
    assert plain.shape == (100, 320, 3)
    assert tuple(plain[60, 75]) == GROUND_TRUTH_COLOR  # left edge of the second truth box (x = 60)
    assert tuple(plain[30, 11]) == PREDICTION_COLOR  # drawn last, over the first truth
    banded = draw_boxes(image, TRUTH, TRUTH[:1] + 1, [0.8], threshold=0.45, image_probability=0.9, title="p1")
    band = banded.shape[0] - 100
    assert band > 0 and banded.shape[1:] == (320, 3)
    np.testing.assert_array_equal(banded[band:], plain)  # the band covers nothing of the image
    assert (banded[:band] == GROUND_TRUTH_COLOR).all(axis=-1).any()  # the legend's "truth"
    assert (banded[:band] == PREDICTION_COLOR).all(axis=-1).any()  # and "prediction"
    fewer_lines = draw_boxes(image, TRUTH, TRUTH[:1] + 1, [0.8])
    assert fewer_lines.shape[0] < banded.shape[0]  # no threshold, probability or title line


def test_tiles_and_grid_of_unequal_images():
    tile, (boxes,) = fit_tile(np.zeros((200, 100), np.uint8), [TRUTH], 50)
    assert tile.shape == (50, 50)
    np.testing.assert_allclose(boxes, TRUTH / 4)
    mosaic = grid([np.ones((10, 20, 3), np.uint8), np.ones((12, 8, 3), np.uint8)], columns=2)
    assert mosaic.shape == (12, 40, 3) and mosaic[11, 0].sum() == 0 and mosaic[11, 20].sum() == 3


def test_roc_curve_by_hand_and_its_area_is_the_auc():
    labels = [1, 0, 1, 0, 1]
    probabilities = [0.9, 0.8, 0.8, 0.3, 0.1]
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, probabilities)
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.3, 0.1])
    np.testing.assert_allclose(true_positive_rate, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(false_positive_rate, [0, 0, 0.5, 1, 1])
    area = np.trapezoid(true_positive_rate, false_positive_rate)
    assert area == pytest.approx(image_level_metrics(labels, probabilities)["roc_auc"])


def test_operating_point_and_froc_by_hand():
    scores, hits = np.array([0.9, 0.7, 0.4, 0.2]), np.array([True, False, True, False])
    assert operating_point(scores, hits, 4, 0.5) == (0.25, 0.5)
    assert operating_point(scores, hits, 4, 0.4) == (0.5, 2 / 3)
    assert np.isnan(operating_point(scores, hits, 4, 0.95)[1])
    false_positives, sensitivity = froc_points(scores, hits, num_gt=4, num_images=2)
    np.testing.assert_allclose(false_positives, [0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(sensitivity, [0.25, 0.25, 0.5, 0.5])


def test_gating_effect_by_hand():
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    records = [Record("sick", "", box, 1), Record("healthy", "", np.zeros((0, 4)), 0),
               Record("quiet", "", np.zeros((0, 4)), 0)]
    detections = {"sick": (box, np.array([0.8])), "healthy": (box.repeat(2, 0), np.array([0.6, 0.2])),
                  "quiet": (np.zeros((0, 4)), np.zeros(0))}
    effect = gating_effect(records, detections, [0.9, 0.3, 0.1], threshold=0.5, gate_threshold=0.5)
    # At 0.5 "healthy" keeps one false positive; gating empties it: its image then is skipped.
    assert effect["removed_boxes_negative_images"] == 1 and effect["removed_boxes_positive_images"] == 0
    assert effect["images_emptied"] == 1
    assert effect["rsna_metric"] == pytest.approx(0.5)  # sick scores 1, healthy 0
    assert effect["rsna_metric_gated"] == pytest.approx(1.0)


def test_band_height_does_not_depend_on_the_text():
    """Overlays of one image size stack into one TensorBoard image summary."""
    image = np.zeros((64, 64), np.uint8)
    short = draw_boxes(image, TRUTH[:0], TRUTH[:0], [], threshold=0.3, image_probability=0.5, title="a")
    long = draw_boxes(image, TRUTH / 2, TRUTH / 2 + 1, [0.9, 0.8], threshold=0.3, image_probability=0.5,
                      title="a much longer title than the other one")
    assert short.shape == long.shape


def test_truth_alone_is_drawn_without_judgement():
    # Without predictions there is nothing to judge: no FN marks, no count line in the band.
    image = np.full((100, 320), 128, np.uint8)
    alone = draw_boxes(image, TRUTH, None)
    judged = draw_boxes(image, TRUTH, np.zeros((0, 4)))
    assert alone.shape[0] < judged.shape[0]  # the TP / FP / FN line only when judged
    band = alone.shape[0] - 100
    np.testing.assert_array_equal(alone[band:], draw_boxes(image, TRUTH, None, legend=False))
    unmarked, marked = draw_boxes(image, TRUTH, None, legend=False), draw_boxes(image, TRUTH, [], legend=False)
    assert (marked != unmarked).any()  # the "FN" text inside the missed boxes
