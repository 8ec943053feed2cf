"""Evaluation measures in numpy: the RSNA competition metric, COCO-style AP, image-level ROC.

Boxes are `x1, y1, x2, y2` arrays [N, 4]; ground truth and predictions must share one pixel
frame. Measures over a data set take two dicts keyed by patientId:

    ground_truth: {patient_id: boxes [N, 4]}               every evaluated image, N may be 0
    predictions:  {patient_id: (boxes [M, 4], scores [M])}  a missing patient = no prediction

Predictions are ranked by descending score; equal scores keep their given order (stable sort),
and images are pooled in the order of `ground_truth`.
"""

from __future__ import annotations

import math

import numpy as np

# The competition's IoU thresholds 0.40, 0.45, ..., 0.75, rounded so that 0.6 is exactly 0.6.
IOU_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.40, 0.76, 0.05), 2))
# pycocotools' constants, built by the same expressions so that the floats compare equal.
COCO_IOU_THRESHOLDS = tuple(float(t) for t in np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1))
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)
COCO_MAX_DETECTIONS = 100

_NO_BOXES = np.zeros((0, 4))

# The two dicts of the module docstring (array-likes of these shapes are accepted too).
GroundTruth = dict[str, np.ndarray]  # patient_id -> boxes [N, 4]
Predictions = dict[str, tuple[np.ndarray, np.ndarray]]  # patient_id -> (boxes [M, 4], scores [M])


def intersection_and_union(boxes_a: np.ndarray, boxes_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., 4] and [..., 4] (broadcast) -> float64 (intersection [...], union [...]) areas.

    The numpy twin of `retinanet.detection.boxes.intersection_and_union`: sizes are `x2 - x1` with no +1,
    as in the competition's reference kernel and pycocotools; a degenerate box has area 0.
    """
    boxes_a = np.asarray(boxes_a, np.float64)
    boxes_b = np.asarray(boxes_b, np.float64)
    sizes = np.maximum(np.minimum(boxes_a[..., 2:], boxes_b[..., 2:]) - np.maximum(boxes_a[..., :2], boxes_b[..., :2]),
                       0.0)
    intersection = sizes[..., 0] * sizes[..., 1]

    def area(boxes):
        extent = np.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
        return extent[..., 0] * extent[..., 1]

    return intersection, area(boxes_a) + area(boxes_b) - intersection


def pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """[N, 4], [M, 4] -> [N, M] float64 IoU; 0 where the union is empty."""
    boxes_a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    intersection, union = intersection_and_union(boxes_a[:, None, :], boxes_b[None, :, :])
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def _checked_boxes(boxes, where: str) -> np.ndarray:
    """Any array-like of boxes -> float64 [N, 4]; ValueError naming `where` if malformed."""
    boxes = np.asarray(boxes, np.float64)
    if boxes.size == 0:
        return _NO_BOXES
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape [N, 4], got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{where}: non-finite box coordinate")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"{where}: box with x2 < x1 or y2 < y1 (boxes are x1, y1, x2, y2)")
    return boxes


def _checked_prediction(prediction, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) -> (float64 [M, 4], float64 [M]) with matching lengths and finite scores."""
    boxes, scores = prediction
    boxes = _checked_boxes(boxes, where)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{where}: {len(boxes)} boxes but {len(scores)} scores")
    if not np.isfinite(scores).all():
        raise ValueError(f"{where}: non-finite score")
    return boxes, scores


def _paired(ground_truth: dict, predictions: dict):
    """Yield (patient_id, ground-truth boxes, prediction boxes, scores) for every ground-truth patient."""
    unknown = [patient_id for patient_id in predictions if patient_id not in ground_truth]
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} patient(s) without ground truth, "
                         f"e.g. {unknown[0]!r}")
    for patient_id, boxes in ground_truth.items():
        where = f"patient {patient_id}"
        prediction = predictions.get(patient_id, (_NO_BOXES, np.zeros(0)))
        yield (patient_id, _checked_boxes(boxes, f"{where} ground truth"),
               *_checked_prediction(prediction, f"{where} prediction"))


# --- RSNA competition metric -------------------------------------------------------------


