"""Weighted box fusion, flip TTA and image-level gating in retinanet.detection.postprocess."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from ensemble_boxes import weighted_boxes_fusion as reference_fusion  # a test dependency

from retinanet.detection.anchors import generate_anchors_numpy, level_sizes
from retinanet.detection.postprocess import NetworkPass, Postprocessor, weighted_box_fusion

IMAGE_SIZE = (128, 128)
ANCHORS = generate_anchors_numpy(IMAGE_SIZE)
LEVEL_SIZES = level_sizes(IMAGE_SIZE)


def loop_iou(box_a, box_b) -> float:
    width = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    height = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    intersection = width * height
    union = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1]) + (box_b[2] - box_b[0]) * (box_b[3] - box_b[1]) - intersection
    return intersection / union if union > 0 else 0.0


def loop_fusion(boxes, scores, classes, iou_threshold=0.55, num_passes=2):
    """Plain-loop oracle of ensemble_boxes.weighted_boxes_fusion (conf_type "avg", equal weights)."""
    clusters = []  # each: dict(members=[(box, score)], label)
    for index in sorted(range(len(scores)), key=lambda i: -scores[i]):
        box, score, label = np.asarray(boxes[index], np.float64), float(scores[index]), int(classes[index])
        best, best_iou = None, iou_threshold
        for cluster in clusters:
            if cluster["label"] != label:
                continue
            weights = np.array([s for _, s in cluster["members"]])
            fused = sum(s * b for b, s in cluster["members"]) / weights.sum()
            overlap = loop_iou(fused, box)
            if overlap > best_iou:
                best, best_iou = cluster, overlap
        if best is None:
            clusters.append({"members": [(box, score)], "label": label})
        else:
            best["members"].append((box, score))
    results = []
    for cluster in clusters:
        weights = np.array([s for _, s in cluster["members"]])
        fused = sum(s * b for b, s in cluster["members"]) / weights.sum()
        count = len(cluster["members"])
        results.append((fused, weights.mean() * min(count, num_passes) / num_passes, cluster["label"]))
    results.sort(key=lambda item: -item[1])
    return results


def run_fusion(boxes, scores, classes=None, **kwargs):
    boxes = np.asarray(boxes, np.float32).reshape(1, -1, 4)
    scores = np.asarray(scores, np.float32).reshape(1, -1)
    classes = np.zeros(scores.shape, np.int32) if classes is None else np.asarray(classes, np.int32).reshape(1, -1)
    valid = np.ones(scores.shape, bool)
    fused_boxes, fused_scores, fused_classes, count = weighted_box_fusion(boxes, scores, classes, valid, **kwargs)
    count = int(count[0])
    return fused_boxes.numpy()[0, :count], fused_scores.numpy()[0, :count], fused_classes.numpy()[0, :count], count


def test_two_agreeing_boxes_fuse_to_their_weighted_mean():
    # IoU of the two boxes: 90 x 100 / (100 x 100 + 100 x 100 - 9000) = 0.818 > 0.55.
    boxes, scores = [[0, 0, 100, 100], [10, 0, 110, 100]], [0.9, 0.3]
    fused_boxes, fused_scores, _, count = run_fusion(boxes, scores)
    assert count == 1
    # x1 = (0.9 * 0 + 0.3 * 10) / 1.2 = 2.5, x2 = 102.5; score = mean 0.6 * min(2, 2) / 2.
    np.testing.assert_allclose(fused_boxes[0], [2.5, 0, 102.5, 100], atol=1e-4)
    np.testing.assert_allclose(fused_scores, [0.6], atol=1e-6)


def test_a_box_seen_by_one_pass_keeps_half_its_score():
    boxes, scores = [[0, 0, 100, 100], [200, 200, 260, 300]], [0.8, 0.4]
    fused_boxes, fused_scores, _, count = run_fusion(boxes, scores)
    assert count == 2
    np.testing.assert_allclose(fused_boxes, boxes, atol=1e-5)
    np.testing.assert_allclose(fused_scores, [0.4, 0.2], atol=1e-6)


def test_overlap_at_the_threshold_does_not_match():
    boxes = [[0, 0, 100, 100], [25, 0, 125, 100]]  # IoU 7500 / 12500 = 0.6: a match needs IoU > threshold
    assert run_fusion(boxes, [0.5, 0.5], iou_threshold=0.6)[3] == 2
    assert run_fusion(boxes, [0.5, 0.5], iou_threshold=0.59)[3] == 1


def test_classes_never_fuse():
    boxes = [[0, 0, 100, 100], [0, 0, 100, 100]]
    fused_boxes, fused_scores, fused_classes, count = run_fusion(boxes, [0.9, 0.7], classes=[0, 1])
    assert count == 2
    assert sorted(fused_classes.tolist()) == [0, 1]
    np.testing.assert_allclose(fused_scores, [0.45, 0.35], atol=1e-6)


def test_padding_rows_are_ignored_and_outputs_are_zero_padded():
    boxes = np.array([[[0, 0, 100, 100], [5, 0, 105, 100], [300, 300, 400, 400]]], np.float32)
    scores = np.array([[0.6, 0.4, 0.99]], np.float32)
    valid = np.array([[True, True, False]])
    fused_boxes, fused_scores, _, count = weighted_box_fusion(boxes, scores, np.zeros((1, 3), np.int32), valid)
    assert int(count[0]) == 1
    np.testing.assert_allclose(fused_boxes.numpy()[0, 0], [2.0, 0, 102.0, 100], atol=1e-4)
    np.testing.assert_array_equal(fused_boxes.numpy()[0, 1:], 0.0)
    np.testing.assert_array_equal(fused_scores.numpy()[0, 1:], 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_plain_loop_on_random_clusters(seed):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(50, 450, size=(4, 2))
    boxes, scores, classes = [], [], []
    for _ in range(14):
        centre = centres[rng.integers(len(centres))] + rng.normal(0, 8, 2)
        size = rng.uniform(40, 120, 2)
        boxes.append(np.concatenate([centre - size / 2, centre + size / 2]))
        scores.append(rng.uniform(0.05, 1.0))
        classes.append(rng.integers(2))
    fused_boxes, fused_scores, fused_classes, count = run_fusion(boxes, scores, classes)
    expected = loop_fusion(boxes, scores, classes)
    assert count == len(expected)
    np.testing.assert_allclose(fused_scores, [item[1] for item in expected], atol=1e-5)
    np.testing.assert_allclose(fused_boxes, np.stack([item[0] for item in expected]), atol=1e-3)
    assert fused_classes.tolist() == [item[2] for item in expected]


def random_passes(rng, num_passes: int, num_clusters: int = 4, boxes_per_pass: int = 6):
    """Per pass: boxes [n, 4] in normalised coordinates inside (0, 1), scores [n], classes [n],
    scattered around a few shared objects, as the passes of one image would be."""
    centres = rng.uniform(0.2, 0.8, size=(num_clusters, 2))
    half_sizes = rng.uniform(0.04, 0.15, size=(num_clusters, 2))
    cluster_classes = rng.integers(0, 2, num_clusters)
    passes = []
    for _ in range(num_passes):
        count = int(rng.integers(1, boxes_per_pass + 1))
        cluster = rng.integers(num_clusters, size=count)
        centre = centres[cluster] + rng.normal(0, 0.015, (count, 2))
        half = half_sizes[cluster] * rng.uniform(0.8, 1.2, (count, 2))
        boxes = np.clip(np.concatenate([centre - half, centre + half], axis=1), 0.001, 0.999)
        classes = np.where(rng.uniform(size=count) < 0.1, 1 - cluster_classes[cluster], cluster_classes[cluster])
        passes.append((boxes, rng.uniform(0.05, 1.0, count), classes))
    return passes


@pytest.mark.parametrize("num_passes", [1, 2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_matches_the_ensemble_boxes_package(seed, num_passes):
    """Against ensemble_boxes.weighted_boxes_fusion (conf_type "avg", equal weights, no score
    threshold) on boxes it accepts unchanged: inside [0, 1] with a positive area. Intended
    differences outside that: ensemble-boxes clips coordinates to [0, 1], swaps reversed corners
    and drops zero-area boxes (it expects normalised boxes from any model), where this fusion
    takes the decoder's valid pixel boxes as they are; and it leaves the order of equal scores
    unspecified, where this fusion keeps the input order."""
    passes = random_passes(np.random.default_rng(seed), num_passes)
    expected_boxes, expected_scores, expected_classes = reference_fusion(
        [boxes.tolist() for boxes, _, _ in passes], [scores.tolist() for _, scores, _ in passes],
        [classes.tolist() for _, _, classes in passes], iou_thr=0.55, skip_box_thr=0.0, conf_type="avg")
    pooled_boxes = np.concatenate([boxes for boxes, _, _ in passes]).reshape(-1, 4)
    pooled_scores = np.concatenate([scores for _, scores, _ in passes])
    pooled_classes = np.concatenate([classes for _, _, classes in passes])
    fused_boxes, fused_scores, fused_classes, count = run_fusion(pooled_boxes, pooled_scores, pooled_classes,
                                                                 num_passes=num_passes)
    assert count == len(expected_scores)
    np.testing.assert_allclose(fused_scores, expected_scores, atol=1e-6)
    np.testing.assert_allclose(fused_boxes, expected_boxes, atol=1e-6)
    assert fused_classes.tolist() == expected_classes.astype(int).tolist()


def test_the_ensemble_boxes_comparison_sees_fusion_across_passes():
    """The random cases above are not trivially one box per cluster."""
    fused_counts, box_counts = [], []
    for seed in range(8):
        passes = random_passes(np.random.default_rng(seed), 2)
        boxes = np.concatenate([boxes for boxes, _, _ in passes])
        box_counts.append(len(boxes))
        fused_counts.append(run_fusion(boxes, np.concatenate([s for _, s, _ in passes]),
                                       np.concatenate([c for _, _, c in passes]))[3])
    assert sum(fused_counts) < 0.8 * sum(box_counts)


def test_works_in_a_graph_on_a_batch():
    boxes = tf.constant([[[0, 0, 100, 100], [10, 0, 110, 100]], [[0, 0, 10, 10], [50, 50, 60, 60]]], tf.float32)
    scores = tf.constant([[0.9, 0.3], [0.5, 0.7]])
    fusion = tf.function(lambda *args: weighted_box_fusion(*args))
    _, fused_scores, _, count = fusion(boxes, scores, tf.zeros([2, 2], tf.int32), tf.ones([2, 2], tf.bool))
    assert count.numpy().tolist() == [1, 2]
    np.testing.assert_allclose(fused_scores.numpy(), [[0.6, 0.0], [0.35, 0.25]], atol=1e-6)


# --- Postprocessor: flip TTA and image gating ---------------------------------------------------


def best_anchor(box) -> int:
    overlaps = [loop_iou(anchor, box) for anchor in ANCHORS]
    return int(np.argmax(overlaps))


def predictions_with(box, logit: float) -> np.ndarray:
    """[1, A, 5]: one anchor predicting `box` (input pixels) with `logit`, the rest far below threshold."""
    from retinanet.detection import boxes as box_ops

    predictions = np.zeros([1, len(ANCHORS), 5], np.float32)
    predictions[..., 4] = -20.0
    anchor = best_anchor(box)
    predictions[0, anchor, :4] = box_ops.encode(np.asarray(box, np.float32), ANCHORS[anchor]).numpy()
    predictions[0, anchor, 4] = logit
    return predictions


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + np.exp(-value))


def test_flip_tta_mirrors_the_second_pass_back_and_fuses():
    box = [20.0, 30.0, 60.0, 100.0]
    mirrored = [128 - 64.0, 30.0, 128 - 24.0, 100.0]  # the same opacity seen 4 px further right
    postprocessor = Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE, flip_tta=True, max_detections=5)
    passes = [NetworkPass(tf.constant(predictions_with(box, 2.0))),
              NetworkPass(tf.constant(predictions_with(mirrored, 0.0)), mirrored=True)]
    result = postprocessor(passes, tf.constant([0.5]), tf.constant([[256, 256]]))
    assert int(result["num_detections"][0]) == 1
    high, low = sigmoid(2.0), sigmoid(0.0)
    x1 = (high * 20.0 + low * 24.0) / (high + low)
    x2 = (high * 60.0 + low * 64.0) / (high + low)
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], np.array([x1, 30.0, x2, 100.0]) / 0.5, atol=0.1)
    assert float(result["scores"][0, 0]) == pytest.approx((high + low) / 2, abs=1e-5)
    assert result["boxes"].shape == (1, 5, 4)


@pytest.mark.parametrize("gating, probability, expected_count, expected_factor", [
    ("none", 0.2, 1, 1.0), ("gate", 0.2, 0, 0.0), ("gate", 0.7, 1, 1.0), ("multiply", 0.2, 1, 0.2)])
def test_image_gating(gating, probability, expected_count, expected_factor):
    postprocessor = Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE, image_gating=gating, image_gate_threshold=0.5)
    passes = [NetworkPass(tf.constant(predictions_with([20.0, 30.0, 60.0, 100.0], 1.0)), tf.constant([probability]))]
    result = postprocessor(passes, tf.constant([1.0]), tf.constant([[128, 128]]))
    assert int(result["num_detections"][0]) == expected_count
    assert float(result["scores"][0, 0]) == pytest.approx(sigmoid(1.0) * expected_factor, abs=1e-6)
    if expected_count == 0:
        np.testing.assert_array_equal(result["boxes"].numpy(), 0.0)


def test_unknown_gating_is_an_error():
    with pytest.raises(ValueError, match="image_gating"):
        Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE, image_gating="sometimes")


class TwoPassModel:
    """Stand-in model: fixed predictions for the original and mirrored halves of the batch."""

    def __init__(self, original, mirrored, logits):
        self.original, self.mirrored, self.logits = original, mirrored, logits

    def __call__(self, images, training=False):
        half = images.shape[0] // 2
        return {"predictions": tf.concat([self.original] * half + [self.mirrored] * half, 0),
                "image_logits": tf.constant(self.logits, tf.float32)[:, None]}


def test_detect_runs_both_passes_and_averages_the_image_probability():
    box = [20.0, 30.0, 60.0, 100.0]
    model = TwoPassModel(predictions_with(box, 2.0), predictions_with([68.0, 30.0, 108.0, 100.0], 2.0),
                         [1.0, -1.0])
    postprocessor = Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE, flip_tta=True, image_gating="multiply")
    result = postprocessor.detect([model], tf.zeros([1, 128, 128, 3]), tf.constant([1.0]), tf.constant([[128, 128]]))
    assert float(result["image_probabilities"][0]) == pytest.approx(0.5, abs=1e-6)
    assert int(result["num_detections"][0]) == 1
    assert float(result["scores"][0, 0]) == pytest.approx(sigmoid(2.0) * 0.5, abs=1e-5)
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], box, atol=0.1)


def test_gating_without_an_image_head_is_an_error():
    def model(images, training=False):
        return {"predictions": tf.constant(predictions_with([20.0, 30.0, 60.0, 100.0], 1.0))}

    postprocessor = Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE, image_gating="gate")
    with pytest.raises(ValueError, match="image head"):
        postprocessor.detect([model], tf.zeros([1, 128, 128, 3]), tf.constant([1.0]), tf.constant([[128, 128]]))


def test_an_ensemble_fuses_every_pass_of_every_model():
    # Two models, flip TTA: four passes. Three see the box (two of them mirrored); one sees nothing.
    box = [20.0, 30.0, 60.0, 100.0]
    mirrored = [128 - 60.0, 30.0, 128 - 20.0, 100.0]
    nothing = predictions_with(box, -20.0)
    models = [TwoPassModel(predictions_with(box, 2.0), predictions_with(mirrored, 2.0), [0.0, 0.0]),
              TwoPassModel(predictions_with(box, 0.0), nothing, [2.0, 2.0])]
    postprocessor = Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE, flip_tta=True)
    result = postprocessor.detect(models, tf.zeros([1, 128, 128, 3]), tf.constant([1.0]), tf.constant([[128, 128]]))
    assert int(result["num_detections"][0]) == 1
    members = [sigmoid(2.0), sigmoid(2.0), sigmoid(0.0)]
    # ensemble-boxes "avg": mean member score times min(members, passes) / passes.
    assert float(result["scores"][0, 0]) == pytest.approx(np.mean(members) * 3 / 4, abs=1e-5)
    np.testing.assert_allclose(result["boxes"].numpy()[0, 0], box, atol=0.1)
    expected = np.mean([sigmoid(0.0), sigmoid(0.0), sigmoid(2.0), sigmoid(2.0)])
    assert float(result["image_probabilities"][0]) == pytest.approx(expected, abs=1e-6)


def test_passes_with_and_without_image_probabilities_are_an_error():
    postprocessor = Postprocessor(ANCHORS, LEVEL_SIZES, IMAGE_SIZE)
    predictions = tf.constant(predictions_with([20.0, 30.0, 60.0, 100.0], 1.0))
    with pytest.raises(ValueError, match="image head"):
        postprocessor([NetworkPass(predictions, tf.constant([0.5])), NetworkPass(predictions)],
                      tf.constant([1.0]), tf.constant([[128, 128]]))
