"""Where the RSNA metric is lost: how well the submitted boxes land on the true ones (numpy).

The competition metric averages the hit rate over IoU thresholds 0.40 ... 0.75, so a detector that
finds every sick film but draws its boxes loosely loses most of it at the high thresholds. The
report gives, for boxes kept at a score threshold:
- per IoU threshold: true positives, false positives and false negatives summed over the images
  under the competition's matching, and the hit rate TP / (TP + FN);
- each true box's best IoU with a submitted box of its film, and the quartiles of those that
  overlap one at all ("matched");
- for those matched pairs, the predicted-to-true width and height ratios and the centre offsets
  in units of the true box's width and height (positive: right of and below the true centre);
- the RSNA metric of groups of films: by view position, and by number of true boxes.

Boxes are `x1, y1, x2, y2` in one frame per image; `ground_truth` is {image: boxes [N, 4]},
`predictions` {image: (boxes [M, 4], scores [M])} (the kept boxes: those at the operating threshold).
"""

from __future__ import annotations

import numpy as np

from retinanet.detection.metrics import (IOU_THRESHOLDS, GroundTruth, Predictions, pairwise_iou, rsna_metric,
                                         rsna_true_positives)

QUARTILES = (25, 50, 75)
_NO_BOXES = np.zeros((0, 4))


def _quartiles(values) -> list[float] | None:
    """The QUARTILES of `values`, or None without any."""
    values = np.asarray(values, np.float64)
    return [float(value) for value in np.percentile(values, QUARTILES)] if values.size else None


def _prediction(predictions: Predictions, image) -> tuple[np.ndarray, np.ndarray]:
    boxes, scores = predictions.get(image, (_NO_BOXES, np.zeros(0)))
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)


def per_threshold_counts(ground_truth: GroundTruth, predictions: Predictions) -> list[dict]:
    """[{"iou", "true_positives", "false_positives", "false_negatives", "hit_rate"}] for each
    IOU_THRESHOLDS, summed over the images (hit rate None without any true box)."""
    true_positives = np.zeros(len(IOU_THRESHOLDS), np.int64)
    num_predicted = num_true = 0
    for image, gt_boxes in ground_truth.items():
        boxes, scores = _prediction(predictions, image)
        true_positives += rsna_true_positives(gt_boxes, boxes, scores)
        num_predicted += len(boxes)
        num_true += len(gt_boxes)
    return [{"iou": threshold, "true_positives": int(tp), "false_positives": int(num_predicted - tp),
             "false_negatives": int(num_true - tp), "hit_rate": float(tp / num_true) if num_true else None}
            for threshold, tp in zip(IOU_THRESHOLDS, true_positives)]


