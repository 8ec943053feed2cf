"""Metrics against plain-loop oracles, hand-computed cases and pycocotools."""

from __future__ import annotations

import contextlib
import io
import itertools

import numpy as np
from pycocotools.coco import COCO  # a test dependency (the `test` extra): never skipped
from pycocotools.cocoeval import COCOeval
import pytest

from retinanet.detection.metrics import (
    IOU_THRESHOLDS,
    average_precision,
    coco_map,
    image_level_metrics,
    image_score_table,
    pairwise_iou,
    precision_recall_curve,
    rsna_image_scores,
    rsna_metric,
    threshold_sweep,
)


# --- oracles: the competition's reference kernel, written as plain loops ---------------------


def loop_iou(box_a, box_b) -> float:
    intersection_width = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
    intersection_height = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    if intersection_width <= 0 or intersection_height <= 0:
        return 0.0
    intersection = intersection_width * intersection_height
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return intersection / (area_a + area_b - intersection)


def loop_image_score(gt_boxes, pred_boxes, pred_scores):
    """Mean over thresholds, or None when skipped: the Kaggle kernel's algorithm."""
    if len(gt_boxes) == 0 and len(pred_boxes) == 0:
        return None
    order = sorted(range(len(pred_boxes)), key=lambda j: -pred_scores[j])  # stable
    ranked = [pred_boxes[j] for j in order]
    per_threshold = []
    for threshold in IOU_THRESHOLDS:
        used, true_positives, false_negatives = set(), 0, 0
        for gt in gt_boxes:
            for j, pred in enumerate(ranked):
                if j not in used and loop_iou(gt, pred) >= threshold:
                    used.add(j)
                    true_positives += 1
                    break
            else:
                false_negatives += 1
        false_positives = len(ranked) - len(used)
        per_threshold.append(true_positives / (true_positives + false_positives + false_negatives))
    return float(np.mean(per_threshold))


def random_case(rng):
    """Integer boxes of 8-14 px jittered around one spot, so IoUs spread across 0.4-0.75 and
    often land exactly on a threshold; scores from a few values, so ties occur."""
    def boxes(count):
        corners = rng.integers(0, 5, size=(count, 2))
        sizes = rng.integers(8, 15, size=(count, 2))
        return np.concatenate([corners, corners + sizes], axis=1).astype(np.float64)
    gt_boxes = boxes(int(rng.integers(0, 5)))
    pred_boxes = boxes(int(rng.integers(0, 5)))
    pred_scores = rng.choice([0.2, 0.5, 0.7, 0.9], size=len(pred_boxes))
    return gt_boxes, pred_boxes, pred_scores


def random_data_set(seed, num_images=200):
    rng = np.random.default_rng(seed)
    ground_truth, predictions = {}, {}
    for index in range(num_images):
        gt_boxes, pred_boxes, pred_scores = random_case(rng)
        ground_truth[f"patient{index}"] = gt_boxes
        if len(pred_boxes) or rng.random() < 0.5:  # also test patients left out of predictions
            predictions[f"patient{index}"] = (pred_boxes, pred_scores)
    return ground_truth, predictions


# --- RSNA metric --------------------------------------------------------------------------------


def test_iou_thresholds_are_the_competition_values():
    assert IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


def test_pairwise_iou_matches_loop():
    rng = np.random.default_rng(1)
    boxes_a = random_case(rng)[0].reshape(-1, 4)
    boxes_b = np.array([[0, 0, 10, 10], [2, 3, 12, 11], [50, 50, 60, 60]], np.float64)
    expected = [[loop_iou(a, b) for b in boxes_b] for a in boxes_a]
    np.testing.assert_array_equal(pairwise_iou(boxes_a, boxes_b), np.array(expected).reshape(len(boxes_a), 3))


def test_image_scores_match_the_reference_loop_on_random_cases():
    rng = np.random.default_rng(0)
    counted = 0
    for _ in range(300):
        gt_boxes, pred_boxes, pred_scores = random_case(rng)
        expected = loop_image_score(gt_boxes, pred_boxes, pred_scores)
        scores = rsna_image_scores(gt_boxes, pred_boxes, pred_scores)
        if expected is None:
            assert scores is None
        else:
            counted += 1
            assert scores.shape == (8,)
            assert scores.mean() == pytest.approx(expected, abs=1e-12)
    assert counted > 250


