"""scripts/score.py end to end, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY_ROOT / "scripts" / "score.py"

LABELS = ("patientId,x,y,width,height,Target\n"
          "p1,100,100,100,100,1\n"
          "p1,500,500,200,300,1\n"
          "p2,,,,,0\n"
          "p3,,,,,0\n")


def run_score(labels: Path, submission: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--labels", str(labels), "--submission", str(submission)],
                          capture_output=True, text=True, cwd=REPOSITORY_ROOT, timeout=120)


@pytest.fixture
def labels(tmp_path) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(LABELS)
    return path


def test_prints_the_score_and_exits_zero(tmp_path, labels):
    submission = tmp_path / "submission.csv"
    # p1: GT A = (100,100,100,100) and B = (500,500,200,300).
    #   Prediction 1 (0.9) = A exactly: IoU 1 with A. Prediction 2 (0.8) = (500,500,200,180):
    #   IoU with B = 200*180 / (200*300) = 0.6. t <= 0.6: TP 2 -> 1; t >= 0.65: TP 1, FP 1, FN 1 -> 1/3.
    #   Image score = (5 * 1 + 3 * 1/3) / 8 = 6/8 = 0.75.
    # p2: no GT, one prediction -> 0. p3: nothing either side -> skipped.
    # RSNA metric = (0.75 + 0) / 2 = 0.375.
    submission.write_text("patientId,PredictionString\n"
                          "p1,0.9 100 100 100 100 0.8 500 500 200 180\n"
                          "p2,0.3 0 0 50 50\n"
                          "p3,\n")
    completed = run_score(labels, submission)
    assert completed.returncode == 0, completed.stderr
    assert "RSNA metric: 0.3750" in completed.stdout
    assert "0.60  0.5000" in completed.stdout  # per-threshold table: (1 + 0) / 2 at t = 0.60
    assert "0.65  0.1667" in completed.stdout  # (1/3 + 0) / 2
    assert "scored images: 2" in completed.stdout
    assert "skipped images (no boxes on either side): 1" in completed.stdout


def test_malformed_submission_exits_two_naming_the_line(tmp_path, labels):
    submission = tmp_path / "submission.csv"
    submission.write_text("patientId,PredictionString\np1,\np2,0.3 0 0 50\np3,\n")
    completed = run_score(labels, submission)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ")
    assert f"{submission}:3: patient p2" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_missing_patient_exits_two(tmp_path, labels):
    submission = tmp_path / "submission.csv"
    submission.write_text("patientId,PredictionString\np1,\np2,\n")
    completed = run_score(labels, submission)
    assert completed.returncode == 2
    assert "no row for 1 expected patient(s): p3" in completed.stderr


def test_malformed_labels_exit_two(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patientId,x,y,width,height,Target\np1,100,100,100,100,7\n")
    submission = tmp_path / "submission.csv"
    submission.write_text("patientId,PredictionString\np1,\n")
    completed = run_score(labels, submission)
    assert completed.returncode == 2
    assert f"error: {labels}:2:" in completed.stderr


@pytest.mark.parametrize("content, message", [("", "empty file"), ("patientId,x,y,width,height,Target\n",
                                                                     "no rows below the header")])
def test_empty_and_header_only_labels_exit_two(tmp_path, content, message):
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    submission = tmp_path / "submission.csv"
    submission.write_text("patientId,PredictionString\np1,\n")
    completed = run_score(labels, submission)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith(f"error: {labels}: {message}")
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("prediction, message", [
    ("1.2 100 100 100 100", "box 1 has confidence 1.2, outside [0, 1]"),
    ("0.9 100 100 -100 100", "box 1 has negative size (width -100, height 100)"),
    ("0.9 100 nan 100 100", "non-finite value 'nan' in PredictionString"),
    ("0.9 100 1e2x 100 100", "'1e2x' in PredictionString is not a number"),
])
def test_illegal_values_exit_two_naming_the_line(tmp_path, labels, prediction, message):
    submission = tmp_path / "submission.csv"
    submission.write_text(f"patientId,PredictionString\np1,{prediction}\np2,\np3,\n")
    completed = run_score(labels, submission)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith(f"error: {submission}:2: patient p1: {message}")
    assert "Traceback" not in completed.stderr


def test_boxes_past_the_image_edge_are_scored_unclipped_and_counted(tmp_path, labels):
    submission = tmp_path / "submission.csv"
    # p1: A = (100,100,100,100) exactly (IoU 1); B = (500,500,200,300) predicted as (500,500,200,600),
    #   which ends at y = 1100, past the 1024 px edge: IoU 300/600 = 0.5 as written (clipped to the
    #   image it would be 300/524 = 0.57). t <= 0.50: 1; t >= 0.55: TP 1, FP 1, FN 1 -> 1/3.
    #   Image score = (3 * 1 + 5 * 1/3) / 8 = 7/12. p2: one prediction off the top-left corner, no GT -> 0.
    # RSNA metric = (7/12 + 0) / 2 = 0.2917.
    submission.write_text("patientId,PredictionString\n"
                          "p1,0.9 100 100 100 100 0.8 500 500 200 600\n"
                          "p2,0.3 -26.6 -40 222.1 163\n"
                          "p3,\n")
    completed = run_score(labels, submission)
    assert completed.returncode == 0, completed.stderr
    assert "RSNA metric: 0.2917" in completed.stdout
    assert "0.50  0.5000" in completed.stdout and "0.55  0.1667" in completed.stdout
    assert "predicted boxes: 3" in completed.stdout
    assert "predicted boxes past the image edge (scored as they are): 2" in completed.stdout
