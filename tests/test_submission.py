"""Submission strings and files: round trip and every validation error."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from retinanet.submission import (
    SubmissionError,
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
    ("0.5 1000 10 30 20", r"box 1 \(1000 10 30 20\) lies outside the 1024 px image"),
    ("0.5 10 1010 20 20", r"box 1 \(10 1010 20 20\) lies outside the 1024 px image"),
    ("0.5 -3 10 20 20", r"box 1 \(-3 10 20 20\) lies outside the 1024 px image"),
])
def test_confidence_outside_zero_one_and_box_outside_the_image_name_the_line(tmp_path, prediction, message):
    path = write_text(tmp_path, f"patientId,PredictionString\na,\nb,{prediction}\n")
    with pytest.raises(SubmissionError, match=f"{path}:3: patient b: {message}"):
        read_submission(path, image_size=1024)


def test_boxes_on_the_image_edge_survive_the_rounding_of_the_written_values(tmp_path):
    # x1 = 0.05 and width 1023.95 are written as 0.1 and 1024.0: the box then ends at 1024.1.
    path = tmp_path / "submission.csv"
    write_submission(path, {"a": ([[0.05, 0.05, 1024.0, 1024.0]], [1.0]), "b": ([[0, 0, 1024, 1024]], [0.0])},
                     ["a", "b"])
    assert path.read_text().splitlines()[1] == "a,1.0000 0.1 0.1 1024.0 1024.0"
    read = read_submission(path, image_size=1024)
    np.testing.assert_allclose(read["a"][0], [[0.1, 0.1, 1024.1, 1024.1]])
    assert read["a"][1][0] == 1.0 and read["b"][1][0] == 0.0
    with pytest.raises(SubmissionError, match="outside the 1024 px image"):
        read_submission(write_text(tmp_path, "patientId,PredictionString\na,0.5 0 0 1024.6 10\n"), image_size=1024)


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
