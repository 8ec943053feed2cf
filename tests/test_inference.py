"""scripts/infer.py and retinanet.inference end to end on the tiny trained run (see conftest.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from retinanet.inference import Detector, ModelLoadError
from retinanet.submission import read_submission


def check_document(document: dict, height: int, width: int) -> None:
    """An infer.py JSON: boxes inside the image, scores descending and above the threshold."""
    assert (document["image_height"], document["image_width"]) == (height, width)
    scores = [box["score"] for box in document["boxes"]]
    assert scores == sorted(scores, reverse=True)
    assert all(score >= document["score_threshold"] for score in scores)
    for box in document["boxes"]:
        assert set(box) == {"x", "y", "width", "height", "score"}
        assert 0 <= box["x"] and box["x"] + box["width"] <= width + 1e-3
        assert 0 <= box["y"] and box["y"] + box["height"] <= height + 1e-3
        assert box["width"] >= 0 and box["height"] >= 0
    assert 0 <= document["image_probability"] <= 1  # the tiny model has the image head


@pytest.mark.slow
def test_infer_on_a_dicom_writes_json_and_overlay(inferred_dicom, tiny_run):
    document = inferred_dicom["json"]
    check_document(document, tiny_run.image_size, tiny_run.image_size)
    assert document["score_threshold"] == 0.0
    assert len(document["boxes"]) == tiny_run.config.postprocessing.max_detections
    overlay = cv2.imread(str(inferred_dicom["output"] / f"{inferred_dicom['path'].stem}.png"))
    assert overlay.shape == (tiny_run.image_size, tiny_run.image_size, 3)


@pytest.mark.slow
def test_infer_on_a_png_with_checkpoint_uses_the_run_threshold(tiny_run, evaluated_run, png_image, tmp_path,
                                                                script):
    completed = script("infer.py", "--checkpoint", tiny_run.run_dir / "final.weights.h5", "--input", png_image,
                       "--output", tmp_path)
    assert completed.returncode == 0, completed.stderr
    document = json.loads((tmp_path / "chest.json").read_text())
    # The checkpoint's run directory holds threshold.json (evaluate.py --write-threshold).
    assert document["score_threshold"] == evaluated_run["metrics"]["best_threshold"]
    check_document(document, 200, 240)
    assert cv2.imread(str(tmp_path / "chest.png")).shape == (200, 240, 3)


@pytest.mark.slow
def test_infer_on_a_directory_writes_a_submission(tiny_run, evaluated_run, tmp_path, script):
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", tiny_run.data_dir /
                           "stage_2_test_images", "--output", tmp_path, "--no-progress")
    assert completed.returncode == 0, completed.stderr
    patients = [path.stem for path in tiny_run.test_dicoms]
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "patientId,PredictionString" and len(lines) == 1 + len(patients)
    predictions = read_submission(tmp_path / "submission.csv", expected_patient_ids=patients)
    threshold = json.loads((tiny_run.run_dir / "threshold.json").read_text())["score_threshold"]
    for boxes, scores in predictions.values():
        assert np.all(scores >= threshold - 1e-4)
        assert np.all((boxes >= 0) & (boxes <= tiny_run.image_size + 0.1))
    summary = json.loads(completed.stdout[: completed.stdout.rindex("}") + 1])
    assert summary["num_images"] == len(patients)


@pytest.mark.slow
def test_detector_matches_infer_script(tiny_run, inferred_dicom):
    result = Detector.load(run_dir=tiny_run.run_dir, threshold=0.0).detect_image(inferred_dicom["path"])
    boxes = [[box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]]
             for box in inferred_dicom["json"]["boxes"]]
    np.testing.assert_allclose(result["boxes"], np.array(boxes).reshape(-1, 4), atol=1e-3)
    np.testing.assert_allclose(result["scores"], [box["score"] for box in inferred_dicom["json"]["boxes"]],
                               atol=1e-6)


@pytest.mark.slow
def test_missing_checkpoint_is_a_clean_error(tiny_run, tmp_path, script, clean_error):
    missing = tmp_path / "nothing.weights.h5"
    completed = script("infer.py", "--checkpoint", missing, "--input", tiny_run.test_dicoms[0])
    clean_error(completed, f"checkpoint not found: {missing}")


@pytest.mark.slow
def test_checkpoint_without_config_is_an_error(tmp_path):
    lonely = tmp_path / "deep" / "er" / "best.weights.h5"
    lonely.parent.mkdir(parents=True)
    lonely.write_bytes(b"not really weights")
    with pytest.raises(ModelLoadError, match="no config.yaml"):
        Detector.load(checkpoint=lonely)


@pytest.mark.slow
def test_unreadable_image_is_a_clean_error(tiny_run, tmp_path, script, clean_error):
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"this is not a picture")
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", garbage)
    clean_error(completed, str(garbage), "not a readable image file")


@pytest.mark.slow
def test_empty_directory_is_a_clean_error(tiny_run, tmp_path, script, clean_error):
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", tmp_path)
    clean_error(completed, f"no DICOM files (.dcm, .dicom) in directory {tmp_path}")


# --- Fast unit tests: locating a run's pieces -----------------------------------------------------


@pytest.fixture
def run_with_config(tmp_path):
    """A directory holding only a valid config.yaml."""
    from pathlib import Path

    from retinanet.config import load_config, save_config

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(load_config(demo), run_dir / "config.yaml")
    return run_dir


def test_run_directory_without_weights_is_an_error(run_with_config):
    from retinanet.inference import source_from_run_dir

    with pytest.raises(ModelLoadError, match=f"no weights in run directory {run_with_config}"):
        source_from_run_dir(run_with_config)
    with pytest.raises(ModelLoadError, match="run directory not found"):
        source_from_run_dir(run_with_config / "absent")


def test_checkpoint_finds_the_config_beside_it_or_in_its_parent(run_with_config):
    from retinanet.inference import resolve_source

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
    from retinanet.inference import read_threshold

    assert read_threshold(tmp_path, 0.3) == (0.3, "config evaluation.score_threshold")
    (tmp_path / "threshold.json").write_text(json.dumps({"score_threshold": 0.45}))
    assert read_threshold(tmp_path, 0.3) == (0.45, str(tmp_path / "threshold.json"))
    for content in ("{not json", json.dumps({"score_threshold": 2.0}), json.dumps({"threshold": 0.2})):
        (tmp_path / "threshold.json").write_text(content)
        with pytest.raises(ModelLoadError, match=str(tmp_path / "threshold.json")):
            read_threshold(tmp_path, 0.3)
