"""retinanet.run_directory and retinanet.train.run_state: the run-directory rules behind recoverable
training (one run per directory, finite checkpoints, the validation record, the log trimmed on
resume, stale temporaries removed), locating a run's config, weights and threshold, and its file
names."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinanet.config import load_config, save_config
from retinanet.run_directory import (RUN_ENTRIES, ModelLoadError, latest_run, read_threshold, record_path,
                                     resolve_record_path, resolve_source, run_entries, source_from_run_dir,
                                     threshold_line, write_threshold)
from retinanet.train.run_state import (checkpoint_is_finite, last_finite_checkpoint, last_validated_step,
                                       non_finite_variables, record_validated_step, record_validation_due, remove_run,
                                       remove_stale_temporaries, trim_log, validation_due_step,
                                       write_validation_threshold)
from retinanet.train.trainer import TrainingError, start_fresh


def fake_run(run_dir):
    """The files an earlier run leaves, and one of the user's own."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt-4.index").write_bytes(b"")
    (run_dir / "best.json").write_text(json.dumps({"step": 4, "rsna_metric": 0.9}))
    (run_dir / "log.jsonl").write_text('{"split": "train", "step": 2}\n')
    (run_dir / "threshold.json").write_text('{"score_threshold": 0.4}')
    (run_dir / "notes.txt").write_text("mine")
    return run_dir


