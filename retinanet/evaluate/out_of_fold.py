"""Out-of-fold predictions of a cross-validation and what they measure (numpy and pandas only).

Each patient is predicted once, by the fold model that never trained on it. Pooled, these
predictions choose one score threshold for all folds and give the RSNA metric of the whole
training set, with per-fold values and a bootstrap interval over patients.

The predictions file (`oof_predictions.csv`) has the columns
    patientId, fold, PredictionString, image_probability
PredictionString as in a Kaggle submission (`c x y w h ...`, original pixels) holding every
detection above postprocessing.candidate_score_threshold; image_probability is empty without the
image-level head.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from retinanet.detection.metrics import image_score_table
from retinanet.data.submission import format_prediction_string, parse_prediction_string
from retinanet.errors import UserError
from retinanet.runtime.safe_writes import write_text_atomically

PREDICTION_COLUMNS = ("patientId", "fold", "PredictionString", "image_probability")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
# Resamples are drawn in chunks of about this many patient indices, so that 1000 resamples
# of the 26,684 RSNA patients need tens of megabytes, not gigabytes.
BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


class OutOfFoldError(UserError, ValueError):
    """An out-of-fold predictions file that cannot be used; names the file and line."""


def write_predictions(path: Path, rows) -> None:
    """rows: (patient_id, fold, boxes [M, 4] `x1, y1, x2, y2` original pixels, scores [M],
    image probability or None) -> the CSV of the module docstring, written whole or not at all."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for patient_id, fold, boxes, scores, probability in rows:
        writer.writerow((patient_id, int(fold), format_prediction_string(boxes, scores),
                         "" if probability is None else f"{probability:.6f}"))
    write_text_atomically(path, text.getvalue())


