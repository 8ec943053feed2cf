"""The pictures of `retinanet evaluate`: threshold sweep, precision-recall with its operating
points, FROC, image-level ROC, and overlays of the best and worst images on the originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinanet.data.decode_checks import DEFAULT_LIMIT_MIB
from retinanet.data.dicom import read_image
from retinanet.data.patient_ids import check_patient_id
from retinanet.data.rsna import Record
from retinanet.detection.metrics import detection_matches, rsna_image_scores, roc_curve
from retinanet.runtime.safe_writes import make_directory, replace_atomically
from retinanet.visualize import draw_boxes, save_rgb


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    """Save and close `figure`; written whole or not at all (its format from `path`'s suffix)."""
    try:
        figure.tight_layout()
        replace_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100))
    finally:
        _pyplot().close(figure)


def plot_sweep(metrics: dict, path: Path) -> None:
    """RSNA metric against score threshold, the used (metrics["threshold"]) and best thresholds marked."""
    figure, axis = _pyplot().subplots(figsize=(6, 4))
    thresholds = [item["score_threshold"] for item in metrics["sweep"]]
    scores = [item["rsna_metric"] for item in metrics["sweep"]]  # NaN (nothing scored) leaves a gap
    axis.plot(thresholds, scores, marker="o", markersize=3, label="RSNA metric")
    axis.axvline(metrics["threshold"], color="grey", linestyle="--", label=f"used {metrics['threshold']:.2f}")
    axis.axvline(metrics["best_threshold"], color="red", linestyle=":", label=f"best {metrics['best_threshold']:.2f}")
    axis.set(xlabel="score threshold", ylabel="RSNA metric (mAP@0.40:0.75)", title="Score threshold sweep")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def plot_fold_sweeps(sweeps: dict, threshold: float, path: Path, title: str = "Out-of-fold threshold sweep") -> None:
    """RSNA metric against score threshold for each curve of `sweeps` ({label: (thresholds,
    scores)}; the one labelled "out-of-fold" drawn bold), the chosen threshold marked."""
    figure, axis = _pyplot().subplots(figsize=(6, 4))
    for label, (thresholds, scores) in sweeps.items():
        pooled = label == "out-of-fold"
        axis.plot(thresholds, scores, label=label, color="black" if pooled else None,
                  linewidth=2.5 if pooled else 1.0, alpha=1.0 if pooled else 0.7,
                  marker="o" if pooled else None, markersize=3)
    axis.axvline(threshold, color="red", linestyle=":", label=f"chosen {threshold:.2f}")
    axis.set(xlabel="score threshold", ylabel="RSNA metric (mAP@0.40:0.75)", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)


def operating_point(scores, is_true_positive, num_gt: int, threshold: float) -> tuple[float, float]:
    """(recall, precision) of the detections scoring >= threshold; precision NaN when none is kept."""
    kept = np.asarray(scores) >= threshold
    true_positives = float(np.asarray(is_true_positive)[kept].sum())
    precision = true_positives / kept.sum() if kept.any() else float("nan")
    return (true_positives / num_gt if num_gt else float("nan")), precision


def plot_precision_recall(records: list[Record], detections: dict, path: Path, ap50: float,
                          operating_points: dict) -> None:
    """Pooled precision-recall curve at IoU 0.5 (raw, not interpolated), with the points of the
    thresholds in `operating_points` ({label: threshold}) marked."""
    ground_truth = {record.patient_id: record.boxes for record in records}
    scores, is_true_positive, num_gt = detection_matches(ground_truth, detections, 0.5)
    figure, axis = _pyplot().subplots(figsize=(5, 5))
    if len(scores) and num_gt:
        true_positives = np.cumsum(is_true_positive)
        axis.plot(true_positives / num_gt, true_positives / np.arange(1, len(scores) + 1),
                  label=f"IoU 0.5, AP {ap50:.3f}")
        for (label, threshold), marker in zip(operating_points.items(), ("o", "s", "^")):
            recall, precision = operating_point(scores, is_true_positive, num_gt, threshold)
            if np.isfinite(precision):
                axis.plot([recall], [precision], marker=marker, markersize=8, linestyle="none",
                          label=f"{label} {threshold:.2f}: P {precision:.2f}, R {recall:.2f}")
        axis.legend(loc="lower left", fontsize=8)
    else:
        axis.text(0.5, 0.5, "no detections or no ground-truth boxes", ha="center")
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall (boxes)")
    axis.grid(alpha=0.3)
    _save(figure, path)