def best_matches(ground_truth: GroundTruth, predictions: Predictions) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(true box [4], its best-overlapping submitted box [4], their IoU) for every true box that
    overlaps a submitted box of its image at all."""
    pairs = []
    for image, gt_boxes in ground_truth.items():
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        boxes, _ = _prediction(predictions, image)
        if not len(gt_boxes) or not len(boxes):
            continue
        iou = pairwise_iou(gt_boxes, boxes)  # [G, M]
        for index, best in enumerate(iou.argmax(axis=1)):
            if iou[index, best] > 0:
                pairs.append((gt_boxes[index], boxes[best], float(iou[index, best])))
    return pairs


def box_agreement(pairs: list[tuple[np.ndarray, np.ndarray, float]]) -> dict:
    """The quartiles of the matched pairs' IoU, width and height ratios (predicted / true) and
    centre offsets (predicted - true, in true widths and heights)."""
    if not pairs:
        return {"matched_iou": None, "width_ratio": None, "height_ratio": None, "centre_offset_x": None,
                "centre_offset_y": None}
    true, predicted = np.stack([pair[0] for pair in pairs]), np.stack([pair[1] for pair in pairs])
    true_size, predicted_size = true[:, 2:] - true[:, :2], predicted[:, 2:] - predicted[:, :2]
    offset = ((predicted[:, :2] + predicted[:, 2:]) - (true[:, :2] + true[:, 2:])) / 2 / true_size
    ratio = predicted_size / true_size
    return {"matched_iou": _quartiles([pair[2] for pair in pairs]), "width_ratio": _quartiles(ratio[:, 0]),
            "height_ratio": _quartiles(ratio[:, 1]), "centre_offset_x": _quartiles(offset[:, 0]),
            "centre_offset_y": _quartiles(offset[:, 1])}


def metric_by_group(ground_truth: GroundTruth, predictions: Predictions, group_of: dict) -> dict:
    """{group: {"images", "scored_images", "rsna_metric"}}: the RSNA metric of each group's images
    (`group_of`: {image: group name}); a group without a scored image has rsna_metric None."""
    groups: dict[str, list] = {}
    for image in ground_truth:
        groups.setdefault(str(group_of[image]), []).append(image)
    report = {}
    for group, images in sorted(groups.items()):
        result = rsna_metric({image: ground_truth[image] for image in images},
                             {image: predictions[image] for image in images if image in predictions})
        score = result["score"]
        report[group] = {"images": len(images), "scored_images": int(result["num_images"]),
                         "rsna_metric": None if score is None or not np.isfinite(score) else float(score)}
    return report


def true_box_count_group(count: int) -> str:
    """The group of a film with `count` true boxes: "0", "1", "2" or "3+"."""
    return str(count) if count < 3 else "3+"


def localization_report(ground_truth: GroundTruth, predictions: Predictions, views: dict | None = None) -> dict:
    """The report of the module docstring: {"per_iou_threshold", "true_boxes", "matched_boxes",
    "matched_iou", "width_ratio", "height_ratio", "centre_offset_x", "centre_offset_y",
    "by_true_boxes", "by_view" (with `views`: {image: "AP", "PA", ...})}."""
    pairs = best_matches(ground_truth, predictions)
    report = {"per_iou_threshold": per_threshold_counts(ground_truth, predictions),
              "true_boxes": int(sum(len(np.asarray(boxes).reshape(-1, 4)) for boxes in ground_truth.values())),
              "matched_boxes": len(pairs), **box_agreement(pairs)}
    counts = {image: true_box_count_group(len(np.asarray(boxes).reshape(-1, 4)))
              for image, boxes in ground_truth.items()}
    report["by_true_boxes"] = metric_by_group(ground_truth, predictions, counts)
    if views is not None:
        report["by_view"] = metric_by_group(ground_truth, predictions, {image: views.get(image) or "unknown"
                                                                         for image in ground_truth})
    return report


def format_localization(report: dict) -> list[str]:
    """The report as lines of text for a terminal."""
    lines = ["IoU    hit rate   TP     FP     FN"]
    for row in report["per_iou_threshold"]:
        hit = "   -   " if row["hit_rate"] is None else f"{row['hit_rate']:.3f}  "
        lines.append(f"{row['iou']:.2f}   {hit}   {row['true_positives']:<6d} {row['false_positives']:<6d} "
                     f"{row['false_negatives']}")

    def quartiles(key: str) -> str:
        values = report[key]
        return "-" if values is None else " / ".join(f"{value:.2f}" for value in values)

    lines.append(f"true boxes {report['true_boxes']}, matched (overlapping a kept box) {report['matched_boxes']}; "
                 f"quartiles of the matched:")
    lines += [f"  best IoU {quartiles('matched_iou')}", f"  width ratio (predicted / true) {quartiles('width_ratio')}",
              f"  height ratio {quartiles('height_ratio')}",
              f"  centre offset x (true widths) {quartiles('centre_offset_x')}",
              f"  centre offset y (true heights) {quartiles('centre_offset_y')}"]
    for key, title in (("by_view", "view"), ("by_true_boxes", "true boxes")):
        for group, values in report.get(key, {}).items():
            metric = "-" if values["rsna_metric"] is None else f"{values['rsna_metric']:.4f}"
            lines.append(f"RSNA metric, {title} {group}: {metric} ({values['scored_images']} of {values['images']} "
                         "images scored)")
    return lines
