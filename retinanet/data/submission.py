"""Kaggle submission files at the package edge: `patientId,PredictionString`.

A PredictionString is `c x y w h c x y w h ...` (confidence, top-left corner, width, height in
original pixels), most confident first; empty for no boxes. Inside the package boxes are
`x1, y1, x2, y2`. Every problem found names the file, the CSV line (the header is line 1) and
the patientId. A box reaching past the image edge is legal, as in the competition, which scores
it as it is (it only overlaps less); `score_submission` counts such boxes, and nothing clips them.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from retinanet.data.rsna import read_labels
from retinanet.detection.metrics import rsna_metric
from retinanet.errors import UserError
from retinanet.runtime.safe_writes import make_directory, write_text_atomically

HEADER = ("patientId", "PredictionString")
VALUES_PER_BOX = 5  # confidence, x, y, width, height
# Coordinates are written with one decimal, each rounded on its own: a box clipped to the image
# edge can then end a rounding step beyond it. Half a pixel covers that and nothing more, so such
# a box is not counted as reaching past the edge.
EDGE_TOLERANCE = 0.5  # pixels


class SubmissionError(UserError, ValueError):
    """A submission CSV that breaks the Kaggle format."""


def format_prediction_string(boxes_xyxy, scores) -> str:
    """boxes [M, 4] (`x1, y1, x2, y2`, original pixels), scores [M] -> "c x y w h ..." ("" if M = 0).

    Confidence has 4 decimals, coordinates 1 decimal; boxes are written most confident first.
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("non-finite box coordinate or score")
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if (widths < 0).any() or (heights < 0).any():
        raise ValueError("box with x2 < x1 or y2 < y1 (boxes are x1, y1, x2, y2)")
    parts = []
    for index in np.argsort(-scores, kind="stable"):
        x, y = boxes[index, :2]
        parts.append(f"{scores[index]:.4f} {x:.1f} {y:.1f} {widths[index]:.1f} {heights[index]:.1f}")
    return " ".join(parts)


def write_submission(path: str | Path, predictions: dict, patient_ids) -> None:
    """Write one row per patient of `patient_ids`, in that order; absent patients get no boxes.

    predictions: {patient_id: (boxes [M, 4] `x1, y1, x2, y2`, scores [M])}. A prediction for a
    patient not in `patient_ids` is a ValueError (it would otherwise be dropped unseen). The
    file is written whole or not at all (retinanet/runtime/safe_writes.py): a crash or a full disk never
    leaves half a submission, and a directory that cannot be written is a FileWriteError.
    """
    patient_ids = list(patient_ids)
    if len(set(patient_ids)) != len(patient_ids):
        duplicate = next(p for p in patient_ids if patient_ids.count(p) > 1)
        raise ValueError(f"patient_ids lists {duplicate!r} more than once")
    unknown = set(predictions) - set(patient_ids)
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} patient(s) not in patient_ids, e.g. {sorted(unknown)[0]!r}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    for patient_id in patient_ids:
        boxes, scores = predictions.get(patient_id, (np.zeros((0, 4)), np.zeros(0)))
        writer.writerow((patient_id, format_prediction_string(boxes, scores)))
    path = Path(path)
    make_directory(path.parent)
    write_text_atomically(path, text.getvalue())