def test_a_new_run_into_a_directory_holding_a_run_is_refused(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    with pytest.raises(TrainingError) as error:
        start_fresh(run_dir, overwrite=False)
    message = str(error.value)
    assert str(run_dir) in message and "best.json" in message and "log.jsonl" in message
    assert "--resume" in message and "--run-dir" in message and "--overwrite" in message
    assert json.loads((run_dir / "best.json").read_text())["rsna_metric"] == 0.9  # untouched


def test_overwrite_removes_the_earlier_run_and_keeps_other_files(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    start_fresh(run_dir, overwrite=True)
    assert sorted(path.name for path in run_dir.iterdir()) == ["notes.txt"]
    assert run_entries(run_dir) == []


def test_empty_or_foreign_directories_hold_no_run(tmp_path):
    start_fresh(tmp_path / "absent", overwrite=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("x")
    start_fresh(tmp_path / "other", overwrite=False)
    assert remove_run(tmp_path / "other") == [] and (tmp_path / "other" / "data.csv").is_file()


def test_stale_temporaries_are_removed_and_complete_files_kept(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "ckpt-7_temp").mkdir(parents=True)
    (checkpoints / "ckpt-7_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)
    for name in ("ckpt-6.index", "ckpt-6.data-00000-of-00001", "checkpoint"):
        (checkpoints / name).write_bytes(b"")
    (tmp_path / "best.tmp.weights.h5").write_bytes(b"half")
    (tmp_path / "best.weights.h5").write_bytes(b"whole")
    (tmp_path / "validation.tmp.json").write_text('{"last_val')  # a kill during write_json_atomically
    (tmp_path / "tensorboard" / "train").mkdir(parents=True)  # a kill while a resume trimmed the events
    (tmp_path / "tensorboard" / "train" / "events.out.tfevents.1.host.2.0.v2").write_bytes(b"whole")
    (tmp_path / "tensorboard" / "train" / "events.tmp.out.tfevents.1.host.2.0.v2").write_bytes(b"half")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in removed) == ["best.tmp.weights.h5", "ckpt-7_temp",
                                                     "events.tmp.out.tfevents.1.host.2.0.v2", "validation.tmp.json"]
    assert [path.name for path in (tmp_path / "tensorboard" / "train").iterdir()] == [
        "events.out.tfevents.1.host.2.0.v2"]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint", "ckpt-6.data-00000-of-00001",
                                                                   "ckpt-6.index"]
    assert (tmp_path / "best.weights.h5").read_bytes() == b"whole"
    assert remove_stale_temporaries(tmp_path / "elsewhere") == []


def test_validation_record_round_trip(tmp_path):
    assert last_validated_step(tmp_path) == 0 and validation_due_step(tmp_path) is None
    record_validated_step(tmp_path, 30)
    record_validation_due(tmp_path, 40)  # written before the checkpoint of step 40
    assert (last_validated_step(tmp_path), validation_due_step(tmp_path)) == (30, 40)
    record_validated_step(tmp_path, 40)  # written once its log line and best weights are
    assert (last_validated_step(tmp_path), validation_due_step(tmp_path)) == (40, None)
    assert [path.name for path in tmp_path.iterdir()] == ["validation.json"]  # no temporary left


def _log_lines(entries):
    return "".join(json.dumps({"split": split, "step": step}) + "\n" for split, step in entries)


@pytest.mark.parametrize("step, validated, kept", [
    # Killed during the validation of step 6: its line was written, its record was not.
    (6, 3, [("train", 2), ("validation", 3), ("train", 4), ("train", 6)]),
    # Killed after the step-6 validation was recorded, during steps 7-8 (not checkpointed).
    (6, 6, [("train", 2), ("validation", 3), ("train", 4), ("train", 6), ("validation", 6)]),
])
def test_log_keeps_what_the_resumed_run_has_seen(tmp_path, step, validated, kept):
    entries = [("train", 2), ("validation", 3), ("train", 4), ("train", 6), ("validation", 6), ("train", 8)]
    (tmp_path / "log.jsonl").write_text(_log_lines(entries) + '{"split": "train", "st')  # cut short by the kill
    dropped = trim_log(tmp_path, step, validated)
    assert dropped == len(entries) + 1 - len(kept)
    assert (tmp_path / "log.jsonl").read_text() == _log_lines(kept)
    assert trim_log(tmp_path, step, validated) == 0
    assert trim_log(tmp_path / "no-log-here", 6, 6) == 0


def test_non_finite_variables_are_named_and_integers_ignored():
    good = keras.Variable(np.ones((2, 3), np.float32), name="good")
    bad = keras.Variable(np.array([1.0, np.nan], np.float32), name="bad")
    infinite = tf.Variable([np.inf], dtype=tf.float32, name="infinite")
    counter = tf.Variable(3, dtype=tf.int64, name="counter")
    assert non_finite_variables([good, bad, counter, infinite]) == ["bad", "infinite:0"]
    assert non_finite_variables([good, counter]) == []


def test_last_finite_checkpoint_skips_poisoned_ones(tmp_path):
    weights = tf.Variable(np.zeros(4, np.float32))
    steps = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(weights=weights, steps=steps), tmp_path, max_to_keep=3)
    for number, values in ((1, [0, 1, 2, 3]), (2, [1, 1, 1, 1]), (3, [1, np.nan, 1, 1])):
        weights.assign(np.array(values, np.float32))
        manager.save(checkpoint_number=number)
    first, second, third = manager.checkpoints
    assert checkpoint_is_finite(first) and checkpoint_is_finite(second) and not checkpoint_is_finite(third)
    assert last_finite_checkpoint(manager.checkpoints) == second
    assert last_finite_checkpoint([third]) is None


def test_a_run_without_the_validation_record_is_read_from_its_log(tmp_path):
    (tmp_path / "log.jsonl").write_text(_log_lines([("train", 2), ("validation", 3), ("train", 4)]) + '{"spl')
    assert last_validated_step(tmp_path) == 3
    record_validated_step(tmp_path, 6)  # the record wins once it exists
    assert last_validated_step(tmp_path) == 6


# --- Fast unit tests: locating a run's pieces -----------------------------------------------------


@pytest.fixture
def run_with_config(tmp_path):
    """A directory holding only a valid config.yaml."""
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(load_config(demo), run_dir / "config.yaml")
    return run_dir


def test_run_directory_without_weights_is_an_error(run_with_config):
    with pytest.raises(ModelLoadError, match=f"no weights in run directory {run_with_config}"):
        source_from_run_dir(run_with_config)
    with pytest.raises(ModelLoadError, match="run directory not found"):
        source_from_run_dir(run_with_config / "absent")


def test_checkpoint_finds_the_config_beside_it_or_in_its_parent(run_with_config):
    beside = run_with_config / "best.weights.h5"
    beside.write_bytes(b"weights")
    nested = run_with_config / "checkpoints" / "extra.weights.h5"
    nested.parent.mkdir()
    nested.write_bytes(b"weights")
    for checkpoint in (beside, nested):
        source = resolve_source(checkpoint=checkpoint)
        assert source.config_path == run_with_config / "config.yaml" and source.run_dir == run_with_config
        assert source.weights == checkpoint
    assert resolve_source(run_dir=run_with_config).weights == beside
    with pytest.raises(ModelLoadError, match="not a .weights.h5 file"):
        (run_with_config / "notes.txt").write_text("hello")
        resolve_source(checkpoint=run_with_config / "notes.txt")
    with pytest.raises(ModelLoadError, match="config file not found"):
        resolve_source(checkpoint=beside, config_path=run_with_config / "missing.yaml")
    with pytest.raises(ModelLoadError, match="either a checkpoint or a run directory"):
        resolve_source(checkpoint=beside, run_dir=run_with_config)


def test_threshold_file_is_read_and_checked(tmp_path):
    assert read_threshold(tmp_path, 0.3) == (0.3, "config evaluation.score_threshold")
    (tmp_path / "threshold.json").write_text(json.dumps({"score_threshold": 0.45}))
    assert read_threshold(tmp_path, 0.3) == (0.45, str(tmp_path / "threshold.json"))
    for content in ("{not json", json.dumps({"score_threshold": 2.0}), json.dumps({"threshold": 0.2})):
        (tmp_path / "threshold.json").write_text(content)
        with pytest.raises(ModelLoadError, match=str(tmp_path / "threshold.json")):
            read_threshold(tmp_path, 0.3)


def test_threshold_written_is_read_back_with_where_it_was_chosen(tmp_path):
    metrics = tmp_path / "evaluation" / "metrics.json"
    path = write_threshold(tmp_path, 0.35, 0.21, "evaluation", metrics_file=metrics)
    assert path == tmp_path / "threshold.json"
    # The metrics file is stored relative to the run (runs.record_path) and read back absolute.
    assert json.loads(path.read_text()) == {"score_threshold": 0.35, "rsna_metric": 0.21, "chosen_on": "evaluation",
                                            "metrics": "evaluation/metrics.json"}
    assert read_threshold(tmp_path, 0.5) == (0.35, f"chosen on evaluation ({metrics}), {path}")
    write_threshold(tmp_path, 0.4, 0.3, "out-of-fold predictions", metrics_file=tmp_path / "oof_metrics.json")
    out_of_fold = f"chosen on out-of-fold predictions ({tmp_path / 'oof_metrics.json'}), {path}"
    assert read_threshold(tmp_path, 0.5) == (0.4, out_of_fold)


def test_a_threshold_file_of_an_older_version_still_loads(tmp_path):
    # Written by `retinanet evaluate --write-threshold` and `retinanet cross-validate` before
    # threshold.json said where its threshold was chosen.
    path = tmp_path / "threshold.json"
    path.write_text(json.dumps({"score_threshold": 0.45, "rsna_metric": 0.2, "metrics": "eval/metrics.json"}))
    assert read_threshold(tmp_path, 0.3) == (0.45, f"from {tmp_path / 'eval' / 'metrics.json'}, {path}")


def test_best_weights_bring_the_threshold_chosen_on_their_validation(tmp_path):
    scalars = {"rsna_metric": 0.5, "best_rsna_metric": 0.9645, "best_threshold": 0.55, "ap50": 0.7}
    path = write_validation_threshold(tmp_path, 375, scalars)
    assert json.loads(path.read_text()) == {"score_threshold": 0.55, "rsna_metric": 0.9645, "chosen_on": "validation",
                                            "step": 375}
    threshold, origin = read_threshold(tmp_path, 0.3)
    assert (threshold, origin) == (0.55, f"chosen on validation at step 375, {path}")
    assert threshold_line(threshold, origin) == f"score threshold 0.55 (chosen on validation at step 375, {path})"
    # Later best weights replace it (through a temporary file and a rename)...
    write_validation_threshold(tmp_path, 400, {**scalars, "best_threshold": 0.6000000000000001})
    assert read_threshold(tmp_path, 0.3) == (0.6000000000000001, f"chosen on validation at step 400, {path}")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["threshold.json"]
    # ...and best weights whose validation scored no image chose none: the config's applies.
    assert write_validation_threshold(tmp_path, 425, {**scalars, "best_threshold": float("nan"),
                                                      "best_rsna_metric": float("nan")}) is None
    assert not path.exists()
    assert read_threshold(tmp_path, 0.3) == (0.3, "config evaluation.score_threshold")
    assert threshold_line(0.3, "--threshold") == "score threshold 0.3 (--threshold)"


def test_record_paths_are_relative_to_the_record_within_it_and_its_parent(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "demo"
    record_dir = run / "evaluation"
    record_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert record_path(record_dir / "predictions.csv", record_dir) == "predictions.csv"
    assert record_path("runs/demo/config.yaml", record_dir) == "../config.yaml"  # cwd-relative given
    assert record_path(run / "checkpoints" / "ckpt-4", "runs/demo/evaluation") == "../checkpoints/ckpt-4"
    assert record_path(tmp_path / "data" / "rsna", record_dir) == str(tmp_path / "data" / "rsna")
    assert record_path(run, record_dir) == ".."
    # Read back from another working directory, and after the run directory moved.
    monkeypatch.chdir(record_dir)
    assert resolve_record_path("../config.yaml", record_dir) == str(run / "config.yaml")
    moved = tmp_path / "moved"
    run.rename(moved)
    assert resolve_record_path("../config.yaml", moved / "evaluation") == str(moved / "config.yaml")
    assert resolve_record_path(str(tmp_path / "data"), moved / "evaluation") == str(tmp_path / "data")


def test_older_records_with_working_directory_paths_still_resolve(tmp_path, monkeypatch):
    (tmp_path / "runs" / "demo" / "evaluation").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "config.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    record_dir = tmp_path / "runs" / "demo" / "evaluation"
    # Written from tmp_path before paths were made relative to the record: relative to the working directory.
    assert resolve_record_path("runs/demo/config.yaml", record_dir) == str(tmp_path / "runs" / "demo" / "config.yaml")
    assert resolve_record_path("predictions.csv", record_dir) == str(record_dir / "predictions.csv")


def test_run_entries_keep_the_names_existing_runs_have():
    # Runs written before this module existed must still load: the names are part of the format.
    assert RUN_ENTRIES == ("config.yaml", "split.csv", "checkpoints", "best.weights.h5", "best.json",
                           "final.weights.h5", "log.jsonl", "tensorboard", "validation_predictions.png",
                           "validation.json", "budget.json", "threshold.json")


def test_latest_run_is_the_newest_directory_with_a_config(tmp_path):
    import os

    assert latest_run(tmp_path) is None
    for name, mtime in (("old", 1_000), ("new", 2_000), ("notes", 3_000)):
        (tmp_path / name).mkdir()
        if name != "notes":  # not a run: no config.yaml
            (tmp_path / name / "config.yaml").write_text("{}")
            os.utime(tmp_path / name / "config.yaml", (mtime, mtime))
    assert latest_run(tmp_path) == tmp_path / "new"