def _rsna_match(gt_boxes: np.ndarray, pred_boxes: np.ndarray, pred_scores: np.ndarray):
    """Competition matching at every IOU_THRESHOLDS -> (sorted_scores [M], match_rank [T, G]).

    `sorted_scores` are the scores in descending order; `match_rank[t, g]` is the position in that
    order of the prediction that ground-truth box g took at threshold t, or M if it took none.
    Keeping only the k most confident predictions leaves every match of rank < k unchanged and
    removes the others (a box that lost its partner finds no other: its earliest unused candidate
    had rank >= k), so this one matching serves every score threshold.
    """
    order = np.argsort(-pred_scores, kind="stable")
    iou = pairwise_iou(gt_boxes, pred_boxes[order])  # [G, M]
    num_predictions = len(order)
    thresholds = np.asarray(IOU_THRESHOLDS)[:, None]
    used = np.zeros((len(IOU_THRESHOLDS), num_predictions), bool)
    match_rank = np.full((len(IOU_THRESHOLDS), len(gt_boxes)), num_predictions)
    for gt_index in range(len(gt_boxes) if num_predictions else 0):  # in given order, as the competition
        candidates = (iou[gt_index][None, :] >= thresholds) & ~used  # [T, M]
        found = candidates.any(axis=1)
        first = candidates.argmax(axis=1)
        match_rank[found, gt_index] = first[found]
        used[np.flatnonzero(found), first[found]] = True
    return pred_scores[order], match_rank


def _scores_for_kept(num_gt: int, match_rank: np.ndarray, num_kept: np.ndarray) -> np.ndarray:
    """Image scores [T, K] when only the num_kept[k] most confident predictions remain; NaN = skipped."""
    true_positives = (match_rank[:, :, None] < num_kept[None, None, :]).sum(axis=1)  # [T, K]
    # TP + FP + FN = TP + (kept - TP) + (G - TP); it is 0 only for an image with nothing on either side.
    denominator = num_gt + num_kept[None, :] - true_positives
    return np.divide(true_positives, denominator, out=np.full(denominator.shape, np.nan), where=denominator > 0)


def rsna_image_scores(gt_boxes: np.ndarray, pred_boxes: np.ndarray, pred_scores: np.ndarray) -> np.ndarray | None:
    """One image's competition score at each IOU_THRESHOLDS: [8], or None when the image is skipped.

    gt_boxes [N, 4], pred_boxes [M, 4], pred_scores [M]. Skipped means no ground truth and no
    prediction; exactly one empty side scores zeros. The image score is the mean of the result.
    """
    gt_boxes = _checked_boxes(gt_boxes, "ground truth")
    pred_boxes, pred_scores = _checked_prediction((pred_boxes, pred_scores), "prediction")
    _, match_rank = _rsna_match(gt_boxes, pred_boxes, pred_scores)
    scores = _scores_for_kept(len(gt_boxes), match_rank, np.array([len(pred_boxes)]))[:, 0]
    return None if np.isnan(scores[0]) else scores


def rsna_true_positives(gt_boxes: np.ndarray, pred_boxes: np.ndarray, pred_scores: np.ndarray) -> np.ndarray:
    """One image's true positives [T] at each IOU_THRESHOLDS under the competition's matching
    (gt_boxes [N, 4], pred_boxes [M, 4], pred_scores [M]); its false positives are M minus them,
    its false negatives N minus them."""
    gt_boxes = _checked_boxes(gt_boxes, "ground truth")
    pred_boxes, pred_scores = _checked_prediction((pred_boxes, pred_scores), "prediction")
    _, match_rank = _rsna_match(gt_boxes, pred_boxes, pred_scores)
    return (match_rank < len(pred_boxes)).sum(axis=1)


def sweep_thresholds(sweep: tuple[float, float, float]) -> np.ndarray:
    """(start, stop, step) -> thresholds [K] start, start + step, ..., stop (inclusive), rounded to 1e-6."""
    start, stop, step = sweep
    return np.round(np.arange(start, stop + step / 2, step), 6)


def best_of_sweep(ground_truth: GroundTruth, predictions: Predictions, thresholds: np.ndarray) -> tuple[float, float]:
    """(best RSNA metric, its score threshold) over `thresholds` [K]; (NaN, NaN) if nothing is scored."""
    swept = threshold_sweep(ground_truth, predictions, thresholds)
    scores = np.array([item["score"] for item in swept])
    if not np.isfinite(scores).any():
        return math.nan, math.nan
    best = swept[int(np.nanargmax(scores))]
    return best["score"], best["score_threshold"]


def _checked_thresholds(thresholds) -> np.ndarray:
    thresholds = np.asarray(thresholds, np.float64).reshape(-1)
    if np.isnan(thresholds).any():
        raise ValueError("score thresholds must not be NaN")
    return thresholds


def _image_scores_per_threshold(ground_truth: dict, predictions: dict, thresholds: np.ndarray):
    """Yield (patient_id, scores [T, K]) for every ground-truth patient: its score at each IoU
    threshold after dropping the predictions below each score threshold; NaN where skipped."""
    for patient_id, gt_boxes, pred_boxes, pred_scores in _paired(ground_truth, predictions):
        sorted_scores, match_rank = _rsna_match(gt_boxes, pred_boxes, pred_scores)
        # Number of predictions scoring >= threshold; -sorted_scores is ascending.
        num_kept = np.searchsorted(-sorted_scores, -thresholds, side="right")
        yield patient_id, _scores_for_kept(len(gt_boxes), match_rank, num_kept)


