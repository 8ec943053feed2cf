"""Evaluate a trained run on its held-out split: `retinanet evaluate`.

The run's saved split file decides the patients (its `data.validation_fold`), or every patient
of another labelled data set (`labelled_set_records`); patients a model trained on are refused.
Detections come from `Detector` (flip TTA, image gating and box shrink as configured) over the
cached, preprocessed images. The output directory receives:

- `metrics.json` with the keys
    rsna_metric, threshold, threshold_source: the RSNA metric at the run's score threshold, the
        one inference and export use (threshold.json: chosen on validation by training, or by an
        earlier `--write-threshold`; else evaluation.score_threshold), and where it came from;
    best_rsna_metric, best_threshold: the best metric of the sweep and its threshold;
    per_iou_threshold: {"threshold": {iou: score}, "best": {iou: score}};
    ap50, coco_map: pycocotools-style AP at IoU 0.5 and mean over 0.50:0.95 (every detection
        above postprocessing.candidate_score_threshold, no evaluation threshold);
    image_level: {roc_auc, sensitivity, specificity, threshold, num_positive, num_negative}
        at postprocessing.image_gate_threshold, or null without the image head;
    counts: images, positive_images, ground_truth_boxes, predicted_boxes (at the run's
        threshold), predicted_boxes_best, scored_images, skipped_images;
    sweep: [{score_threshold, rsna_metric, num_images}];
    localization: where the metric is lost, for the boxes kept at the run's threshold
        (`retinanet.detection.localization`): per_iou_threshold [{iou, true_positives,
        false_positives, false_negatives, hit_rate}], true_boxes, matched_boxes, the quartiles of
        matched_iou, width_ratio, height_ratio, centre_offset_x, centre_offset_y, and the RSNA
        metric by_true_boxes ("0", "1", "2", "3+") and by_view (from the DICOM headers);
    image_gating: what gating boxes by the image-level probability (p < postprocessing.
        image_gate_threshold empties an image) would do at the best threshold, when the model
        has the image head and postprocessing.image_gating is "none" (else null):
        {threshold, gate_threshold, images_emptied, removed_boxes_negative_images (false
        positives all), removed_boxes_positive_images, rsna_metric, rsna_metric_gated};
    predictions_csv, overlays, source (config, weights, split_file or data, validation_fold):
        the files written and used (config and weights: lists, one per model, for an ensemble).
  Non-finite values (e.g. AUC with one class only) are written as null. Its paths (RECORD_PATHS)
  are written by `run_directory.record_path`: relative to the output directory for the files inside it
  or beside it (`--output <run>/evaluation` gives `../config.yaml`), absolute for the others;
  `read_metrics` reads them back as absolute paths.
- `predictions.csv`: Kaggle format, the boxes kept at the run's threshold (the one
  `rsna_metric` describes; `retinanet score` on it gives the same number);
- `threshold_sweep.png`, `precision_recall.png` (the used and the best thresholds marked),
  `froc.png`, `image_roc.png` (with the image head), and
  `overlays/{best,worst}_<k>_<patientId>.png`: the original image with the boxes kept at the
  best threshold (the one `--write-threshold` hands to inference), truth green, predictions
  red, TP/FP/FN marks, the threshold and p(pneumonia) (see `retinanet.visualize`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retinanet.errors import UserError
from retinanet import run_directory
from retinanet.builders import build_dataset_and_records
from retinanet.data.split import default_split_file, read_data_set
from retinanet.data.rsna import Record
from retinanet.data.views import view_positions_from_images
from retinanet.detection.detections import keep_above, predict_dataset
from retinanet.detection.localization import format_localization, localization_report
from retinanet.serve.ensembles import check_held_out, resolve_ensemble, with_overrides
from retinanet.evaluate.plots import plot_froc, plot_image_roc, plot_precision_recall, plot_sweep, write_overlays
from retinanet.serve.inference import Detector
from retinanet.detection.metrics import (IOU_THRESHOLDS, average_precision, coco_map, image_level_metrics, rsna_metric,
                                         sweep_thresholds, threshold_sweep)
from retinanet.runtime.safe_writes import json_ready, make_directory
from retinanet.data.submission import write_submission


METRICS_FILE = "metrics.json"
# The paths of metrics.json: top-level keys and keys of "source"; a value is a path or a list of them.
RECORD_PATHS = ("predictions_csv", "overlays")
SOURCE_PATHS = ("config", "weights", "split_file", "data")


class EvaluationError(UserError, ValueError):
    """Evaluation cannot run (missing split file, nothing to evaluate)."""


def labelled_set_records(config, data_root, output_dir) -> list[Record]:
    """Every patient of another labelled data set in the RSNA layout (the config's CSV and image
    folder names under `data_root`): data that none of the runs' folds held. Label problems follow
    data.bad_file_policy; skips are listed in `<output_dir>/skipped_labels.csv`."""
    root = Path(data_root)
    if not root.is_dir():
        raise EvaluationError(f"--data {root}: not a directory")
    records, _ = read_data_set(config, root, Path(output_dir) / "skipped_labels.csv")
    if not records:
        raise EvaluationError(f"--data {root}: no patients to evaluate")
    return records


def predict_records(detector: Detector, records: list[Record], progress: bool = True):
    """Detections for records -> (records used, {patient_id: (boxes [M, 4], scores [M])}, probabilities [N] or None).

    Boxes are in original pixels, clipped to the image; every detection above
    postprocessing.candidate_score_threshold is kept.
    """
    dataset, records = build_dataset_and_records(detector.config, "validation", records=records, training=False,
                                                 progress=progress, anchor_set=detector.anchor_set)
    predicted = predict_dataset(detector.forward, dataset, progress, "evaluating")
    by_patient = {record.patient_id: detection for record, detection in zip(records, predicted.detections)}
    return records, by_patient, predicted.probabilities


def compute_metrics(records: list[Record], detections: dict, probabilities, *, threshold: float, sweep,
                    image_threshold: float, views: dict | None = None) -> dict:
    """All measures of the module docstring's metrics.json except "threshold_source", "predictions_csv"
    and "source"; `threshold` is the operating point, at which the localization report
    (`retinanet.detection.localization`) looks at the kept boxes, by the `views` ({patient: view}) given."""
    ground_truth = {record.patient_id: record.boxes for record in records}
    thresholds = sweep_thresholds(sweep)
    results = threshold_sweep(ground_truth, detections, list(thresholds) + [threshold])
    operating, swept = results[-1], results[:-1]
    sweep_scores = np.array([item["score"] for item in swept])
    best = swept[int(np.nanargmax(sweep_scores))] if np.isfinite(sweep_scores).any() else operating
    image_level = None
    if probabilities is not None:
        labels = np.array([record.target for record in records])
        image_level = image_level_metrics(labels, probabilities, threshold=image_threshold)

    def boxes_kept(at: float) -> int:
        return int(sum(int((scores >= at).sum()) for _, scores in detections.values()))

    return {
        "rsna_metric": operating["score"],
        "threshold": float(threshold),
        "best_rsna_metric": best["score"],
        "best_threshold": best["score_threshold"],
        "per_iou_threshold": {"threshold": operating["per_threshold"], "best": best["per_threshold"]},
        "ap50": average_precision(ground_truth, detections, 0.5),
        "coco_map": coco_map(ground_truth, detections),
        "image_level": image_level,
        "counts": {"images": len(records), "positive_images": int(sum(r.target for r in records)),
                   "ground_truth_boxes": int(sum(len(r.boxes) for r in records)),
                   "predicted_boxes": boxes_kept(threshold),
                   "predicted_boxes_best": boxes_kept(best["score_threshold"]),
                   "scored_images": operating["num_images"], "skipped_images": operating["num_skipped"]},
        "sweep": [{"score_threshold": item["score_threshold"], "rsna_metric": item["score"],
                   "num_images": item["num_images"]} for item in swept],
        "localization": localization_report(ground_truth, keep_above(detections, threshold), views),
    }


def gating_effect(records: list[Record], detections: dict, probabilities, *, threshold: float,
                  gate_threshold: float) -> dict:
    """What emptying the images of probability < gate_threshold does to the boxes kept at
    `threshold` (see `image_gating` in the module docstring)."""
    kept = keep_above(detections, threshold)
    gated = {record.patient_id for record, probability in zip(records, probabilities) if probability < gate_threshold}
    removed = {True: 0, False: 0}
    for record in records:
        if record.patient_id in gated:
            removed[bool(record.target)] += len(kept[record.patient_id][1])
    empty = (np.zeros((0, 4)), np.zeros(0))
    ground_truth = {record.patient_id: record.boxes for record in records}
    return {"threshold": float(threshold), "gate_threshold": float(gate_threshold),
            "images_emptied": sum(1 for patient_id in gated if len(kept[patient_id][1])),
            "removed_boxes_negative_images": removed[False], "removed_boxes_positive_images": removed[True],
            "rsna_metric": rsna_metric(ground_truth, kept)["score"],
            "rsna_metric_gated": rsna_metric(ground_truth, {patient_id: empty if patient_id in gated else boxes
                                                            for patient_id, boxes in kept.items()})["score"]}


def evaluate(detector: Detector, records: list[Record], output_dir, *, progress: bool = True) -> dict:
    """Predict, measure and write every output of the module docstring; returns the metrics."""
    output_dir = make_directory(output_dir)
    config = detector.config
    records, detections, probabilities = predict_records(detector, records, progress)
    views, _ = view_positions_from_images(records)  # a header that gives none: the "unknown" group
    metrics = compute_metrics(records, detections, probabilities, threshold=detector.threshold,
                              sweep=config.evaluation.sweep,
                              image_threshold=config.postprocessing.image_gate_threshold, views=views)
    metrics["threshold_source"] = detector.threshold_origin
    kept = keep_above(detections, detector.threshold)
    write_submission(output_dir / "predictions.csv", kept, [record.patient_id for record in records])
    metrics["predictions_csv"] = str(output_dir / "predictions.csv")
    chosen = metrics["best_threshold"]
    metrics["image_gating"] = None
    if probabilities is not None and config.postprocessing.image_gating == "none":
        metrics["image_gating"] = gating_effect(records, detections, probabilities, threshold=chosen,
                                                gate_threshold=config.postprocessing.image_gate_threshold)
    plot_sweep(metrics, output_dir / "threshold_sweep.png")
    plot_precision_recall(records, detections, output_dir / "precision_recall.png", metrics["ap50"],
                          {"used": detector.threshold, "best": chosen})
    plot_froc(records, detections, output_dir / "froc.png", chosen)
    by_patient = None
    if probabilities is not None:
        labels = [record.target for record in records]
        plot_image_roc(labels, probabilities, output_dir / "image_roc.png", metrics["image_level"])
        by_patient = {record.patient_id: float(p) for record, p in zip(records, probabilities)}
    metrics["overlays"] = write_overlays(records, keep_above(detections, chosen), output_dir / "overlays",
                                         config.evaluation.num_overlays, threshold=chosen, probabilities=by_patient,
                                         memory_limit_mib=config.data.decode_memory_mib)
    return metrics


def evaluate_run(*, output_dir, run_dir=None, checkpoint=None, config_path=None, split_file=None, data_root=None,
                 threshold: float | None = None, write_threshold: bool = False, progress: bool = True,
                 overrides=()) -> dict:
    """`retinanet evaluate`: load the run, evaluate its held-out split, write metrics.json; returns
    the metrics with their paths as given (not as metrics.json stores them, see `read_metrics`).

    The operating threshold is `threshold` ("--threshold"), else the run's, as for inference: its
    threshold.json (chosen on validation by training, or by an earlier `write_threshold`), else
    evaluation.score_threshold.
    With `write_threshold`, the best threshold of this evaluation replaces it in
    `<run_dir>/threshold.json`. `run_dir` may be a list: an ensemble
    (`retinanet.serve.ensembles`), evaluated on the first run's held-out fold of `split_file`, which
    must hold no patient any of its runs trained on; its threshold goes to the
    cross-validation directory given. With `data_root`, every patient of that labelled data set
    is evaluated instead (`labelled_set_records`). Evaluating patients a model trained on is
    refused whenever its run's split.csv tells. `overrides` (`section.key=value`) change the
    post-processing and evaluation settings of the runs' configs for this evaluation.
    """
    ensemble = with_overrides(resolve_ensemble(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path),
                              overrides)
    if write_threshold and ensemble.threshold_dir is None:
        raise EvaluationError("--write-threshold with several runs: they have no common directory for "
                              f"{run_directory.THRESHOLD_FILE}; pass --threshold to infer and export instead")
    config = ensemble.config
    if data_root is not None:
        records = labelled_set_records(config, data_root, output_dir)
        evaluated = {"data": str(data_root)}
    else:
        used_split = Path(split_file) if split_file is not None else default_split_file(config)
        records = run_directory.held_out_records(config, used_split, progress)
        evaluated = {"split_file": str(used_split), "validation_fold": config.data.validation_fold}
    unchecked = check_held_out(ensemble, [record.patient_id for record in records])
    if unchecked:
        print(f"note: no {run_directory.SPLIT_FILE} in {', '.join(unchecked)}: not checked for training on the "
              "evaluated patients")
    detector = Detector.from_ensemble(ensemble, threshold, threshold_origin="--threshold")
    metrics = evaluate(detector, records, output_dir, progress=progress)
    configs = [str(source.config_path) for source in ensemble.sources]
    weights = [str(source.weights) for source in ensemble.sources]
    # One run: paths; an ensemble: a list of them, one per model.
    metrics["source"] = {"config": configs[0] if len(configs) == 1 else configs,
                         "weights": weights[0] if len(weights) == 1 else weights, **evaluated}
    metrics = json_ready(metrics)
    metrics_file = write_metrics(metrics, output_dir)
    if write_threshold:
        path = run_directory.write_threshold(ensemble.threshold_dir, metrics["best_threshold"],
                                             metrics["best_rsna_metric"], "evaluation", metrics_file=metrics_file)
        metrics["threshold_file"] = str(path)
    return metrics


def _map_record_paths(metrics: dict, change) -> dict:
    """`metrics` with `change(path)` applied to every path of RECORD_PATHS and SOURCE_PATHS."""

    def each(value):
        return [change(item) for item in value] if isinstance(value, list) else change(value)

    mapped = {key: each(value) if key in RECORD_PATHS else value for key, value in metrics.items()}
    if isinstance(mapped.get("source"), dict):
        mapped["source"] = {key: each(value) if key in SOURCE_PATHS and value is not None else value
                            for key, value in mapped["source"].items()}
    return mapped


def write_metrics(metrics: dict, output_dir) -> Path:
    """`<output_dir>/metrics.json` with its paths as `run_directory.record_path` writes them; returns its path."""
    path = Path(output_dir) / METRICS_FILE
    stored = _map_record_paths(metrics, lambda value: run_directory.record_path(value, output_dir))
    run_directory.write_json_atomically(path, stored)
    return path


def read_metrics(output_dir) -> dict:
    """`<output_dir>/metrics.json` with its paths absolute (older files' paths too, see
    `run_directory.resolve_record_path`)."""
    metrics = json.loads((Path(output_dir) / METRICS_FILE).read_text())
    return _map_record_paths(metrics, lambda value: run_directory.resolve_record_path(value, output_dir))


def format_report(metrics: dict) -> str:
    """metrics.json contents -> a printable summary table."""

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [run_directory.threshold_line(metrics["threshold"], metrics["threshold_source"]), "",
             "                 threshold  RSNA metric",
             f"used             {metrics['threshold']:9.3f}  {number(metrics['rsna_metric'])}",
             f"best of sweep    {metrics['best_threshold']:9.3f}  {number(metrics['best_rsna_metric'])}",
             "", "IoU threshold        used    best"]
    operating, best = metrics["per_iou_threshold"]["threshold"], metrics["per_iou_threshold"]["best"]
    for iou in IOU_THRESHOLDS:
        lines.append(f"{iou:13.2f}  {number(operating[str(iou)]):>10}  {number(best[str(iou)]):>6}")
    lines += ["", f"AP50:     {number(metrics['ap50'])}", f"COCO mAP: {number(metrics['coco_map'])}"]
    if metrics["image_level"] is not None:
        image = metrics["image_level"]
        lines.append(f"image level: AUC {number(image['roc_auc'])}, sensitivity {number(image['sensitivity'])}, "
                     f"specificity {number(image['specificity'])} at p >= {image['threshold']:.2f}")
    gating = metrics.get("image_gating")
    if gating and gating["removed_boxes_negative_images"]:
        lines.append(f"note: image gating (postprocessing.image_gating: gate, p >= {gating['gate_threshold']:.2f}) "
                     f"would remove {gating['removed_boxes_negative_images']} false-positive box(es) from images "
                     f"without pneumonia and {gating['removed_boxes_positive_images']} box(es) from images with it; "
                     f"RSNA metric at threshold {gating['threshold']:.2f}: {number(gating['rsna_metric'])} -> "
                     f"{number(gating['rsna_metric_gated'])}")
    if metrics.get("localization"):  # metrics.json of earlier versions has none
        lines += ["", f"Localization of the boxes kept at the used threshold {metrics['threshold']:.3f}:",
                  *format_localization(metrics["localization"])]
    counts = metrics["counts"]
    lines += ["", ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items())]
    lines.append(f"predictions: {metrics['predictions_csv']}")
    if "threshold_file" in metrics:
        lines.append(f"best threshold written to {metrics['threshold_file']}")
    return "\n".join(lines)