def parse_prediction_string(text: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """"c x y w h ..." -> (boxes [M, 4] `x1, y1, x2, y2`, scores [M]); SubmissionError naming `where`.

    Every value must be a finite number, confidences must lie in [0, 1] and sizes must not be
    negative. Boxes may reach past the image edge: they are returned as written, not clipped.
    """
    tokens = text.split()
    if len(tokens) % VALUES_PER_BOX:
        raise SubmissionError(f"{where}: {len(tokens)} values in PredictionString, "
                              f"not a multiple of {VALUES_PER_BOX} (confidence x y width height)")
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise SubmissionError(f"{where}: {token!r} in PredictionString is not a number") from None
        if not math.isfinite(value):
            raise SubmissionError(f"{where}: non-finite value {token!r} in PredictionString")
        values.append(value)
    rows = np.array(values, np.float64).reshape(-1, VALUES_PER_BOX)
    for box_index, (confidence, _, _, width, height) in enumerate(rows):
        if not 0 <= confidence <= 1:
            raise SubmissionError(f"{where}: box {box_index + 1} has confidence {confidence:g}, outside [0, 1]")
        if width < 0 or height < 0:
            raise SubmissionError(f"{where}: box {box_index + 1} has negative size "
                                  f"(width {width:g}, height {height:g})")
    boxes = np.concatenate([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], axis=1)
    return boxes, rows[:, 0]


def read_submission(path: str | Path, expected_patient_ids=None) -> dict:
    """Parse and validate a submission -> {patient_id: (boxes [M, 4] float64 `x1, y1, x2, y2`, scores [M])}.

    With `expected_patient_ids`, every row's patient must be expected and every expected patient
    must have a row. Boxes past the image edge are kept as written (see `count_boxes_past_edge`).
    Blank lines are ignored; anything else malformed raises SubmissionError.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    expected = None if expected_patient_ids is None else set(expected_patient_ids)
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    line_of: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # -sig: spreadsheets add a BOM
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None or tuple(name.strip() for name in header) != HEADER:
                raise SubmissionError(f"{path}:1: header must be {','.join(HEADER)}, got "
                                      f"{','.join(header) if header else 'an empty file'!r}")
            for row in reader:
                line = reader.line_num
                if not any(field.strip() for field in row):
                    continue
                patient_id = row[0].strip()
                where = f"{path}:{line}: patient {patient_id}"
                if not patient_id:
                    raise SubmissionError(f"{path}:{line}: empty patientId")
                if len(row) > len(HEADER):
                    raise SubmissionError(f"{where}: {len(row)} fields, expected {len(HEADER)}")
                if patient_id in line_of:
                    raise SubmissionError(f"{where}: duplicate patientId (first on line {line_of[patient_id]})")
                if expected is not None and patient_id not in expected:
                    raise SubmissionError(f"{where}: unknown patientId (not among the expected patients)")
                line_of[patient_id] = line
                predictions[patient_id] = parse_prediction_string(row[1] if len(row) > 1 else "", where)
    except (csv.Error, UnicodeDecodeError) as error:
        raise SubmissionError(f"{path}: not a readable CSV: {error}") from None
    if expected is not None:
        missing = [p for p in expected_patient_ids if p not in predictions]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise SubmissionError(f"{path}: no row for {len(missing)} expected patient(s): {shown}")
    return predictions


def count_boxes_past_edge(predictions: dict, image_size: float) -> int:
    """How many predicted boxes reach past the square image of side `image_size` by more than
    EDGE_TOLERANCE. predictions: {patient_id: (boxes [M, 4] `x1, y1, x2, y2`, scores [M])}."""
    count = 0
    for boxes, _ in predictions.values():
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        past = (boxes[:, :2] < -EDGE_TOLERANCE).any(axis=1) | (boxes[:, 2:] > image_size + EDGE_TOLERANCE).any(axis=1)
        count += int(past.sum())
    return count


def score_submission(labels_csv: str | Path, submission_csv: str | Path, image_size: float = 1024) -> dict:
    """Score a submission against a labels CSV with the competition metric.

    Label boxes must lie inside the `image_size` image; predicted boxes past its edge are scored
    as they are, as the competition does, and counted. Returns the keys of `rsna_metric` plus
    "num_patients", "num_ground_truth_boxes", "num_predicted_boxes" and "num_boxes_past_edge".
    Raises LabelError or SubmissionError on malformed files.
    """
    records, _ = read_labels(labels_csv, image_size=image_size)  # policy "error": nothing skipped
    ground_truth = {record.patient_id: record.boxes for record in records}
    predictions = read_submission(submission_csv, expected_patient_ids=list(ground_truth))
    result = rsna_metric(ground_truth, predictions)
    result["num_patients"] = len(ground_truth)
    result["num_ground_truth_boxes"] = sum(len(boxes) for boxes in ground_truth.values())
    result["num_predicted_boxes"] = sum(len(scores) for _, scores in predictions.values())
    result["num_boxes_past_edge"] = count_boxes_past_edge(predictions, image_size)
    return result


def format_score_report(result: dict) -> str:
    """A `score_submission` result -> printable text: the score, a per-threshold table, the counts."""
    lines = [f"RSNA metric: {result['score']:.4f}", "", "IoU threshold  mean score"]
    lines += [f"{threshold:>13.2f}  {score:.4f}" for threshold, score in result["per_threshold"].items()]
    counts = [
        ("patients", result["num_patients"]),
        ("scored images", result["num_images"]),
        ("skipped images (no boxes on either side)", result["num_skipped"]),
        ("ground-truth boxes", result["num_ground_truth_boxes"]),
        ("predicted boxes", result["num_predicted_boxes"]),
        ("predicted boxes past the image edge (scored as they are)", result["num_boxes_past_edge"]),
    ]
    lines += [""] + [f"{name}: {count}" for name, count in counts]
    return "\n".join(lines)
