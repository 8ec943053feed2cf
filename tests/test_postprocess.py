"""Tests for retinanet.detection.postprocess: known boxes encoded against real anchors come back out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from retinanet.detection import boxes as box_ops
from retinanet.detection.anchors import generate_anchors_numpy, level_sizes
from retinanet.detection.postprocess import NetworkPass, Postprocessor, keep_above_in_graph

IMAGE_SIZE = (128, 128)
ANCHORS = generate_anchors_numpy(IMAGE_SIZE)
LEVEL_SIZES = level_sizes(IMAGE_SIZE)
LOW_LOGIT = -20.0


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def best_anchor(box, exclude=()):
    """Index of the anchor with the largest IoU with `box` (numpy, independent of the module)."""
    box = np.asarray(box, np.float64)
    width = np.clip(np.minimum(ANCHORS[:, 2], box[2]) - np.maximum(ANCHORS[:, 0], box[0]), 0, None)
    height = np.clip(np.minimum(ANCHORS[:, 3], box[3]) - np.maximum(ANCHORS[:, 1], box[1]), 0, None)
    intersection = width * height
    areas = (ANCHORS[:, 2] - ANCHORS[:, 0]) * (ANCHORS[:, 3] - ANCHORS[:, 1])
    iou = intersection / (areas + (box[2] - box[0]) * (box[3] - box[1]) - intersection)
    iou[list(exclude)] = -1
    return int(np.argmax(iou))


def make_predictions(entries, num_classes=1, batch=1):
    """entries: per image, a list of (anchor index, box, logit, class) -> [B, A, 4 + K] predictions."""
    predictions = np.zeros([batch, len(ANCHORS), 4 + num_classes], np.float32)
    predictions[..., 4:] = LOW_LOGIT
    for image, image_entries in enumerate(entries):
        for anchor_index, box, logit, class_id in image_entries:
            deltas = box_ops.encode(np.asarray(box, np.float32), ANCHORS[anchor_index]).numpy()
            predictions[image, anchor_index, :4] = deltas
            predictions[image, anchor_index, 4 + class_id] = logit
    return predictions


def make_postprocessor(**kwargs):
    """callable(predictions, scales[, original_sizes]) -> the result of one plain pass; the originals
    default to the whole input divided by the scale, so that only the input edge clips."""
    postprocessor = Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE, **kwargs)

    def run(predictions, scales, original_sizes=None):
        if original_sizes is None:
            original_sizes = np.ceil(np.array(IMAGE_SIZE)[None, :] / np.asarray(scales)[:, None])
        return postprocessor([NetworkPass(tf.constant(predictions))], tf.constant(scales, tf.float32),
                             tf.constant(np.asarray(original_sizes), tf.int32))

    return run


def test_recovers_boxes_in_original_pixels_sorted():
    box_a = [10.0, 12.0, 50.0, 70.0]
    box_b = [70.0, 60.0, 120.0, 124.0]
    predictions = make_predictions([[(best_anchor(box_a), box_a, 1.0, 0), (best_anchor(box_b), box_b, 3.0, 0)]])
    scale = 0.25  # original image 512 px letterboxed to 128 px
    result = make_postprocessor(max_detections=10)(predictions, np.array([scale], np.float32))
    assert int(result["num_detections"][0]) == 2
    boxes = result["boxes"].numpy()[0]
    scores = result["scores"].numpy()[0]
    np.testing.assert_allclose(boxes[0], np.array(box_b) / scale, atol=0.05)
    np.testing.assert_allclose(boxes[1], np.array(box_a) / scale, atol=0.05)
    np.testing.assert_allclose(scores[:2], [sigmoid(3.0), sigmoid(1.0)], rtol=1e-5)
    assert result["classes"].numpy()[0, :2].tolist() == [0, 0]
    # Padding rows are zero.
    np.testing.assert_array_equal(boxes[2:], 0.0)
    np.testing.assert_array_equal(scores[2:], 0.0)
    assert result["boxes"].shape == (1, 10, 4)
    assert result["scores"].shape == (1, 10)
    assert result["classes"].shape == (1, 10)


def test_scores_are_sorted_descending():
    boxes = [[4.0, 4.0, 30.0, 40.0], [40.0, 4.0, 70.0, 44.0], [80.0, 4.0, 120.0, 50.0], [10.0, 70.0, 60.0, 120.0]]
    logits = [0.5, 4.0, -1.0, 2.0]
    entries = [(best_anchor(box), box, logit, 0) for box, logit in zip(boxes, logits)]
    result = make_postprocessor()(make_predictions([entries]), np.array([1.0], np.float32))
    count = int(result["num_detections"][0])
    assert count == 4
    scores = result["scores"].numpy()[0, :count]
    assert list(scores) == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, sorted([sigmoid(x) for x in logits], reverse=True), rtol=1e-5)
    order = np.argsort(logits)[::-1]
    np.testing.assert_allclose(result["boxes"].numpy()[0, :count], np.array(boxes)[order], atol=0.05)


def test_nms_merges_near_duplicates_keeps_separated_boxes():
    box = [20.0, 20.0, 60.0, 84.0]
    near_duplicate = [21.0, 21.0, 61.0, 85.0]  # IoU ~ 0.95 with `box`
    separate = [80.0, 10.0, 120.0, 60.0]
    first = best_anchor(box)
    second = best_anchor(near_duplicate, exclude=[first])
    assert first != second
    entries = [(first, box, 3.0, 0), (second, near_duplicate, 2.0, 0), (best_anchor(separate), separate, 1.0, 0)]
    result = make_postprocessor(nms_iou=0.5)(make_predictions([entries]), np.array([1.0], np.float32))
    assert int(result["num_detections"][0]) == 2
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], box, atol=0.05)
    np.testing.assert_allclose(result["boxes"].numpy()[0, 1], separate, atol=0.05)
    np.testing.assert_allclose(result["scores"].numpy()[0, :2], [sigmoid(3.0), sigmoid(1.0)], rtol=1e-5)


def test_nms_threshold_above_overlap_keeps_both():
    box = [20.0, 20.0, 60.0, 84.0]
    overlapping = [30.0, 20.0, 70.0, 84.0]  # IoU 30 / 50 = 0.6
    first = best_anchor(box)
    second = best_anchor(overlapping, exclude=[first])
    entries = [(first, box, 3.0, 0), (second, overlapping, 2.0, 0)]
    predictions = make_predictions([entries])
    kept = make_postprocessor(nms_iou=0.7)(predictions, np.array([1.0], np.float32))
    merged = make_postprocessor(nms_iou=0.5)(predictions, np.array([1.0], np.float32))
    assert int(kept["num_detections"][0]) == 2
    assert int(merged["num_detections"][0]) == 1


def test_score_threshold_drops_low_scores():
    boxes = [[4.0, 4.0, 30.0, 40.0], [60.0, 60.0, 100.0, 120.0]]
    entries = [(best_anchor(boxes[0]), boxes[0], 2.0, 0), (best_anchor(boxes[1]), boxes[1], -1.0, 0)]
    # sigmoid(-1) = 0.27: kept at threshold 0.05, dropped at 0.5.
    predictions = make_predictions([entries])
    low = make_postprocessor(candidate_score_threshold=0.05)(predictions, np.array([1.0], np.float32))
    high = make_postprocessor(candidate_score_threshold=0.5)(predictions, np.array([1.0], np.float32))
    assert int(low["num_detections"][0]) == 2
    assert int(high["num_detections"][0]) == 1
    np.testing.assert_allclose(high["boxes"].numpy()[0, 0], boxes[0], atol=0.05)
    assert float(high["scores"][0, 1]) == 0.0


def test_nothing_above_threshold_gives_empty_padded_output():
    predictions = make_predictions([[]])
    result = make_postprocessor(max_detections=5)(predictions, np.array([1.0], np.float32))
    assert int(result["num_detections"][0]) == 0
    np.testing.assert_array_equal(result["boxes"].numpy(), 0.0)
    np.testing.assert_array_equal(result["scores"].numpy(), 0.0)


def test_max_detections_caps_the_output():
    boxes = [[4.0 + 30 * i, 4.0 + 30 * j, 28.0 + 30 * i, 36.0 + 30 * j] for i in range(4) for j in range(2)]
    logits = [float(k) for k in range(len(boxes))]
    entries = [(best_anchor(box), box, logit, 0) for box, logit in zip(boxes, logits)]
    result = make_postprocessor(max_detections=3)(make_predictions([entries]), np.array([1.0], np.float32))
    assert result["boxes"].shape == (1, 3, 4)
    assert int(result["num_detections"][0]) == 3
    np.testing.assert_allclose(result["scores"].numpy()[0], [sigmoid(7.0), sigmoid(6.0), sigmoid(5.0)], rtol=1e-5)
    np.testing.assert_allclose(result["boxes"].numpy()[0], [boxes[7], boxes[6], boxes[5]], atol=0.05)


def test_box_shrink_scales_about_the_centre():
    box = [20.0, 10.0, 60.0, 90.0]
    predictions = make_predictions([[(best_anchor(box), box, 3.0, 0)]])
    scale = 0.5
    result = make_postprocessor(box_shrink=0.5)(predictions, np.array([scale], np.float32))
    # Centre (40, 50), size 40 x 80 -> 20 x 40 in input pixels, then / 0.5.
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], np.array([30.0, 30.0, 50.0, 70.0]) / scale, atol=0.05)


def test_boxes_are_clipped_to_the_image():
    box = [100.0, 90.0, 150.0, 140.0]  # beyond the 128 px input
    predictions = make_predictions([[(best_anchor(box), box, 3.0, 0)]])
    result = make_postprocessor()(predictions, np.array([1.0], np.float32))
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], [100.0, 90.0, 128.0, 128.0], atol=0.05)


def test_boxes_are_clipped_to_the_original_image_not_the_padding():
    # A 256 x 200 (height x width) original letterboxed at scale 0.5 fills 128 x 100 of the input;
    # the 28 px right of it are padding, where the network may still put a box edge.
    box = [80.0, 10.0, 120.0, 60.0]
    predictions = make_predictions([[(best_anchor(box), box, 3.0, 0)]])
    result = make_postprocessor()(predictions, np.array([0.5], np.float32), np.array([[256, 200]]))
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], [160.0, 20.0, 200.0, 120.0], atol=0.1)


def test_threshold_in_graph_keeps_the_prefix_above_it():
    entries = [(best_anchor(box), box, logit, 0) for box, logit in
               [([10.0, 10.0, 40.0, 60.0], 3.0), ([70.0, 60.0, 120.0, 124.0], 0.0), ([60.0, 5.0, 90.0, 40.0], -1.0)]]
    result = make_postprocessor(max_detections=4)(make_predictions([entries]), np.array([1.0], np.float32))
    assert int(result["num_detections"][0]) == 3
    kept = keep_above_in_graph(result, 0.4)  # sigmoid: 0.95, 0.5, 0.27
    assert int(kept["num_detections"][0]) == 2
    np.testing.assert_allclose(kept["scores"].numpy()[0], [sigmoid(3.0), sigmoid(0.0), 0.0, 0.0], rtol=1e-5)
    np.testing.assert_array_equal(kept["boxes"].numpy()[0, 2:], 0.0)
    np.testing.assert_allclose(kept["boxes"].numpy()[0, :2], result["boxes"].numpy()[0, :2])


def test_batch_with_per_image_scales():
    box_a = [10.0, 12.0, 50.0, 70.0]
    box_b = [70.0, 60.0, 120.0, 124.0]
    predictions = make_predictions([[(best_anchor(box_a), box_a, 2.0, 0)], [(best_anchor(box_b), box_b, 2.0, 0)]],
                                   batch=2)
    result = make_postprocessor()(predictions, np.array([0.5, 0.25], np.float32))
    assert result["num_detections"].numpy().tolist() == [1, 1]
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], np.array(box_a) / 0.5, atol=0.05)
    np.testing.assert_allclose(result["boxes"].numpy()[1, 0], np.array(box_b) / 0.25, atol=0.1)


def test_class_aware_nms_and_class_ids():
    box = [20.0, 20.0, 60.0, 84.0]
    first = best_anchor(box)
    second = best_anchor(box, exclude=[first])
    # The same box predicted for two different classes: both survive class-aware NMS.
    entries = [(first, box, 3.0, 0), (second, box, 2.0, 1)]
    result = make_postprocessor(num_classes=2)(make_predictions([entries], num_classes=2), np.array([1.0], np.float32))
    assert int(result["num_detections"][0]) == 2
    assert result["classes"].numpy()[0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(result["scores"].numpy()[0, :2], [sigmoid(3.0), sigmoid(2.0)], rtol=1e-5)


def test_predictions_on_a_higher_level_are_found():
    box = [8.0, 8.0, 120.0, 120.0]  # large: best matched above P3
    anchor_index = best_anchor(box)
    assert anchor_index >= LEVEL_SIZES[0]
    result = make_postprocessor(pre_nms_top_k=5)(make_predictions([[(anchor_index, box, 3.0, 0)]]),
                                                 np.array([1.0], np.float32))
    assert int(result["num_detections"][0]) == 1
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], box, atol=0.05)


@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_single_detection_score_is_sigmoid(scale):
    box = [30.0, 30.0, 70.0, 100.0]
    result = make_postprocessor()(make_predictions([[(best_anchor(box), box, 0.3, 0)]]),
                                  np.array([scale], np.float32))
    assert float(result["scores"][0, 0]) == pytest.approx(sigmoid(0.3), rel=1e-5)
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], np.array(box) / scale, rtol=1e-4, atol=0.05)


def test_box_voting_averages_the_overlapping_candidates_by_score():
    # Three candidates of one opacity and one elsewhere. NMS keeps the best of the three; voting
    # replaces it with the score-weighted mean of those overlapping it at IoU >= 0.5 (the second:
    # IoU 30 / 50 = 0.6, counted; the third: IoU 20 / 60 = 0.33, not), leaving the far box alone.
    box, shifted, far_off = [20.0, 20.0, 60.0, 84.0], [30.0, 20.0, 70.0, 84.0], [40.0, 20.0, 80.0, 84.0]
    separate = [90.0, 10.0, 120.0, 50.0]
    anchors = []
    for candidate in (box, shifted, far_off, separate):
        anchors.append(best_anchor(candidate, exclude=anchors))
    logits = [3.0, 1.0, 2.0, 0.5]
    entries = [(anchor, candidate, logit, 0)
               for anchor, candidate, logit in zip(anchors, (box, shifted, far_off, separate), logits)]
    predictions = make_predictions([entries])
    voted = make_postprocessor(nms_iou=0.5, box_voting_iou=0.5)(predictions, np.array([1.0], np.float32))
    plain = make_postprocessor(nms_iou=0.5)(predictions, np.array([1.0], np.float32))
    weights = np.array([sigmoid(3.0), sigmoid(1.0)])
    expected = (weights[:, None] * np.array([box, shifted])).sum(axis=0) / weights.sum()
    # NMS keeps `box` (and `far_off`, IoU 0.33 with it; `separate`): the same boxes and scores, voted.
    assert int(voted["num_detections"][0]) == int(plain["num_detections"][0]) == 3
    np.testing.assert_allclose(voted["scores"].numpy(), plain["scores"].numpy())
    np.testing.assert_allclose(plain["boxes"].numpy()[0, 0], box, atol=0.05)
    np.testing.assert_allclose(voted["boxes"].numpy()[0, 0], expected, atol=0.05)
    # `far_off` is voted with the shifted box (IoU 30 / 50 = 0.6) and itself; `separate` alone.
    far_weights = np.array([sigmoid(2.0), sigmoid(1.0)])
    np.testing.assert_allclose(voted["boxes"].numpy()[0, 1],
                               (far_weights[:, None] * np.array([far_off, shifted])).sum(axis=0) / far_weights.sum(),
                               atol=0.05)
    np.testing.assert_allclose(voted["boxes"].numpy()[0, 2], separate, atol=0.05)