def test_data_set_metric_matches_the_reference_loop():
    ground_truth, predictions = random_data_set(seed=3)
    empty = (np.zeros((0, 4)), np.zeros(0))
    expected = [loop_image_score(gt, *predictions.get(p, empty)) for p, gt in ground_truth.items()]
    counted = [score for score in expected if score is not None]
    result = rsna_metric(ground_truth, predictions)
    assert result["score"] == pytest.approx(np.mean(counted), abs=1e-12)
    assert result["num_images"] == len(counted)
    assert result["num_skipped"] == len(expected) - len(counted) > 0
    assert np.mean(list(result["per_threshold"].values())) == pytest.approx(result["score"], abs=1e-12)
    assert list(result["per_threshold"]) == list(IOU_THRESHOLDS)


def test_no_ground_truth_and_no_prediction_is_skipped():
    assert rsna_image_scores(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0)) is None
    result = rsna_metric({"a": np.zeros((0, 4)), "b": [[0, 0, 10, 10]]}, {"b": ([[0, 0, 10, 10]], [0.9])})
    # Only b counts, and it is a perfect match: 1.0.
    assert (result["score"], result["num_images"], result["num_skipped"]) == (1.0, 1, 1)


def test_predictions_without_ground_truth_score_zero_and_count():
    scores = rsna_image_scores(np.zeros((0, 4)), [[0, 0, 10, 10]], [0.3])
    np.testing.assert_array_equal(scores, np.zeros(8))
    # Image a: 0 (a false positive); image b: 1 (perfect). Mean 0.5 over 2 counted images.
    result = rsna_metric({"a": np.zeros((0, 4)), "b": [[0, 0, 10, 10]]},
                         {"a": ([[0, 0, 5, 5]], [0.1]), "b": ([[0, 0, 10, 10]], [0.9])})
    assert (result["score"], result["num_images"], result["num_skipped"]) == (0.5, 2, 0)


def test_ground_truth_without_prediction_scores_zero():
    np.testing.assert_array_equal(rsna_image_scores([[0, 0, 10, 10]], np.zeros((0, 4)), np.zeros(0)), np.zeros(8))
    result = rsna_metric({"a": [[0, 0, 10, 10]]}, {})  # a patient absent from predictions
    assert (result["score"], result["num_images"]) == (0.0, 1)


def test_perfect_match_scores_one():
    np.testing.assert_array_equal(rsna_image_scores([[10, 20, 110, 220]], [[10, 20, 110, 220]], [0.5]), np.ones(8))


def test_a_match_counts_only_at_thresholds_up_to_its_iou():
    # GT 10x10 = 100 px²; prediction [0,0,10,6] lies inside it: IoU = 60 / 100 = 0.6 exactly.
    # Thresholds 0.40..0.60 (5 of 8): TP -> 1; 0.65..0.75: FP + FN -> 0. Image score 5/8.
    scores = rsna_image_scores([[0, 0, 10, 10]], [[0, 0, 10, 6]], [0.9])
    np.testing.assert_array_equal(scores, [1, 1, 1, 1, 1, 0, 0, 0])
    # Prediction [0,0,10,5]: IoU = 50 / 100 = 0.5 exactly -> counts at 0.40, 0.45, 0.50 only.
    scores = rsna_image_scores([[0, 0, 10, 10]], [[0, 0, 10, 5]], [0.9])
    np.testing.assert_array_equal(scores, [1, 1, 1, 0, 0, 0, 0, 0])


def test_confidence_order_decides_which_prediction_a_ground_truth_takes():
    # One GT [0,0,10,10]; A = [0,0,10,10] (IoU 1), B = [0,0,10,6] (IoU 0.6).
    # B more confident: the GT takes B where IoU 0.6 suffices (t <= 0.6): TP 1, FP 1 (A), FN 0
    # -> 1/2 at 5 thresholds; at t >= 0.65 B fails, the GT takes A: again 1/2. Score 0.5 each.
    gt = [[0, 0, 10, 10]]
    boxes = [[0, 0, 10, 10], [0, 0, 10, 6]]
    np.testing.assert_array_equal(rsna_image_scores(gt, boxes, [0.3, 0.9]), np.full(8, 0.5))
    # Two GTs: G1 = [0,0,10,10], G2 = [0,0,10,6]; one prediction P = [0,0,10,6] and one far box F.
    # G1 (first in order) takes P wherever IoU(G1, P) = 0.6 >= t, leaving G2 unmatched:
    # t <= 0.6: TP 1, FP 1 (F), FN 1 (G2) -> 1/3. t >= 0.65: G1 misses P, G2 takes P (IoU 1):
    # TP 1, FP 1, FN 1 -> 1/3 as well. Mean 1/3.
    gts = [[0, 0, 10, 10], [0, 0, 10, 6]]
    preds = [[0, 0, 10, 6], [50, 50, 60, 60]]
    np.testing.assert_allclose(rsna_image_scores(gts, preds, [0.9, 0.8]), np.full(8, 1 / 3))
    # The far box first changes nothing: matching skips boxes of IoU 0.
    np.testing.assert_allclose(rsna_image_scores(gts, preds, [0.1, 0.8]), np.full(8, 1 / 3))