def read_predictions(path: Path) -> tuple[dict, dict, dict]:
    """The CSV of the module docstring -> ({patient_id: (boxes, scores)}, {patient_id: fold},
    {patient_id: image probability or None}); OutOfFoldError naming the line if malformed."""
    path = Path(path)
    predictions, folds, probabilities = {}, {}, {}
    with open(path, newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or tuple(header) != PREDICTION_COLUMNS:
            raise OutOfFoldError(f"{path}:1: header must be {','.join(PREDICTION_COLUMNS)}, got {header}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != len(PREDICTION_COLUMNS):
                raise OutOfFoldError(f"{where}: {len(row)} fields, expected {len(PREDICTION_COLUMNS)}")
            patient_id, fold, prediction, probability = row
            if patient_id in folds:
                raise OutOfFoldError(f"{where}: patient {patient_id} predicted twice")
            try:
                folds[patient_id] = int(fold)
                probabilities[patient_id] = float(probability) if probability else None
                predictions[patient_id] = parse_prediction_string(prediction, f"{where}: patient {patient_id}")
            except ValueError as error:  # SubmissionError is a ValueError too
                raise OutOfFoldError(f"{where}: {error}") from None
    return predictions, folds, probabilities


def pooled_metric(image_scores: np.ndarray) -> np.ndarray:
    """Image scores [N, K] (NaN = skipped) -> the RSNA metric [K] of the images pooled; NaN where
    no image counts."""
    counted = ~np.isnan(image_scores)
    totals = np.where(counted, image_scores, 0.0).sum(axis=0)
    counts = counted.sum(axis=0)
    return np.divide(totals, counts, out=np.full(totals.shape, np.nan), where=counts > 0)


def bootstrap_interval(image_scores: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the RSNA metric over patients: image_scores [N] (NaN =
    skipped image) -> (low, high).

    Each resample draws N patients with replacement (skipped ones too: they are part of the
    population, they only do not count) and takes the metric of the images that count. (NaN,
    NaN) when no image counts.
    """
    image_scores = np.asarray(image_scores, np.float64).reshape(-1)
    num_patients = len(image_scores)
    counted = ~np.isnan(image_scores)
    if not counted.any():
        return math.nan, math.nan
    filled = np.where(counted, image_scores, 0.0)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // num_patients)
    statistics = []
    for start in range(0, resamples, chunk):
        indices = rng.integers(0, num_patients, size=(min(chunk, resamples - start), num_patients))
        totals, counts = filled[indices].sum(axis=1), counted[indices].sum(axis=1)
        statistics.append(np.divide(totals, counts, out=np.full(totals.shape, np.nan), where=counts > 0))
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.nanpercentile(np.concatenate(statistics), [tail, 100 - tail])
    return float(low), float(high)


def _best(curve: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(best metric, its threshold; the lowest one on ties) of a sweep; NaN, NaN if nothing is scored."""
    if not np.isfinite(curve).any():
        return math.nan, math.nan
    index = int(np.nanargmax(curve))
    return float(curve[index]), float(thresholds[index])


def analyse(ground_truth: dict, predictions: dict, folds: dict, thresholds, configured_threshold: float) -> dict:
    """Pool the out-of-fold predictions: the sweep, the chosen threshold, per-fold values, intervals.

    ground_truth {patient_id: boxes [N, 4]}, predictions {patient_id: (boxes, scores)} and folds
    {patient_id: fold} cover the same patients. Returns {"threshold", "rsna_metric" (at it),
    "interval" [low, high], "configured_threshold", "rsna_metric_configured", "num_patients",
    "sweep" [{score_threshold, rsna_metric}], "folds" [{fold, num_patients, num_positive,
    rsna_metric (at the out-of-fold threshold), interval, best_rsna_metric, best_threshold,
    sweep [metric per threshold]}]}.
    """
    if set(folds) != set(ground_truth) or not set(predictions) <= set(ground_truth):
        raise OutOfFoldError("the out-of-fold predictions and the held-out patients of the folds differ")
    patient_ids = list(ground_truth)
    thresholds = np.asarray(list(thresholds) + [configured_threshold], np.float64)
    table = image_score_table(ground_truth, predictions, thresholds)
    swept, configured_column = table[:, :-1], table[:, -1]
    thresholds = thresholds[:-1]
    curve = pooled_metric(swept)
    metric, threshold = _best(curve, thresholds)
    chosen = int(np.flatnonzero(thresholds == threshold)[0]) if math.isfinite(threshold) else None
    fold_of = np.array([folds[patient_id] for patient_id in patient_ids])
    positive = np.array([len(ground_truth[patient_id]) > 0 for patient_id in patient_ids])

    def at_chosen(rows: np.ndarray) -> tuple[float, list[float]]:
        if chosen is None:
            return math.nan, [math.nan, math.nan]
        return float(pooled_metric(swept[rows, chosen][:, None])[0]), list(bootstrap_interval(swept[rows, chosen]))

    per_fold = []
    for fold in sorted(set(fold_of.tolist())):
        rows = fold_of == fold
        fold_curve = pooled_metric(swept[rows])
        fold_metric, fold_interval = at_chosen(rows)
        best_metric, best_threshold = _best(fold_curve, thresholds)
        per_fold.append({"fold": fold, "num_patients": int(rows.sum()), "num_positive": int(positive[rows].sum()),
                         "rsna_metric": fold_metric, "interval": fold_interval, "best_rsna_metric": best_metric,
                         "best_threshold": best_threshold, "sweep": fold_curve.tolist()})
    _, interval = at_chosen(np.ones(len(patient_ids), bool))
    return {"threshold": threshold, "rsna_metric": metric, "interval": interval,
            "configured_threshold": float(configured_threshold),
            "rsna_metric_configured": float(pooled_metric(configured_column[:, None])[0]),
            "num_patients": len(patient_ids), "num_positive": int(positive.sum()),
            "sweep": [{"score_threshold": float(t), "rsna_metric": float(m)} for t, m in zip(thresholds, curve)],
            "folds": per_fold}


SUMMARY_COLUMNS = ("fold", "patients", "positive", "best_step", "rsna_metric", "ci_low", "ci_high",
                   "best_rsna_metric", "best_threshold")


def summary_rows(analysis: dict, best_steps: dict) -> list[dict]:
    """One row per fold, then the out-of-fold row; the metric is at the out-of-fold threshold.
    best_steps: {fold: the training step of its best weights}."""
    rows = [{"fold": str(item["fold"]), "patients": item["num_patients"], "positive": item["num_positive"],
             "best_step": best_steps.get(item["fold"]), "rsna_metric": item["rsna_metric"],
             "ci_low": item["interval"][0], "ci_high": item["interval"][1],
             "best_rsna_metric": item["best_rsna_metric"], "best_threshold": item["best_threshold"]}
            for item in analysis["folds"]]
    rows.append({"fold": "out-of-fold", "patients": analysis["num_patients"], "positive": analysis["num_positive"],
                 "best_step": None, "rsna_metric": analysis["rsna_metric"], "ci_low": analysis["interval"][0],
                 "ci_high": analysis["interval"][1], "best_rsna_metric": analysis["rsna_metric"],
                 "best_threshold": analysis["threshold"]})
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def write_summary(rows: list[dict], csv_path: Path, markdown_path: Path) -> str:
    """Write the rows as CSV and as a markdown table; returns the markdown (also for printing)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _cell(row[key]) for key in SUMMARY_COLUMNS} for row in rows)
    write_text_atomically(csv_path, table.getvalue())
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[key]) for key in SUMMARY_COLUMNS) + " |" for row in rows]
    markdown = "\n".join(lines) + "\n"
    write_text_atomically(markdown_path, markdown)
    return markdown
