"""Tests for benchmarks/time_to_quality.py: minutes to each validation target from log.jsonl."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from time_to_quality import TimeToQualityError, format_table, summarize

REPOSITORY = Path(__file__).resolve().parents[1]


def _run(tmp_path, name, validations, held_out=None, elapsed=True):
    run_dir = tmp_path / name
    run_dir.mkdir()
    lines = [{"split": "train", "step": 10, "elapsed_seconds": 30.0, "loss/total": 1.0}]
    for step, seconds, metric in validations:
        entry = {"split": "validation", "step": step, "best_rsna_metric": metric, "rsna_metric": metric / 2}
        if elapsed:
            entry["elapsed_seconds"] = seconds
        lines.append(entry)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"split": "valid')
    if held_out is not None:
        (run_dir / "holdout").mkdir()
        (run_dir / "holdout" / "metrics.json").write_text(json.dumps({"rsna_metric": held_out}))
    return run_dir


def test_minutes_to_each_target_by_hand(tmp_path):
    run_dir = _run(tmp_path, "a", [(100, 120.0, 0.15), (200, 240.0, 0.31), (300, 360.0, 0.29), (400, 480.0, 0.45)],
                   held_out=0.41)
    summary = summarize(run_dir, (0.2, 0.3, 0.4, 0.5), evaluation="holdout")
    assert summary["minutes"] == {0.2: 4.0, 0.3: 4.0, 0.4: 8.0, 0.5: None}  # the first validation reaching it
    assert (summary["best"], summary["best_step"], summary["best_minutes"]) == (0.45, 400, 8.0)
    assert summary["held_out"] == 0.41
    table = format_table([summary], (0.2, 0.3, 0.4, 0.5)).splitlines()
    assert table[0] == ("| run | min to 0.2 | min to 0.3 | min to 0.4 | min to 0.5 | best validation (step, min) "
                        "| held-out |")
    assert table[2] == "| a | 4.0 | 4.0 | 8.0 | - | 0.450 (400, 8.0) | 0.410 |"


def test_a_log_that_cannot_answer_is_a_named_error(tmp_path):
    with pytest.raises(TimeToQualityError, match="no validation logged"):
        summarize(_run(tmp_path, "empty", []))
    with pytest.raises(TimeToQualityError, match="without elapsed_seconds"):
        summarize(_run(tmp_path, "old", [(100, 60.0, 0.2)], elapsed=False))
    with pytest.raises(TimeToQualityError, match="metrics.json: missing"):
        summarize(_run(tmp_path, "b", [(100, 60.0, 0.2)]), evaluation="holdout")


def test_command_line(tmp_path):
    first = _run(tmp_path, "first", [(50, 90.0, 0.25)])
    second = _run(tmp_path, "second", [(50, 30.0, 0.1), (100, 60.0, 0.22)])
    completed = subprocess.run([sys.executable, str(REPOSITORY / "benchmarks" / "time_to_quality.py"), str(first),
                                str(second), "--targets", "0.2"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[2:] == ["| first | 1.5 | 0.250 (50, 1.5) |",
                                                 "| second | 1.0 | 0.220 (100, 1.0) |"]
    missing = subprocess.run([sys.executable, str(REPOSITORY / "benchmarks" / "time_to_quality.py"),
                              str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_held_out_minutes_come_from_each_kept_checkpoint_on_the_other_set(tiny_run, small_rsna, tmp_path):
    # The tiny run keeps the checkpoint of its one validation (step 4); small_rsna is a labelled set
    # of other patients. The held-out curve evaluates that checkpoint there, at the threshold the
    # validation chose, and its minutes are the validation's.
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    validation = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()
                  if '"validation"' in line][-1]
    summary = summarize(run_dir, targets=(0.0, 1.01), held_out_data=small_rsna)
    assert summary["best_step"] == validation["step"] == 4
    assert summary["minutes"][0.0] == pytest.approx(validation["elapsed_seconds"] / 60)
    assert summary["minutes"][1.01] is None  # no metric reaches above 1
    metrics = json.loads((run_dir / "held_out" / "step-4" / "metrics.json").read_text())
    assert metrics["threshold"] == validation["best_threshold"]
    assert summary["best"] == pytest.approx(metrics["rsna_metric"])
    quartiles = metrics["localization"]["matched_iou"]
    assert summary["matched_iou"] == (None if quartiles is None else quartiles[1])
    assert "median matched IoU" in format_table([summary], (0.0, 1.01))