def test_unknown_patient_in_predictions_is_an_error():
    with pytest.raises(ValueError, match="stranger"):
        rsna_metric({"a": np.zeros((0, 4))}, {"stranger": (np.zeros((0, 4)), np.zeros(0))})


def test_malformed_boxes_are_errors_naming_the_patient():
    with pytest.raises(ValueError, match="patient a"):
        rsna_metric({"a": [[0, 0, 10]]}, {})
    with pytest.raises(ValueError, match="patient a prediction.*2 boxes but 1 scores"):
        rsna_metric({"a": [[0, 0, 10, 10]]}, {"a": ([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5])})


def test_threshold_sweep_equals_metric_on_filtered_predictions():
    ground_truth, predictions = random_data_set(seed=5)
    thresholds = [0.0, 0.2, 0.35, 0.5, 0.7, 0.9, 0.95]
    results = threshold_sweep(ground_truth, predictions, thresholds)
    assert [r["score_threshold"] for r in results] == thresholds
    for threshold, result in zip(thresholds, results):
        filtered = {}
        for patient_id, (boxes, scores) in predictions.items():
            keep = scores >= threshold
            filtered[patient_id] = (boxes[keep], scores[keep])
        expected = rsna_metric(ground_truth, filtered)
        assert result["score"] == pytest.approx(expected["score"], abs=1e-12)
        assert result["num_images"] == expected["num_images"]
        assert result["num_skipped"] == expected["num_skipped"]
        for t in IOU_THRESHOLDS:
            assert result["per_threshold"][t] == pytest.approx(expected["per_threshold"][t], abs=1e-12)


def test_image_score_table_holds_the_loop_scores_of_every_image():
    ground_truth, predictions = random_data_set(seed=6, num_images=60)
    thresholds = [0.0, 0.5, 0.8]
    table = image_score_table(ground_truth, predictions, thresholds)
    assert table.shape == (60, 3)
    for row, (patient_id, gt_boxes) in zip(table, ground_truth.items()):
        boxes, scores = predictions.get(patient_id, (np.zeros((0, 4)), np.zeros(0)))
        for value, threshold in zip(row, thresholds):
            expected = loop_image_score(gt_boxes, boxes[scores >= threshold], scores[scores >= threshold])
            assert np.isnan(value) if expected is None else value == pytest.approx(expected, abs=1e-12)
    swept = threshold_sweep(ground_truth, predictions, thresholds)
    np.testing.assert_allclose(np.nanmean(table, axis=0), [item["score"] for item in swept], atol=1e-12)


# --- COCO AP against pycocotools --------------------------------------------------------------


def coco_data_set(seed, num_images=30):
    """Float boxes in a 200 px image, detections jittered around ground truth plus strays."""
    rng = np.random.default_rng(seed)
    ground_truth, predictions = {}, {}
    for index in range(num_images):
        centres = rng.uniform(30, 170, size=(int(rng.integers(0, 5)), 2))
        sizes = rng.uniform(10, 60, size=centres.shape)
        gt = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
        jittered = np.repeat(gt, rng.integers(0, 3, size=len(gt)), axis=0)
        jittered = jittered + rng.normal(0, 4, size=jittered.shape)
        strays_centres = rng.uniform(30, 170, size=(int(rng.integers(0, 3)), 2))
        strays = np.concatenate([strays_centres - 15, strays_centres + 15], axis=1)
        boxes = np.concatenate([jittered, strays])
        boxes = np.concatenate([boxes[:, :2], np.maximum(boxes[:, 2:], boxes[:, :2] + 1)], axis=1)
        if index == 7:  # more than pycocotools' 100 detections per image
            boxes = np.concatenate([boxes, np.tile(boxes[:1], (120, 1)) + rng.normal(0, 3, (120, 4))])
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        ground_truth[f"image{index}"] = gt
        if len(boxes):
            predictions[f"image{index}"] = (boxes, rng.random(len(boxes)))
    return ground_truth, predictions


