"""Submission strings and files: round trip and every validation error."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from retinanet.data.submission import (
    SubmissionError,
    count_boxes_past_edge,
    format_score_report,
    format_prediction_string,
    read_submission,
    score_submission,
    write_submission,
)


def test_format_prediction_string_orders_by_confidence_and_converts_to_xywh():
    boxes = [[10, 20, 110, 220], [300.25, 400, 500, 450.5]]
    text = format_prediction_string(boxes, [0.3, 0.91234])
    assert text == "0.9123 300.2 400.0 199.8 50.5 0.3000 10.0 20.0 100.0 200.0"


def test_format_prediction_string_without_boxes_is_empty():
    assert format_prediction_string(np.zeros((0, 4)), np.zeros(0)) == ""


def test_format_prediction_string_rejects_inverted_boxes():
    with pytest.raises(ValueError, match="x2 < x1"):
        format_prediction_string([[10, 10, 5, 20]], [0.5])


def test_write_then_read_round_trip(tmp_path):
    path = tmp_path / "submission.csv"
    predictions = {
        "b": (np.array([[10, 20, 110, 220], [300, 400, 500, 450]], np.float64), np.array([0.25, 0.75])),
        "c": (np.zeros((0, 4)), np.zeros(0)),
    }
    write_submission(path, predictions, ["a", "b", "c"])
    lines = path.read_text().splitlines()
    assert lines == ["patientId,PredictionString", "a,", "b,0.7500 300.0 400.0 200.0 50.0 0.2500 10.0 20.0 100.0 200.0",
                     "c,"]
    read = read_submission(path, expected_patient_ids=["a", "b", "c"])
    assert list(read) == ["a", "b", "c"]
    np.testing.assert_allclose(read["b"][0], [[300, 400, 500, 450], [10, 20, 110, 220]])
    np.testing.assert_allclose(read["b"][1], [0.75, 0.25])
    assert read["a"][0].shape == (0, 4) and read["a"][1].shape == (0,)
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # the temporary was renamed away


def test_write_submission_rejects_predictions_for_unlisted_patients(tmp_path):
    with pytest.raises(ValueError, match="stranger"):
        write_submission(tmp_path / "s.csv", {"stranger": ([[0, 0, 1, 1]], [0.5])}, ["a"])
    assert not (tmp_path / "s.csv").exists()


def write_text(tmp_path, text):
    path = tmp_path / "submission.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected_ids, message", [
    ("patientId,PredictionString\na,0.5 1 2 3\n", None, r":2: patient a: 4 values .* not a multiple of 5"),
    ("patientId,PredictionString\na,\nb,0.5 1 two 3 4\n", None, r":3: patient b: 'two' .* not a number"),
    ("patientId,PredictionString\na,0.5 1 2 -3 4\n", None, r":2: patient a: box 1 has negative size"),
    ("patientId,PredictionString\na,0.5 1 2 nan 4\n", None, r":2: patient a: non-finite"),
    ("patientId,PredictionString\na,\nb,\na,0.5 1 2 3 4\n", None,
     r":4: patient a: duplicate patientId \(first on line 2\)"),
    ("patientId,PredictionString\na,\nzed,\n", ["a"], r":3: patient zed: unknown patientId"),
    ("patientId,PredictionString\na,\n", ["a", "b"], r"no row for 1 expected patient\(s\): b"),
    ("patient,Prediction\na,\n", None, r":1: header must be patientId,PredictionString"),
    ("", None, r":1: header must be"),
    ("patientId,PredictionString\na,0.5 1 2 3 4,extra\n", None, r":2: patient a: 3 fields"),
])
def test_malformed_submissions_name_file_line_and_patient(tmp_path, text, expected_ids, message):
    path = write_text(tmp_path, text)
    with pytest.raises(SubmissionError, match=message) as error:
        read_submission(path, expected_patient_ids=expected_ids)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("prediction, message", [
    ("1.5 10 10 20 20", "box 1 has confidence 1.5, outside"),
    ("0.5 10 10 20 20 -0.1 10 10 20 20", "box 2 has confidence -0.1, outside"),
    ("0.5 10 10 20 -20", r"box 1 has negative size \(width 20, height -20\)"),
    ("0.5 10 10 inf 20", "non-finite value 'inf'"),
])
def test_confidence_outside_zero_one_and_negative_size_name_the_line(tmp_path, prediction, message):
    path = write_text(tmp_path, f"patientId,PredictionString\na,\nb,{prediction}\n")
    with pytest.raises(SubmissionError, match=f"{path}:3: patient b: {message}"):
        read_submission(path)


def test_boxes_past_the_image_edge_are_read_as_written(tmp_path):
    path = write_text(tmp_path, "patientId,PredictionString\na,0.5 -26.6 400.9 222.1 163 0.4 1000 1010 30 20\n")
    read = read_submission(path)
    np.testing.assert_allclose(read["a"][0], [[-26.6, 400.9, 195.5, 563.9], [1000, 1010, 1030, 1030]])
    assert count_boxes_past_edge(read, 1024) == 2


def test_boxes_on_the_image_edge_survive_the_rounding_of_the_written_values(tmp_path):
    # x1 = 0.05 and width 1023.95 are written as 0.1 and 1024.0: the box then ends at 1024.1,
    # within EDGE_TOLERANCE, so it does not count as reaching past the edge; 1024.6 does.
    path = tmp_path / "submission.csv"
    write_submission(path, {"a": ([[0.05, 0.05, 1024.0, 1024.0]], [1.0]), "b": ([[0, 0, 1024, 1024]], [0.0])},
                     ["a", "b"])
    assert path.read_text().splitlines()[1] == "a,1.0000 0.1 0.1 1024.0 1024.0"
    read = read_submission(path)
    np.testing.assert_allclose(read["a"][0], [[0.1, 0.1, 1024.1, 1024.1]])
    assert read["a"][1][0] == 1.0 and read["b"][1][0] == 0.0
    assert count_boxes_past_edge(read, 1024) == 0
    past = read_submission(write_text(tmp_path, "patientId,PredictionString\na,0.5 0 0 1024.6 10 0.4 -0.6 0 5 5\n"))
    assert count_boxes_past_edge(past, 1024) == 2


def test_missing_file_is_a_submission_error(tmp_path):
    with pytest.raises(SubmissionError, match="file not found"):
        read_submission(tmp_path / "absent.csv")


def test_pandas_style_rows_and_blank_lines_are_accepted(tmp_path):
    # A row without the trailing comma and a blank last line are both "no boxes" / nothing.
    path = write_text(tmp_path, "patientId,PredictionString\na\nb,0.5 0 0 10 10\n\n")
    read = read_submission(path, expected_patient_ids=["a", "b"])
    assert len(read["a"][1]) == 0
    np.testing.assert_allclose(read["b"][0], [[0, 0, 10, 10]])


def test_score_submission(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patientId,x,y,width,height,Target\n"
                      "p1,100,100,100,100,1\n"
                      "p2,,,,,0\n"
                      "p3,,,,,0\n")
    submission = tmp_path / "submission.csv"
    # p1: IoU (100 x 60) / (100 x 100) = 0.6 -> 1 at 5 of 8 thresholds = 0.625.
    # p2: a false positive -> 0. p3: nothing on either side -> skipped. Mean (0.625 + 0) / 2.
    write_submission(submission, {"p1": ([[100, 100, 200, 160]], [0.9]), "p2": ([[0, 0, 50, 50]], [0.4])},
                     ["p1", "p2", "p3"])
    result = score_submission(labels, submission)
    assert result["score"] == pytest.approx(0.3125)
    assert (result["num_images"], result["num_skipped"], result["num_patients"]) == (2, 1, 3)
    assert (result["num_ground_truth_boxes"], result["num_predicted_boxes"]) == (1, 2)
    assert result["num_boxes_past_edge"] == 0


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_submission_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_submission(tmp_path / "submission.csv", {}, ["p1"])
        (tmp_path / "plain.txt").write_text("")  # what any new file gets
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "submission.csv").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


def kaggle_iou(box_a, box_b) -> float:
    """IoU of two `x y w h` boxes as the competition's reference computes it: no clipping."""
    ax, ay, aw, ah = box_a
    bx, by, bw, bh = box_b
    width = min(ax + aw, bx + bw) - max(ax, bx)
    height = min(ay + ah, by + bh) - max(ay, by)
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    return intersection / (aw * ah + bw * bh - intersection)