def froc_points(scores, is_true_positive, num_gt: int, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Detections most confident first -> (false positives per image [D], box sensitivity [D])
    after keeping the first 1, 2, ..., D."""
    true_positives = np.cumsum(is_true_positive)
    false_positives = np.arange(1, len(true_positives) + 1) - true_positives
    return false_positives / max(num_images, 1), true_positives / max(num_gt, 1)


def plot_froc(records: list[Record], detections: dict, path: Path, threshold: float) -> None:
    """FROC: box sensitivity (IoU 0.5) against false positives per image, the threshold marked."""
    ground_truth = {record.patient_id: record.boxes for record in records}
    scores, is_true_positive, num_gt = detection_matches(ground_truth, detections, 0.5)
    figure, axis = _pyplot().subplots(figsize=(5, 4))
    if len(scores) and num_gt:
        false_positives, sensitivity = froc_points(scores, is_true_positive, num_gt, len(records))
        axis.plot(false_positives, sensitivity, label="boxes, IoU 0.5")
        kept = int((scores >= threshold).sum())
        if kept:
            axis.plot([false_positives[kept - 1]], [sensitivity[kept - 1]], "o", markersize=8,
                      label=f"threshold {threshold:.2f}: {sensitivity[kept - 1]:.2f} at "
                            f"{false_positives[kept - 1]:.2f} FP/image")
        axis.legend(loc="lower right", fontsize=8)
    else:
        axis.text(0.5, 0.5, "no detections or no ground-truth boxes", ha="center")
    axis.set(xlabel="false positives per image", ylabel="sensitivity (boxes found)", ylim=(0, 1.02), title="FROC")
    axis.grid(alpha=0.3)
    _save(figure, path)


def plot_image_roc(labels, probabilities, path: Path, image_level: dict) -> None:
    """ROC of the image-level 'pneumonia present' probability, the gate threshold's point marked."""
    figure, axis = _pyplot().subplots(figsize=(5, 5))
    labels = np.asarray(labels)
    if labels.min() != labels.max():
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
        axis.plot(false_positive_rate, true_positive_rate, label=f"AUC {image_level['roc_auc']:.3f}")
        axis.plot([1 - image_level["specificity"]], [image_level["sensitivity"]], "o", markersize=8,
                  label=f"p >= {image_level['threshold']:.2f}: sensitivity {image_level['sensitivity']:.2f}, "
                        f"specificity {image_level['specificity']:.2f}")
        axis.legend(loc="lower right", fontsize=8)
    else:
        axis.text(0.5, 0.5, "needs images with and without pneumonia", ha="center")
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02),
             title="Image level: pneumonia present")
    axis.grid(alpha=0.3)
    _save(figure, path)


def write_overlays(records: list[Record], kept: dict, directory: Path, count: int, *, threshold: float,
                   probabilities: dict | None = None, memory_limit_mib: float = DEFAULT_LIMIT_MIB) -> list[str]:
    """Best and worst scored images (RSNA image score at the kept boxes, those scoring >= threshold)
    drawn on the original images (read within `memory_limit_mib`), with the legend, threshold and p(pneumonia)."""
    scored = []
    for record in records:
        boxes, scores = kept[record.patient_id]
        image_scores = rsna_image_scores(record.boxes, boxes, scores)
        if image_scores is not None:
            scored.append((float(image_scores.mean()), record))
    scored.sort(key=lambda item: -item[0])
    best = scored[: (count + 1) // 2]
    worst = scored[len(best):][::-1][: count // 2]
    make_directory(directory)
    written = []
    for kind, chosen in (("best", best), ("worst", worst)):
        for rank, (score, record) in enumerate(chosen, start=1):
            path = directory / f"{kind}_{rank}_{check_patient_id(record.patient_id, str(directory))}.png"
            boxes, scores = kept[record.patient_id]
            probability = None if probabilities is None else probabilities[record.patient_id]
            image = read_image(record.image_path, memory_limit_mib=memory_limit_mib)
            picture = draw_boxes(image, record.boxes, boxes, scores,
                                 title=f"{record.patient_id}  RSNA image score {score:.2f}", threshold=threshold,
                                 image_probability=probability)
            save_rgb(path, picture)
            written.append(str(path))
    return written
