"""retinanet evaluate (scripts/evaluate.py) end to end on the tiny trained run (see conftest.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from retinanet.evaluate.evaluation import read_metrics
from retinanet.detection.metrics import IOU_THRESHOLDS
from retinanet.data.submission import read_submission, score_submission


def validation_patients(metrics: dict) -> list[str]:
    return pd.read_csv(metrics["predictions_csv"], dtype=str, keep_default_na=False)["patientId"].tolist()


@pytest.mark.slow
def test_outputs_exist_and_are_well_formed(tiny_run, evaluated_run):
    output, metrics = evaluated_run["output"], evaluated_run["metrics"]
    pictures = ("threshold_sweep.png", "precision_recall.png", "froc.png", "image_roc.png")
    for name in ("metrics.json", "predictions.csv", *pictures):
        assert (output / name).is_file(), name
    for name in pictures:
        assert cv2.imread(str(output / name)) is not None
    start, stop, step = tiny_run.config.evaluation.sweep
    assert [item["score_threshold"] for item in metrics["sweep"]] == pytest.approx(np.arange(start, stop + 1e-9, step))
    assert metrics["threshold"] == 0.0 and metrics["threshold_source"] == "--threshold"
    assert metrics["best_threshold"] in [item["score_threshold"] for item in metrics["sweep"]]
    assert metrics["best_rsna_metric"] >= max(item["rsna_metric"] for item in metrics["sweep"]) - 1e-12
    for key in ("threshold", "best"):
        assert sorted(map(float, metrics["per_iou_threshold"][key])) == list(IOU_THRESHOLDS)
    assert 0 <= metrics["rsna_metric"] <= 1 and 0 <= metrics["ap50"] <= 1 and 0 <= metrics["coco_map"] <= 1
    assert set(metrics["image_level"]) >= {"roc_auc", "sensitivity", "specificity"}
    counts = metrics["counts"]
    patients = validation_patients(metrics)
    assert counts["images"] == len(patients) > 0
    assert counts["predicted_boxes"] == len(patients) * tiny_run.config.postprocessing.max_detections
    overlays = metrics["overlays"]
    assert 0 < len(overlays) <= tiny_run.config.evaluation.num_overlays
    for path in overlays:
        picture = cv2.imread(path)
        # Drawn on the original image, under the band with the legend, threshold and p(pneumonia).
        assert picture.shape[0] > tiny_run.image_size and picture.shape[1:] == (tiny_run.image_size, 3)
    gating = metrics["image_gating"]  # the tiny config does not gate: what gating would do
    assert gating["threshold"] == metrics["best_threshold"]
    assert gating["gate_threshold"] == tiny_run.config.postprocessing.image_gate_threshold
    assert gating["removed_boxes_negative_images"] >= 0 and gating["removed_boxes_positive_images"] >= 0
    assert "RSNA metric" in evaluated_run["stdout"] and "best of sweep" in evaluated_run["stdout"]
    assert "score threshold 0 (--threshold)\n" in evaluated_run["stdout"]
    assert metrics["source"]["split_file"] == str(tiny_run.run_dir.resolve() / "split.csv")
    localization = metrics["localization"]
    assert [row["iou"] for row in localization["per_iou_threshold"]] == list(IOU_THRESHOLDS)
    assert all(row["false_positives"] + row["true_positives"] == counts["predicted_boxes"]
               for row in localization["per_iou_threshold"])
    assert localization["true_boxes"] == counts["ground_truth_boxes"] >= localization["matched_boxes"]
    assert sum(group["images"] for group in localization["by_view"].values()) == counts["images"]
    assert set(localization["by_view"]) <= {"AP", "PA", "unknown"}
    assert "Localization of the boxes kept at the used threshold 0.000:" in evaluated_run["stdout"]


@pytest.mark.slow
def test_metric_equals_score_script_on_the_predictions_csv(tiny_run, evaluated_run, tmp_path, script):
    metrics = evaluated_run["metrics"]
    patients = set(validation_patients(metrics))
    labels = pd.read_csv(tiny_run.data_dir / "stage_2_train_labels.csv", dtype=str, keep_default_na=False)
    labels_csv = tmp_path / "validation_labels.csv"
    labels[labels["patientId"].isin(patients)].to_csv(labels_csv, index=False)
    scored = score_submission(labels_csv, metrics["predictions_csv"], image_size=tiny_run.image_size)
    # The CSV rounds coordinates to 0.1 px and scores to 1e-4 (boxes stay in descending order):
    # equal unless a rounded IoU crosses one of the thresholds, which these boxes do not.
    assert scored["score"] == pytest.approx(metrics["rsna_metric"], abs=1e-6)
    assert scored["num_predicted_boxes"] == metrics["counts"]["predicted_boxes"]
    for iou, value in scored["per_threshold"].items():
        assert value == pytest.approx(metrics["per_iou_threshold"]["threshold"][str(iou)], abs=1e-6)
    completed = script("score.py", "--labels", labels_csv, "--submission", metrics["predictions_csv"],
                           "--image-size", tiny_run.image_size)
    assert completed.returncode == 0, completed.stderr
    assert f"RSNA metric: {metrics['rsna_metric']:.4f}" in completed.stdout


@pytest.mark.slow
def test_write_threshold_writes_the_best_threshold(tiny_run, evaluated_run):
    written = json.loads((tiny_run.run_dir / "threshold.json").read_text())
    assert written["score_threshold"] == evaluated_run["metrics"]["best_threshold"]
    assert written["rsna_metric"] == evaluated_run["metrics"]["best_rsna_metric"]
    # It replaced the one training chose, and says so. The evaluation lies outside the run directory
    # and its parent: named absolute (runs.record_path).
    assert (written["chosen_on"], written["metrics"]) == ("evaluation",
                                                          str((evaluated_run["output"] / "metrics.json").resolve()))
    assert "step" not in written
    # tests/test_inference.py checks that infer.py picks it up.


@pytest.mark.slow
def test_the_default_operating_point_is_the_threshold_training_chose(tiny_run, run_as_trained, tmp_path):
    from retinanet.evaluate.evaluation import evaluate_run, format_report

    chosen = json.loads(tiny_run.training_threshold)
    metrics = evaluate_run(output_dir=tmp_path / "evaluation", run_dir=[str(run_as_trained)], progress=False)
    origin = f"chosen on validation at step 4, {run_as_trained / 'threshold.json'}"
    assert (metrics["threshold"], metrics["threshold_source"]) == (chosen["score_threshold"], origin)
    # The metric and predictions.csv are at that threshold; the best of the sweep is still reported.
    sweep = {item["score_threshold"]: item["rsna_metric"] for item in metrics["sweep"]}
    assert metrics["rsna_metric"] == pytest.approx(sweep[chosen["score_threshold"]], abs=1e-12)
    assert metrics["best_rsna_metric"] == max(sweep.values()) and metrics["best_threshold"] in sweep
    kept = sum(len(scores) for _, scores in read_submission(metrics["predictions_csv"]).values())
    assert kept == metrics["counts"]["predicted_boxes"]
    assert format_report(metrics).startswith(f"score threshold {chosen['score_threshold']:g} ({origin})\n")
    # Without --write-threshold the run's threshold stays the one training chose.
    assert (run_as_trained / "threshold.json").read_text() == tiny_run.training_threshold


@pytest.mark.slow
def test_malformed_predictions_fail_in_score_script(tiny_run, evaluated_run, tmp_path, script, clean_error):
    rows = read_submission(evaluated_run["metrics"]["predictions_csv"])
    broken = tmp_path / "broken.csv"
    first, *others = rows
    broken.write_text("patientId,PredictionString\n" + f"{first},0.5 10 10 20\n" + "".join(f"{p},\n" for p in others))
    labels = tmp_path / "labels.csv"
    all_labels = pd.read_csv(tiny_run.data_dir / "stage_2_train_labels.csv", dtype=str, keep_default_na=False)
    all_labels[all_labels["patientId"].isin(list(rows))].to_csv(labels, index=False)
    completed = script("score.py", "--labels", labels, "--submission", broken, "--image-size", tiny_run.image_size)
    clean_error(completed, f"{broken}:2: patient {first}", "not a multiple of 5")


@pytest.mark.slow
def test_missing_run_directory_is_a_clean_error(tmp_path, script, clean_error):
    completed = script("evaluate.py", "--run-dir", tmp_path / "nowhere", "--output", tmp_path / "out")
    clean_error(completed, f"run directory not found: {tmp_path / 'nowhere'}")


@pytest.mark.slow
def test_missing_split_file_is_a_clean_error(tiny_run, evaluated_run, tmp_path, script, clean_error):
    completed = script("evaluate.py", "--checkpoint", tiny_run.run_dir / "final.weights.h5", "--split",
                           tmp_path / "no_split.csv", "--output", tmp_path / "out")
    clean_error(completed, f"split file not found: {tmp_path / 'no_split.csv'}")


@pytest.mark.slow
def test_data_evaluates_every_patient_of_another_labelled_set(tiny_run, evaluated_run, tmp_path, script):
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    other = generate_synthetic_rsna(tmp_path / "other", num_train=6, num_test=0, size=tiny_run.image_size, seed=7,
                                    progress=False)
    completed = script("evaluate.py", "--run-dir", tiny_run.run_dir, "--data", other, "--output", tmp_path / "out",
                       "--no-progress")
    assert completed.returncode == 0, completed.stderr
    metrics = read_metrics(tmp_path / "out")
    labels = pd.read_csv(other / "stage_2_train_labels.csv", dtype=str, keep_default_na=False)
    assert sorted(validation_patients(metrics)) == sorted(set(labels["patientId"]))
    assert metrics["counts"]["images"] == 6 and metrics["source"]["data"] == str(other)
    assert "split_file" not in metrics["source"]
    scored = score_submission(other / "stage_2_train_labels.csv", metrics["predictions_csv"],
                              image_size=tiny_run.image_size)
    assert scored["score"] == pytest.approx(metrics["rsna_metric"], abs=1e-6)


@pytest.mark.slow
def test_data_the_run_trained_on_is_refused(tiny_run, evaluated_run, tmp_path, script, clean_error):
    completed = script("evaluate.py", "--run-dir", tiny_run.run_dir, "--data", tiny_run.data_dir, "--output",
                       tmp_path / "out", "--no-progress")
    clean_error(completed, f"run {tiny_run.run_dir.resolve()} trained on", "--data DIR")
    completed = script("evaluate.py", "--run-dir", tiny_run.run_dir, "--data", tmp_path / "nowhere", "--output",
                       tmp_path / "out")
    clean_error(completed, f"--data {tmp_path / 'nowhere'}: not a directory")


# --- Fast unit tests: the metric path of evaluate() on hand-made detections -----------------------

LABELS = ("patientId,x,y,width,height,Target\n"
          "p1,100,100,100,100,1\n"
          "p1,500,500,200,300,1\n"
          "p2,,,,,0\n"
          "p3,,,,,0\n"
          "p4,10,10,50,50,1\n")


def hand_made_case(tmp_path):
    """Records of LABELS and detections whose RSNA metric is known at every threshold."""
    from retinanet.data.rsna import read_labels

    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(LABELS)
    records, _ = read_labels(labels_csv)
    detections = {
        # IoU 1 with the first box; IoU 200 * 180 / (200 * 300) = 0.6 with the second; a miss.
        "p1": (np.array([[100, 100, 200, 200], [500, 500, 700, 680], [0, 0, 50, 50]], float),
               np.array([0.9, 0.8, 0.2])),
        "p2": (np.array([[0, 0, 50, 50]], float), np.array([0.3])),  # a false positive on a negative
        "p4": (np.array([[12, 12, 60, 60]], float), np.array([0.05])),  # IoU 48 * 48 / 2500 = 0.92
    }
    return labels_csv, records, detections


def test_compute_metrics_on_known_detections(tmp_path):
    from retinanet.evaluate.evaluation import compute_metrics

    _, records, detections = hand_made_case(tmp_path)
    metrics = compute_metrics(records, detections, np.array([0.9, 0.2, 0.1, 0.7]), threshold=0.25,
                              sweep=(0.05, 0.95, 0.05), image_threshold=0.5)
    # At 0.25: p1 keeps 2 boxes -> (5 x 1 + 3 x 1/3) / 8 = 0.75; p2 FP -> 0; p3 skipped; p4 missed -> 0.
    assert metrics["rsna_metric"] == pytest.approx(0.75 / 3)
    assert metrics["per_iou_threshold"]["threshold"][0.6] == pytest.approx(1 / 3)
    # At 0.05 everything is kept: p1 (5 x 2/3 + 3 x 1/4) / 8, p2 0, p4 1.
    p1_all = (5 * 2 / 3 + 3 / 4) / 8
    assert metrics["best_threshold"] == pytest.approx(0.05)
    assert metrics["best_rsna_metric"] == pytest.approx((p1_all + 0 + 1) / 3)
    by_threshold = {round(item["score_threshold"], 2): item["rsna_metric"] for item in metrics["sweep"]}
    assert by_threshold[0.4] == pytest.approx(0.75 / 2)  # p2 is skipped once its FP is gone
    assert by_threshold[0.85] == pytest.approx(0.5 / 2)
    assert len(by_threshold) == 19 and by_threshold[0.95] == pytest.approx(0.0)
    assert metrics["counts"]["predicted_boxes"] == 3 and metrics["counts"]["predicted_boxes_best"] == 5
    assert metrics["counts"]["skipped_images"] == 1 and metrics["counts"]["positive_images"] == 2
    assert metrics["image_level"]["roc_auc"] == pytest.approx(1.0)
    assert metrics["ap50"] > 0 and metrics["coco_map"] > 0


def test_predictions_csv_scores_like_the_metric(tmp_path):
    from retinanet.evaluate.evaluation import compute_metrics, keep_above
    from retinanet.data.submission import write_submission

    labels_csv, records, detections = hand_made_case(tmp_path)
    for threshold in (0.05, 0.25, 0.5):
        metrics = compute_metrics(records, detections, None, threshold=threshold, sweep=(0.1, 0.9, 0.1),
                                  image_threshold=0.5)
        write_submission(tmp_path / "predictions.csv", keep_above(detections, threshold),
                         [record.patient_id for record in records])
        scored = score_submission(labels_csv, tmp_path / "predictions.csv")
        assert scored["score"] == pytest.approx(metrics["rsna_metric"], abs=1e-12)
        assert metrics["image_level"] is None


def test_report_and_json_handle_missing_values():
    from retinanet.evaluate.evaluation import format_report, sweep_thresholds
    from retinanet.runtime.safe_writes import json_ready

    assert sweep_thresholds((0.05, 0.95, 0.05)).tolist()[-1] == 0.95
    assert json_ready({"a": float("nan"), 0.4: [np.float32(1.5), np.int64(2)]}) == {"a": None, "0.4": [1.5, 2]}
    metrics = json_ready({
        "rsna_metric": float("nan"), "threshold": 0.3, "threshold_source": "config evaluation.score_threshold",
        "best_rsna_metric": float("nan"), "best_threshold": 0.3,
        "per_iou_threshold": {"threshold": {t: float("nan") for t in IOU_THRESHOLDS},
                              "best": {t: float("nan") for t in IOU_THRESHOLDS}},
        "ap50": float("nan"), "coco_map": float("nan"), "image_level": None, "counts": {"images": 0},
        "predictions_csv": "predictions.csv"})
    json.dumps(metrics, allow_nan=False)
    report = format_report(metrics)
    assert "n/a" in report and "0.300" in report
    assert report.startswith("score threshold 0.3 (config evaluation.score_threshold)\n")


def test_metrics_json_stores_paths_relative_to_its_directory_and_reads_them_back(tmp_path, monkeypatch):
    from retinanet.evaluate.evaluation import write_metrics

    run = tmp_path / "runs" / "demo"
    output = run / "evaluation"
    output.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    metrics = {"rsna_metric": 0.5, "predictions_csv": "runs/demo/evaluation/predictions.csv",
               "overlays": [str(output / "overlays" / "best_1_a.png")],
               "source": {"config": "runs/demo/config.yaml", "weights": str(run / "best.weights.h5"),
                          "split_file": str(run / "split.csv"), "validation_fold": 0}}
    write_metrics(metrics, "runs/demo/evaluation")
    stored = json.loads((output / "metrics.json").read_text())
    assert stored["predictions_csv"] == "predictions.csv" and stored["overlays"] == ["overlays/best_1_a.png"]
    assert stored["source"] == {"config": "../config.yaml", "weights": "../best.weights.h5",
                                "split_file": "../split.csv", "validation_fold": 0}
    # The run directory moved with its evaluation, read from another working directory.
    moved = tmp_path / "elsewhere" / "demo"
    moved.parent.mkdir()
    run.rename(moved)
    monkeypatch.chdir(moved.parent)
    read = read_metrics(moved / "evaluation")
    assert read["predictions_csv"] == str(moved / "evaluation" / "predictions.csv")
    assert read["overlays"] == [str(moved / "evaluation" / "overlays" / "best_1_a.png")]
    assert read["source"] == {"config": str(moved / "config.yaml"), "weights": str(moved / "best.weights.h5"),
                              "split_file": str(moved / "split.csv"), "validation_fold": 0}


def test_an_ensemble_and_a_data_set_elsewhere_in_metrics_json(tmp_path):
    from retinanet.evaluate.evaluation import write_metrics

    parent = tmp_path / "cv"
    output = parent / "ensemble-eval"
    output.mkdir(parents=True)
    data = tmp_path / "data" / "other"  # beyond the output directory's parent: absolute
    configs = [str(parent / "fold_0" / "config.yaml"), str(parent / "fold_1" / "config.yaml")]
    write_metrics({"predictions_csv": str(output / "predictions.csv"), "overlays": [],
                   "source": {"config": configs, "weights": configs, "data": str(data)}}, output)
    stored = json.loads((output / "metrics.json").read_text())
    assert stored["source"]["config"] == ["../fold_0/config.yaml", "../fold_1/config.yaml"]
    assert stored["source"]["data"] == str(data)
    assert read_metrics(output)["source"] == {"config": configs, "weights": configs, "data": str(data)}


def test_an_older_metrics_json_with_absolute_paths_still_reads(tmp_path):
    old = {"predictions_csv": str(tmp_path / "predictions.csv"), "overlays": [],
           "source": {"config": "/somewhere/runs/demo/config.yaml", "weights": "/somewhere/runs/demo/best.weights.h5",
                      "split_file": "/somewhere/runs/demo/split.csv", "validation_fold": 0}}
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    assert read_metrics(tmp_path) == old


@pytest.mark.slow
def test_set_tries_another_post_processing_and_refuses_what_the_weights_fix(tiny_run, evaluated_run, tmp_path,
                                                                          script, clean_error):
    output = tmp_path / "voted"
    completed = script("evaluate.py", "--run-dir", tiny_run.run_dir, "--output", output, "--threshold", "0",
                       "--set", "postprocessing.box_voting_iou=0.5", "--no-progress")
    assert completed.returncode == 0, completed.stderr
    voted = read_metrics(output)
    plain = evaluated_run["metrics"]
    assert voted["counts"]["predicted_boxes"] == plain["counts"]["predicted_boxes"]  # the same boxes, moved
    assert voted["localization"]["matched_iou"] != plain["localization"]["matched_iou"]
    clean_error(script("evaluate.py", "--run-dir", tiny_run.run_dir, "--output", tmp_path / "refused",
                       "--set", "model.fpn_channels=8", "--no-progress"),
                "--set model.fpn_channels=8: only postprocessing.* and evaluation.* can change after training")
    refused = script("evaluate.py", "--run-dir", tiny_run.run_dir, "--output", tmp_path / "refused",
                     "--set", "postprocessing.nms_iou=0.4", "--write-threshold", "--no-progress")
    assert refused.returncode == 2 and "--write-threshold goes without --set" in refused.stderr