def clip_to_image(box, size=1024):
    x1, y1 = max(box[0], 0), max(box[1], 0)
    x2, y2 = min(box[0] + box[2], size), min(box[1] + box[3], size)
    return (x1, y1, max(x2 - x1, 0), max(y2 - y1, 0))


def kaggle_metric(truth: dict, predicted: dict) -> float:
    """The competition metric from its definition, in plain Python on `x y w h` boxes.

    truth: {patient: [box, ...]}; predicted: {patient: [(confidence, box), ...]}. Per image and
    IoU threshold 0.40, 0.45, ..., 0.75: predictions by descending confidence, each ground-truth
    box (in order) takes the first unused prediction with IoU >= t; TP / (TP + FP + FN). The image
    score is the mean over thresholds; an image with neither ground truth nor prediction is skipped.
    """
    image_scores = []
    for patient, truth_boxes in truth.items():
        ranked = [box for _, box in sorted(predicted.get(patient, []), key=lambda item: -item[0])]
        if not truth_boxes and not ranked:
            continue
        per_threshold = []
        for threshold in [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]:
            used = set()
            for truth_box in truth_boxes:
                for index, box in enumerate(ranked):
                    if index not in used and kaggle_iou(truth_box, box) >= threshold:
                        used.add(index)
                        break
            true_positives = len(used)
            false_positives = len(ranked) - true_positives
            false_negatives = len(truth_boxes) - true_positives
            per_threshold.append(true_positives / (true_positives + false_positives + false_negatives))
        image_scores.append(sum(per_threshold) / len(per_threshold))
    return sum(image_scores) / len(image_scores)