def image_score_table(ground_truth: GroundTruth, predictions: Predictions, thresholds: np.ndarray) -> np.ndarray:
    """Each image's competition score (mean over IOU_THRESHOLDS) at each score threshold: [N, K].

    Rows follow the order of `ground_truth`; NaN marks an image skipped at that threshold (no
    ground truth, no prediction kept). Column k's nanmean is `threshold_sweep`'s score at
    thresholds[k]; per-image scores let callers pool images in other ways (folds, bootstrap).
    """
    thresholds = _checked_thresholds(thresholds)
    rows = [scores.mean(axis=0) for _, scores in _image_scores_per_threshold(ground_truth, predictions, thresholds)]
    return np.array(rows).reshape(len(rows), len(thresholds))


def threshold_sweep(ground_truth: GroundTruth, predictions: Predictions, thresholds: np.ndarray) -> list[dict]:
    """The RSNA metric after dropping predictions that score below each of `thresholds` [K].

    Returns one dict per threshold, in the given order: {"score_threshold", and the keys of
    `rsna_metric`}. Each image is matched once; a threshold then only counts kept predictions.
    """
    thresholds = _checked_thresholds(thresholds)
    totals = np.zeros((len(IOU_THRESHOLDS), len(thresholds)))
    num_counted = np.zeros(len(thresholds), int)
    num_patients = 0
    for _, image_scores in _image_scores_per_threshold(ground_truth, predictions, thresholds):
        num_patients += 1
        counted = ~np.isnan(image_scores[0])
        totals += np.where(counted[None, :], image_scores, 0.0)
        num_counted += counted
    results = []
    for index, threshold in enumerate(thresholds):
        count = int(num_counted[index])
        means = totals[:, index] / count if count else np.full(len(IOU_THRESHOLDS), np.nan)
        results.append({
            "score_threshold": float(threshold),
            "score": float(means.mean()),
            "per_threshold": {t: float(m) for t, m in zip(IOU_THRESHOLDS, means)},
            "num_images": count,
            "num_skipped": num_patients - count,
        })
    return results


def rsna_metric(ground_truth: GroundTruth, predictions: Predictions) -> dict:
    """The competition metric over a data set.

    Returns {"score": mean image score over counted images (NaN if none), "per_threshold":
    {iou_threshold: mean score at it}, "num_images": counted images, "num_skipped": images with
    neither ground truth nor prediction}. A patient in `predictions` but not in `ground_truth`
    is a ValueError.
    """
    result = threshold_sweep(ground_truth, predictions, [-np.inf])[0]
    del result["score_threshold"]
    return result


# --- COCO-style average precision ----------------------------------------------------------


def _coco_matches(ground_truth: dict, predictions: dict, iou_thresholds) -> tuple[np.ndarray, np.ndarray, int]:
    """Pooled detections as pycocotools ranks them -> (scores [D], is_true_positive [T, D], num_gt).

    Per image the COCO_MAX_DETECTIONS most confident detections are kept; each, in descending
    confidence, takes the unmatched ground-truth box of highest IoU >= t (the last one of equal
    IoU). Every box has area < 1e10 px², so nothing is ignored under the 'all' area range.
    """
    # pycocotools caps the threshold just below 1 so that IoU 1.0 still matches at t = 1.
    thresholds = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)[:, None]
    all_scores, all_true_positives, num_gt = [], [], 0
    for _, gt_boxes, pred_boxes, pred_scores in _paired(ground_truth, predictions):
        order = np.argsort(-pred_scores, kind="stable")[:COCO_MAX_DETECTIONS]
        iou = pairwise_iou(pred_boxes[order], gt_boxes)  # [D, G]
        true_positive = np.zeros((len(thresholds), len(order)), bool)
        gt_taken = np.zeros((len(thresholds), len(gt_boxes)), bool)
        for detection in range(len(order)):
            if len(gt_boxes) == 0 or iou[detection].max() < thresholds.min():
                continue  # cannot match at any threshold
            candidate_iou = np.where(gt_taken | (iou[detection][None, :] < thresholds), -1.0, iou[detection][None, :])
            best = len(gt_boxes) - 1 - candidate_iou[:, ::-1].argmax(axis=1)  # last of equal IoU
            found = candidate_iou[np.arange(len(thresholds)), best] >= 0
            gt_taken[np.flatnonzero(found), best[found]] = True
            true_positive[found, detection] = True
        all_scores.append(pred_scores[order])
        all_true_positives.append(true_positive)
        num_gt += len(gt_boxes)
    if not all_scores:
        return np.zeros(0), np.zeros((len(thresholds), 0), bool), 0
    scores = np.concatenate(all_scores)
    pooled_order = np.argsort(-scores, kind="stable")
    return scores[pooled_order], np.concatenate(all_true_positives, axis=1)[:, pooled_order], num_gt


