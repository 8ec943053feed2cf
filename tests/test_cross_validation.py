"""Cross-validation: fold states and what is done with them, the out-of-fold measures against
plain-loop oracles, and an end-to-end run on tiny synthetic data that is killed, resumed and rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from helpers import REPOSITORY_ROOT, TINY_OVERRIDES, assert_clean_error, run_in_process, run_script
from retinanet.config import config_from_dict, load_config, save_config
from retinanet.experiments.cross_validation import (CrossValidationError, fold_dir, fold_state, parse_folds,
                                                 prepare_parent, train_fold)
from retinanet.evaluate.out_of_fold import (OutOfFoldError, analyse, bootstrap_interval, read_predictions,
                                            write_predictions)
from test_metrics import loop_image_score, random_data_set

# --- folds and their states ---------------------------------------------------------------------


def test_folds_default_to_all_and_bad_ones_are_errors_naming_the_option():
    assert parse_folds(None, 5) == [0, 1, 2, 3, 4]
    assert parse_folds("3,1", 5) == [1, 3]
    for text in ("5", "1,1", "a,b", "", "-1"):
        with pytest.raises(CrossValidationError, match="--folds"):
            parse_folds(text, 5)


def write_checkpoint(run_dir):
    import tensorflow as tf

    tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(2)), run_dir / "checkpoints", 2).save()


def test_fold_state_tells_new_restart_resume_and_finished(tmp_path):
    run_dir = tmp_path / "fold_0"
    assert fold_state(run_dir) == "new"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("the user's")  # not a run file
    assert fold_state(run_dir) == "new"
    (run_dir / "config.yaml").write_text("{}")  # stopped before its first checkpoint
    (run_dir / "log.jsonl").write_text("")
    assert fold_state(run_dir) == "restart"
    write_checkpoint(run_dir)
    assert fold_state(run_dir) == "resume"
    (run_dir / "final.weights.h5").write_bytes(b"")
    assert fold_state(run_dir) == "finished"


def small_config(root, **data):
    return config_from_dict({"data": {"root": str(root), "cache_dir": str(root / "cache"), "original_size": 128,
                                      "num_folds": 3, **data},
                             "training": {"steps": 4, "warmup_steps": 1},
                             "runtime": {"mixed_precision": "float32"}})


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    return generate_synthetic_rsna(tmp_path_factory.mktemp("cv_data"), num_train=12, num_test=0, size=128, seed=2,
                                   progress=False)


def test_each_fold_is_trained_resumed_restarted_or_skipped_by_its_state(small_data, tmp_path, monkeypatch, capsys):
    import retinanet.train.trainer

    parent = tmp_path / "cv"
    base = prepare_parent(small_config(small_data), parent, progress=False)
    calls = []

    def fake_train(config, run_dir, *, resume=False, overwrite=False, progress=True):
        calls.append((run_dir.name, None if config is None else config.data.validation_fold, resume, overwrite))
        run_dir.mkdir(exist_ok=True)
        (run_dir / "best.json").write_text(json.dumps({"step": 4, "best_rsna_metric": 0.5}))
        return {"step": 4}

    monkeypatch.setattr(retinanet.train.trainer, "train", fake_train)
    for fold, files in ((1, ["config.yaml"]), (2, ["config.yaml", "final.weights.h5"])):
        fold_dir(parent, fold).mkdir()
        save_config(load_config(parent / "config.yaml", [f"data.validation_fold={fold}"]),
                    fold_dir(parent, fold) / "config.yaml")
        for name in files[1:]:
            (fold_dir(parent, fold) / name).write_bytes(b"")
    states = [train_fold(base, parent, fold, f"{fold + 1}/3", progress=False) for fold in range(3)]
    assert states == ["new", "restart", "finished"]
    assert calls == [("fold_0", 0, False, False), ("fold_1", 1, False, True)]
    write_checkpoint(fold_dir(parent, 1))
    assert train_fold(base, parent, 1, "2/3", progress=False) == "resume"
    assert calls[-1] == ("fold_1", None, True, False)  # a resumed run reads its own config
    out = capsys.readouterr().out
    assert "fold 2 (3/3): finished earlier, skipped" in out and "fold 1 (2/3): restarting" in out


def test_a_directory_of_another_fold_or_config_is_refused(small_data, tmp_path):
    parent = tmp_path / "cv"
    base = prepare_parent(small_config(small_data), parent, progress=False)
    assert base.data.split_file == str((parent / "split.csv").resolve())
    assert prepare_parent(small_config(small_data), parent, progress=False) == base  # the same config resumes
    with pytest.raises(CrossValidationError, match="data.split_seed") as error:
        prepare_parent(small_config(small_data, split_seed=7), parent, progress=False)
    assert str(parent) in str(error.value)
    fold_dir(parent, 0).mkdir()
    save_config(load_config(parent / "config.yaml", ["data.validation_fold=2"]), fold_dir(parent, 0) / "config.yaml")
    with pytest.raises(CrossValidationError, match="fold 0: .*data.validation_fold 2"):
        train_fold(base, parent, 0, "1/3", progress=False)


def test_predictions_are_made_again_only_when_a_fold_has_new_best_weights(tmp_path, monkeypatch):
    import retinanet.experiments.cross_validation as cross_validation
    from retinanet.data.rsna import Record

    parent = tmp_path / "cv"
    records_of = {fold: [Record(f"p{fold}", "", np.zeros((0, 4)), 0)] for fold in (0, 1)}
    for fold in (0, 1):
        fold_dir(parent, fold).mkdir(parents=True)
        (fold_dir(parent, fold) / "best.weights.h5").write_bytes(b"weights")
    predicted = []

    def fake_predict(parent, fold, records, progress=True):
        predicted.append(fold)
        return records, {records[0].patient_id: (np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([0.5]))}, None

    monkeypatch.setattr(cross_validation, "predict_fold", fake_predict)

    def write_predictions_and_metrics():
        stamp = cross_validation.write_out_of_fold_predictions(parent, records_of, progress=False)
        (parent / "oof_metrics.json").write_text(json.dumps({"weights": stamp}))

    write_predictions_and_metrics()
    write_predictions_and_metrics()
    assert predicted == [0, 1]
    os.utime(fold_dir(parent, 1) / "best.weights.h5", ns=(1, 1))  # fold 1 trained again
    write_predictions_and_metrics()
    assert predicted == [0, 1, 0, 1]
    assert set(read_predictions(parent / "oof_predictions.csv")[1].items()) == {("p0", 0), ("p1", 1)}


# --- out-of-fold measures -----------------------------------------------------------------------


def loop_metric(ground_truth, predictions, threshold, patients=None):
    """The competition metric of the predictions scoring >= threshold, image by image with the loop oracle."""
    scores = []
    for patient_id in patients if patients is not None else ground_truth:
        boxes, confidences = predictions.get(patient_id, (np.zeros((0, 4)), np.zeros(0)))
        score = loop_image_score(ground_truth[patient_id], boxes[confidences >= threshold],
                                 confidences[confidences >= threshold])
        if score is not None:
            scores.append(score)
    return float(np.mean(scores))


def test_out_of_fold_measures_match_the_loop_oracle():
    ground_truth, predictions = random_data_set(seed=11, num_images=150)
    folds = {patient_id: index % 3 for index, patient_id in enumerate(ground_truth)}
    thresholds = [0.1, 0.3, 0.6, 0.8]
    analysis = analyse(ground_truth, predictions, folds, thresholds, configured_threshold=0.5)
    expected = [loop_metric(ground_truth, predictions, threshold) for threshold in thresholds]
    np.testing.assert_allclose([item["rsna_metric"] for item in analysis["sweep"]], expected, atol=1e-12)
    assert analysis["threshold"] == thresholds[int(np.argmax(expected))]
    assert analysis["rsna_metric"] == pytest.approx(max(expected), abs=1e-12)
    assert analysis["rsna_metric_configured"] == pytest.approx(loop_metric(ground_truth, predictions, 0.5), abs=1e-12)
    low, high = analysis["interval"]
    assert low < analysis["rsna_metric"] < high
    assert [item["fold"] for item in analysis["folds"]] == [0, 1, 2]
    for item in analysis["folds"]:
        members = [patient_id for patient_id, fold in folds.items() if fold == item["fold"]]
        assert item["num_patients"] == len(members) == 50
        assert item["rsna_metric"] == pytest.approx(
            loop_metric(ground_truth, predictions, analysis["threshold"], members), abs=1e-12)
        fold_curve = [loop_metric(ground_truth, predictions, threshold, members) for threshold in thresholds]
        np.testing.assert_allclose(item["sweep"], fold_curve, atol=1e-12)
        assert item["best_rsna_metric"] == pytest.approx(max(fold_curve), abs=1e-12)
    with pytest.raises(OutOfFoldError, match="differ"):
        analyse(ground_truth, predictions, dict(list(folds.items())[:-1]), thresholds, 0.5)


def test_bootstrap_interval_is_reproducible_and_as_wide_as_the_binomial_one():
    rng = np.random.default_rng(0)
    scores = (rng.random(400) < 0.3).astype(float)
    low, high = bootstrap_interval(scores)
    assert (low, high) == bootstrap_interval(scores)  # fixed seed
    mean = scores.mean()
    half_width = 1.96 * np.sqrt(mean * (1 - mean) / len(scores))
    assert low == pytest.approx(mean - half_width, abs=0.015) and high == pytest.approx(mean + half_width, abs=0.015)
    assert bootstrap_interval(np.full(50, 0.25)) == (0.25, 0.25)
    # Skipped images (NaN) are drawn but do not count: ones and skips alone always give 1.
    assert bootstrap_interval(np.array([1.0, np.nan, 1.0, np.nan])) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_interval(np.full(5, np.nan))))


def test_predictions_file_round_trips_and_names_a_bad_line(tmp_path):
    path = tmp_path / "oof_predictions.csv"
    boxes = np.array([[10.0, 20.0, 40.0, 80.0], [0.0, 0.0, 5.5, 6.5]])
    write_predictions(path, [("b", 1, boxes, np.array([0.2, 0.9]), 0.75),
                             ("a", 0, np.zeros((0, 4)), np.zeros(0), None)])
    predictions, folds, probabilities = read_predictions(path)
    assert folds == {"b": 1, "a": 0} and probabilities == {"b": 0.75, "a": None}
    np.testing.assert_allclose(predictions["b"][0], boxes[[1, 0]])  # most confident first
    np.testing.assert_allclose(predictions["b"][1], [0.9, 0.2])
    assert predictions["a"][0].shape == (0, 4)
    path.write_text(path.read_text() + "c,2,0.5 1 2 3,\n")
    with pytest.raises(OutOfFoldError, match=r"oof_predictions.csv:4: .*not a multiple of 5"):
        read_predictions(path)


# --- end to end ---------------------------------------------------------------------------------

CV_OVERRIDES = (*TINY_OVERRIDES, "data.num_folds=2", "data.original_size=128", "data.synthetic=null",
                "training.checkpoint_every=2", "model.fpn_channels=16",
                # The barely trained model scores about 0.01: sweep where its scores are.
                "evaluation.sweep=[0.0, 0.03, 0.002]")

KILL_FOLD_1_AFTER_STEP_2 = textwrap.dedent("""
    import os, sys
    import retinanet.train.loop
    from retinanet.cli import main

    original = retinanet.train.loop.Trainer._save_latest
    def save_then_die(self, **options):
        original(self, **options)
        if self.run.write_dir.name == "fold_1" and self.step == 2:
            os._exit(17)  # killed right after fold 1's first checkpoint
    retinanet.train.loop.Trainer._save_latest = save_then_die
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def cross_validation(tmp_path_factory):
    """A cross-validation killed in fold 1, resumed, then run once more: what each step left."""
    from retinanet.cli import main
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    root = tmp_path_factory.mktemp("cv")
    data = generate_synthetic_rsna(root / "data", num_train=12, num_test=0, size=128, seed=3, progress=False)
    parent = root / "cv"
    arguments = ["cross-validate", "--config", str(REPOSITORY_ROOT / "configs" / "demo.yaml"), "--out", str(parent),
                 "--no-progress", *(f"--set={override}" for override in
                                    (f"data.root={data}", f"data.cache_dir={root / 'cache'}", *CV_OVERRIDES))]
    killed = subprocess.run([sys.executable, "-c", KILL_FOLD_1_AFTER_STEP_2, *arguments], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert killed.returncode == 17, killed.stderr[-3000:]
    after_kill = {fold: fold_state(fold_dir(parent, fold)) for fold in (0, 1)}
    finished_mtime = (fold_dir(parent, 0) / "best.weights.h5").stat().st_mtime_ns

    def run() -> str:
        completed = run_in_process(arguments, lambda: main(arguments))
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    resumed = run()
    mtimes = {fold: (fold_dir(parent, fold) / "best.weights.h5").stat().st_mtime_ns for fold in (0, 1)}
    metrics = json.loads((parent / "oof_metrics.json").read_text())
    rerun = run()
    return {"parent": parent, "data": data, "after_kill": after_kill, "finished_mtime": finished_mtime,
            "resumed": resumed, "rerun": rerun, "mtimes": mtimes, "metrics": metrics}


@pytest.mark.slow
def test_a_killed_fold_resumes_and_finished_folds_are_not_trained_again(cross_validation):
    parent = cross_validation["parent"]
    assert cross_validation["after_kill"] == {0: "finished", 1: "resume"}
    resumed = cross_validation["resumed"]
    assert "fold 0 (1/2): finished earlier, skipped" in resumed
    assert "fold 1 (2/2): resuming from its last checkpoint" in resumed and "at step 2" in resumed
    assert cross_validation["mtimes"][0] == cross_validation["finished_mtime"]
    train_steps = [json.loads(line)["step"] for line in (fold_dir(parent, 1) / "log.jsonl").read_text().splitlines()
                   if json.loads(line)["split"] == "train"]
    assert train_steps == [2, 4]  # steps 1-2 before the kill, 3-4 after: none twice
    rerun = cross_validation["rerun"]
    assert "fold 0 (1/2): finished earlier, skipped" in rerun and "fold 1 (2/2): finished earlier, skipped" in rerun
    assert "training in" not in rerun and "resuming" not in rerun
    for fold in (0, 1):
        assert (fold_dir(parent, fold) / "best.weights.h5").stat().st_mtime_ns == cross_validation["mtimes"][fold]
    # The same best weights: their predictions are reused and give the same numbers.
    assert "reusing oof_predictions.csv" in rerun and "reusing" not in resumed
    assert json.loads((parent / "oof_metrics.json").read_text()) == cross_validation["metrics"]


@pytest.mark.slow
def test_every_fold_is_a_run_of_the_same_split_and_out_of_fold_covers_every_patient_once(cross_validation):
    parent = cross_validation["parent"]
    split = pd.read_csv(parent / "split.csv", dtype={"patientId": str})
    for fold in (0, 1):
        run_dir = fold_dir(parent, fold)
        assert load_config(run_dir / "config.yaml").data.validation_fold == fold
        assert (run_dir / "split.csv").read_bytes() == (parent / "split.csv").read_bytes()
        for name in ("best.weights.h5", "final.weights.h5", "best.json", "log.jsonl"):
            assert (run_dir / name).is_file(), (fold, name)
    table = pd.read_csv(parent / "oof_predictions.csv", dtype={"patientId": str}, keep_default_na=False)
    assert sorted(table["patientId"]) == sorted(split["patientId"]) and table["patientId"].is_unique
    fold_of = dict(zip(split["patientId"], split["fold"]))
    assert all(fold_of[patient_id] == fold for patient_id, fold in zip(table["patientId"], table["fold"]))
    assert (table["image_probability"] != "").all()  # the demo config has the image head


@pytest.mark.slow
def test_out_of_fold_metric_equals_an_independent_computation_on_the_files(cross_validation):
    from retinanet.data.rsna import read_labels
    from retinanet.serve.ensembles import resolve_ensemble
    from retinanet.run_directory import read_best_record, read_threshold
    from retinanet.data.submission import score_submission

    parent, data, metrics = cross_validation["parent"], cross_validation["data"], cross_validation["metrics"]
    records, _ = read_labels(data / "stage_2_train_labels.csv", image_size=128)
    ground_truth = {record.patient_id: record.boxes for record in records}
    predictions, _, _ = read_predictions(parent / "oof_predictions.csv")
    threshold = metrics["threshold"]
    sweep = {item["score_threshold"]: item["rsna_metric"] for item in metrics["sweep"]}
    for value in (0.0, 0.01, threshold):
        assert sweep[value] == pytest.approx(loop_metric(ground_truth, predictions, value), abs=1e-9)
    assert metrics["rsna_metric"] == max(sweep.values()) == sweep[threshold]
    assert metrics["num_patients"] == metrics["num_training_patients"] == len(ground_truth) == 12
    # The Kaggle-format file at the chosen threshold scores the same with `retinanet score`'s code.
    assert score_submission(data / "stage_2_train_labels.csv", parent / "oof_submission.csv",
                            image_size=128)["score"] == pytest.approx(metrics["rsna_metric"], abs=1e-9)
    low, high = metrics["interval"]
    assert low <= metrics["rsna_metric"] <= high
    out_of_fold = f"chosen on out-of-fold predictions ({parent / 'oof_metrics.json'}), {parent / 'threshold.json'}"
    assert read_threshold(parent, default=0.5) == (threshold, out_of_fold)
    # Each fold's run has its own, chosen on its validation; the folds' ensemble reads the parent's.
    for fold in (0, 1):
        run_dir = fold_dir(parent, fold)
        best = read_best_record(run_dir)
        assert read_threshold(run_dir, default=0.5) == (
            best["best_threshold"], f"chosen on validation at step {best['step']}, {run_dir / 'threshold.json'}")
    assert resolve_ensemble(run_dir=[parent]).threshold_dir == parent
    # The records name the files beside them relative to their directory.
    assert metrics["files"]["oof_submission.csv"] == "oof_submission.csv"
    assert json.loads((parent / "threshold.json").read_text())["metrics"] == "oof_metrics.json"
    summary = pd.read_csv(parent / "summary.csv", dtype={"fold": str})
    assert list(summary["fold"]) == ["0", "1", "out-of-fold"]
    assert summary["rsna_metric"].iloc[-1] == pytest.approx(metrics["rsna_metric"], abs=1e-4)
    assert "| out-of-fold | 12 |" in (parent / "summary.md").read_text()
    assert "| out-of-fold | 12 |" in cross_validation["rerun"]
    assert (parent / "oof_threshold_sweep.png").stat().st_size > 0


def test_script_names_a_bad_fold_option(small_data, tmp_path):
    completed = run_script("cross_validate.py", "--config", REPOSITORY_ROOT / "configs" / "demo.yaml",
                           "--folds", "0,9", "--out", tmp_path / "cv", "--set", f"data.root={small_data}")
    assert_clean_error(completed, "--folds '0,9'", "[0, 5)")