def test_boxes_past_the_edge_score_as_the_competition_scores_them_unclipped(tmp_path):
    truth = {
        "p1": [(0, 400, 200, 160)],  # on the left edge
        "p2": [(900, 880, 124, 144), (100, 100, 100, 100)],  # the first in the bottom-right corner
        "p3": [],
        "p4": [],
    }
    predicted = {
        # As written the IoU is 200 / 280 = 0.714 (a miss at t = 0.75); clipped at x = 0 it would be 1.
        "p1": [(0.9, (-80.0, 400.0, 280.0, 160.0))],
        "p2": [(0.3, (100, 100, 100, 100)), (0.8, (910.0, 890.0, 160.0, 170.0)), (0.5, (1100, 1100, 20, 20))],
        "p3": [(0.2, (-50.0, -50.0, 60.0, 60.0))],  # a false positive, mostly outside the image
    }
    labels = tmp_path / "labels.csv"
    rows = ["patientId,x,y,width,height,Target"]
    for patient, boxes in truth.items():
        rows += [f"{patient},{x},{y},{w},{h},1" for x, y, w, h in boxes] or [f"{patient},,,,,0"]
    labels.write_text("\n".join(rows) + "\n")
    submission = tmp_path / "submission.csv"
    lines = ["patientId,PredictionString"]
    for patient in truth:
        lines.append(f"{patient}," + " ".join(f"{confidence} {x} {y} {w} {h}"
                                              for confidence, (x, y, w, h) in predicted.get(patient, [])))
    submission.write_text("\n".join(lines) + "\n")

    result = score_submission(labels, submission)
    expected = kaggle_metric(truth, predicted)
    assert result["score"] == pytest.approx(expected, abs=1e-12)
    assert 0 < expected < 1
    clipped = {patient: [(confidence, clip_to_image(box)) for confidence, box in boxes]
               for patient, boxes in predicted.items()}
    assert kaggle_metric(truth, clipped) > expected + 0.01  # clipping would change the score
    assert (result["num_images"], result["num_skipped"], result["num_predicted_boxes"]) == (3, 1, 5)
    assert result["num_boxes_past_edge"] == 4  # all but p2's (100, 100, 100, 100)
    assert "predicted boxes past the image edge (scored as they are): 4" in format_score_report(result)