def _interpolated_ap(is_true_positive: np.ndarray, num_gt: int) -> float:
    """COCO 101-point AP of ranked detections [D] (bool); NaN without ground truth."""
    if num_gt == 0:
        return float("nan")
    true_positives = np.cumsum(is_true_positive, dtype=np.float64)
    false_positives = np.cumsum(~is_true_positive, dtype=np.float64)
    recall = true_positives / num_gt
    precision = true_positives / (true_positives + false_positives + np.spacing(1))
    # Precision envelope: the best precision at any recall at least this high.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    indices = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    reached = indices < len(precision)  # recall levels never reached contribute 0
    sampled = np.zeros(len(COCO_RECALL_POINTS))
    sampled[reached] = precision[indices[reached]]
    return float(sampled.mean())


def average_precision(ground_truth: GroundTruth, predictions: Predictions, iou_threshold: float = 0.5) -> float:
    """Single-class AP over all images pooled, as pycocotools' bbox AP (area 'all', maxDets 100).

    NaN when there is no ground-truth box at all (pycocotools reports -1).
    """
    _, is_true_positive, num_gt = _coco_matches(ground_truth, predictions, [iou_threshold])
    return _interpolated_ap(is_true_positive[0], num_gt)


def coco_map(ground_truth: GroundTruth, predictions: Predictions) -> float:
    """Mean AP over IoU 0.50:0.05:0.95, as pycocotools' headline AP (stats[0])."""
    _, is_true_positive, num_gt = _coco_matches(ground_truth, predictions, COCO_IOU_THRESHOLDS)
    return float(np.mean([_interpolated_ap(row, num_gt) for row in is_true_positive]))


def detection_matches(ground_truth: GroundTruth, predictions: Predictions,
                      iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """Pooled detections, most confident first, matched as in `average_precision` ->
    (scores [D], is_true_positive bool [D], number of ground-truth boxes)."""
    scores, is_true_positive, num_gt = _coco_matches(ground_truth, predictions, [iou_threshold])
    return scores, is_true_positive[0], num_gt


def precision_recall_curve(ground_truth: GroundTruth, predictions: Predictions,
                           iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (not interpolated) pooled PR curve -> (precision [D], recall [D], scores [D]).

    Entry k describes keeping the k + 1 most confident detections, matched as in
    `average_precision`; `scores[k]` is the confidence of the last one kept. Recall is NaN
    without ground truth.
    """
    scores, is_true_positive, num_gt = _coco_matches(ground_truth, predictions, [iou_threshold])
    true_positives = np.cumsum(is_true_positive[0], dtype=np.float64)
    precision = true_positives / np.arange(1, len(true_positives) + 1)
    recall = true_positives / num_gt if num_gt else np.full(len(true_positives), np.nan)
    return precision, recall, scores


# --- Image-level classification --------------------------------------------------------------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks [N] of `values` [N]; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse.reshape(-1)]


def roc_curve(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of labels [N] (0/1) and probabilities [N] -> (false positive rate [T + 1], true
    positive rate [T + 1], thresholds [T]): one point per distinct probability, descending, from
    (0, 0); its trapezoidal area is the `image_level_metrics` AUC."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    thresholds = np.unique(probabilities)[::-1]
    kept = probabilities[None, :] >= thresholds[:, None]
    true_positive_rate = (kept & labels).sum(axis=1) / max(int(labels.sum()), 1)
    false_positive_rate = (kept & ~labels).sum(axis=1) / max(int((~labels).sum()), 1)
    return np.concatenate([[0.0], false_positive_rate]), np.concatenate([[0.0], true_positive_rate]), thresholds


def image_level_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """Is-there-pneumonia measures from labels [N] (0/1) and probabilities [N].

    Returns {"roc_auc": Mann-Whitney AUC with ties counted half (NaN when one class is absent),
    "sensitivity", "specificity": at probability >= threshold (NaN without positives / negatives),
    "threshold", "num_positive", "num_negative"}.
    """
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels but {len(probabilities)} probabilities")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(probabilities).all():
        raise ValueError("non-finite probability")
    positive = labels == 1
    num_positive, num_negative = int(positive.sum()), int((~positive).sum())
    if num_positive and num_negative:
        positive_rank_sum = _average_ranks(probabilities)[positive].sum()
        roc_auc = (positive_rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative)
    else:
        roc_auc = np.nan
    predicted_positive = probabilities >= threshold
    sensitivity = (predicted_positive & positive).sum() / num_positive if num_positive else np.nan
    specificity = (~predicted_positive & ~positive).sum() / num_negative if num_negative else np.nan
    return {
        "roc_auc": float(roc_auc),
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "threshold": float(threshold),
        "num_positive": num_positive,
        "num_negative": num_negative,
    }