def pycocotools_stats(ground_truth, predictions):

    def xywh(box):
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    image_ids = {patient_id: index + 1 for index, patient_id in enumerate(ground_truth)}
    annotations, annotation_id = [], itertools.count(1)  # ids must be > 0: 0 means "unmatched"
    for patient_id, boxes in ground_truth.items():
        for box in boxes:
            box = xywh(box)
            annotations.append({"id": next(annotation_id), "image_id": image_ids[patient_id], "category_id": 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    results = [{"image_id": image_ids[patient_id], "category_id": 1, "bbox": xywh(box), "score": float(score)}
               for patient_id, (boxes, scores) in predictions.items() for box, score in zip(boxes, scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": i} for i in image_ids.values()], "annotations": annotations,
                        "categories": [{"id": 1, "name": "opacity"}]}
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_and_coco_map_agree_with_pycocotools(seed):
    ground_truth, predictions = coco_data_set(seed)
    stats = pycocotools_stats(ground_truth, predictions)
    assert coco_map(ground_truth, predictions) == pytest.approx(stats[0], abs=1e-6)
    assert average_precision(ground_truth, predictions, 0.5) == pytest.approx(stats[1], abs=1e-6)
    assert average_precision(ground_truth, predictions, 0.75) == pytest.approx(stats[2], abs=1e-6)
    assert 0.05 < stats[1] < 0.99  # the data set is neither trivial nor hopeless


def test_average_precision_hand_case():
    # Two GT boxes in one image; detections by confidence: hit, miss, hit.
    # Recall 0.5, 0.5, 1.0; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3.
    # 101 recall points: 0.00..0.50 (51 points) -> 1, 0.51..1.00 (50 points) -> 2/3.
    gt = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float64)}
    predictions = {"a": (np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], np.float64),
                         np.array([0.9, 0.8, 0.7]))}
    assert average_precision(gt, predictions) == pytest.approx((51 + 50 * 2 / 3) / 101)
    precision, recall, scores = precision_recall_curve(gt, predictions)
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.7])


def test_average_precision_without_ground_truth_is_nan():
    assert np.isnan(average_precision({"a": np.zeros((0, 4))}, {"a": ([[0, 0, 1, 1]], [0.5])}))


# --- image-level measures ----------------------------------------------------------------------


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=120)
    probabilities = rng.choice(np.linspace(0, 1, 11), size=120)  # many ties
    positives, negatives = probabilities[labels == 1], probabilities[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    result = image_level_metrics(labels, probabilities)
    assert result["roc_auc"] == pytest.approx(wins / (len(positives) * len(negatives)), abs=1e-12)


def test_sensitivity_and_specificity_at_threshold():
    labels = [1, 1, 1, 0, 0]
    probabilities = [0.9, 0.5, 0.2, 0.6, 0.1]
    # >= 0.5 is positive: positives caught 2 of 3; negatives cleared 1 of 2.
    result = image_level_metrics(labels, probabilities)
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(1 / 2)
    assert result["threshold"] == 0.5  # the documented default
    result = image_level_metrics(labels, probabilities, threshold=0.65)
    assert (result["sensitivity"], result["specificity"]) == (pytest.approx(1 / 3), 1.0)


def test_roc_auc_is_nan_with_one_class():
    assert np.isnan(image_level_metrics([1, 1], [0.2, 0.8])["roc_auc"])
    with pytest.raises(ValueError, match="0 or 1"):
        image_level_metrics([2, 0], [0.2, 0.8])


def test_best_of_sweep_is_the_highest_metric_over_the_thresholds():
    from retinanet.detection.metrics import best_of_sweep, rsna_metric

    truth = {"a": np.array([[0, 0, 10, 10]], float), "b": np.zeros((0, 4)), "c": np.array([[50, 50, 80, 90]], float)}
    predictions = {"a": (np.array([[0, 0, 10, 10], [30, 30, 40, 40]], float), np.array([0.9, 0.4])),
                   "b": (np.array([[5, 5, 9, 9]], float), np.array([0.3])),
                   "c": (np.array([[50, 50, 80, 90]], float), np.array([0.6]))}
    thresholds = [0.2, 0.35, 0.5, 0.7]
    by_loop = [rsna_metric(truth, {k: (b[s >= t], s[s >= t]) for k, (b, s) in predictions.items()})["score"]
               for t in thresholds]
    # Hand check at 0.5: a keeps its exact box (1), b has none (skipped), c exact (1) -> 1.0.
    assert by_loop[2] == 1.0
    assert best_of_sweep(truth, predictions, thresholds) == (1.0, 0.5)
    assert np.isnan(best_of_sweep({"b": np.zeros((0, 4))}, {"b": (np.zeros((0, 4)), np.zeros(0))}, [0.5])[0])
