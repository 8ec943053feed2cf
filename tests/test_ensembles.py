"""Fold ensembles: several runs or a cross-validation directory behind one Detector and one SavedModel.

Two tiny untrained runs (64 px, grey, flip TTA, gating by multiplication, box shrink) with
different weights, their class logits spread out so that the detections are not ties.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf
from ensemble_boxes import weighted_boxes_fusion as reference_fusion  # a test dependency
from test_detections import ORIGINAL_HEIGHT, ORIGINAL_WIDTH, chest_like_image, write_run

import helpers
from retinanet.config import config_from_dict, save_config
from retinanet.data.preprocess import normalize
from retinanet.serve.ensembles import check_held_out, resolve_ensemble
from retinanet.run_directory import ModelLoadError, write_threshold
from retinanet.train.run_state import write_validation_threshold


def tiny_config(root, **sections):
    """The tests' tiny config (tests/helpers.py), one grey channel, flip TTA, gating and shrinking on."""
    base = {"data": {"num_parallel_calls": 1}, "preprocessing": {"channels": 1}, "model": {"image_head": True},
            "postprocessing": {"candidate_score_threshold": 0.0, "max_detections": 10, "flip_tta": True,
                               "image_gating": "multiply", "box_shrink": 0.9},
            "evaluation": {"batch_size": 1, "score_threshold": 0.0}}
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return helpers.tiny_config(root, root / "cache", **base)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensembles")
    config = tiny_config(root)
    return write_run(root / "run_a", config, 3), write_run(root / "run_b", config, 4)


@pytest.fixture(scope="module")
def detector_of():
    """`detector_of(*run_dirs)`: the Detector of those runs at threshold 0, loaded once in this
    module (a load builds each model anew, a few seconds each)."""
    from retinanet.serve.inference import Detector

    loaded = {}

    def detector_of(*run_dirs):
        key = tuple(str(path) for path in run_dirs)
        if key not in loaded:
            loaded[key] = Detector.load(run_dir=list(key), threshold=0.0)
        return loaded[key]

    yield detector_of
    loaded.clear()


def sorted_by_score(boxes, scores):
    order = np.lexsort((boxes[:, 0], -scores))
    return boxes[order], scores[order]


def test_two_copies_of_one_run_give_the_runs_own_boxes(two_runs, detector_of, tmp_path):
    """Weighted box fusion of duplicated passes changes nothing: each box joins its own copy's
    cluster (IoU 1), whose fused box stays the box, and a cluster's score, mean member score x
    min(members, passes) / passes, is the same with every member counted twice over twice the
    passes (here 2 x 2 flip TTA passes against the run's own 2)."""
    run_a, _ = two_runs
    copy = shutil.copytree(run_a, tmp_path / "copy_of_a")
    image = chest_like_image()
    single, doubled = detector_of(run_a).detect_array(image), detector_of(run_a, copy).detect_array(image)
    assert len(single["scores"]) == 10  # max_detections: enough boxes to compare
    np.testing.assert_allclose(doubled["scores"], single["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(doubled["boxes"], single["boxes"], atol=1e-3)
    assert doubled["image_probability"] == pytest.approx(single["image_probability"], abs=1e-6)


def independent_ensemble(detectors, image):
    """Each run's model (one Detector each) run by hand on the image and its mirror, each pass's NMS
    by the postprocessor, then ensemble_boxes' WBF, the mean image probability, gating, shrink,
    scale and clip in numpy."""
    config, post = detectors[0].config, detectors[0].postprocessor
    processed, scale = detectors[0].preprocess(image)
    plain = normalize(processed[None, :, :, None].astype(np.float32), 1)
    width = config.preprocessing.image_size[1]
    pass_boxes, pass_scores, pass_classes, probabilities = [], [], [], []
    for detector in detectors:
        for images, mirrored in ((plain, False), (plain[:, :, ::-1], True)):
            outputs = detector.model(tf.constant(images), training=False)
            boxes, scores, classes, count = (np.asarray(item)[0] for item in post.suppress(outputs["predictions"]))
            boxes, scores, classes = boxes[:count], scores[:count], classes[:count]
            if mirrored:
                boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
            pass_boxes.append((boxes / width).tolist())
            pass_scores.append(scores.tolist())
            pass_classes.append(classes.tolist())
            probabilities.append(1 / (1 + np.exp(-float(np.asarray(outputs["image_logits"])[0, 0]))))
    boxes, scores, _ = reference_fusion(pass_boxes, pass_scores, pass_classes, iou_thr=0.55, skip_box_thr=0.0,
                                        conf_type="avg")
    boxes, scores = boxes[:config.postprocessing.max_detections] * width, scores[:config.postprocessing.max_detections]
    probability = float(np.mean(probabilities))
    scores = scores * probability  # image_gating: multiply
    centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * 0.9  # box_shrink
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) / scale
    boxes = np.clip(boxes, 0, [ORIGINAL_WIDTH, ORIGINAL_HEIGHT, ORIGINAL_WIDTH, ORIGINAL_HEIGHT])
    return boxes, scores, probability


def test_two_runs_fuse_like_each_model_fused_by_ensemble_boxes(two_runs, detector_of):
    image = chest_like_image()
    ensemble = detector_of(*two_runs).detect_array(image)
    expected_boxes, expected_scores, probability = independent_ensemble([detector_of(run) for run in two_runs], image)
    single = detector_of(two_runs[0]).detect_array(image)
    assert not np.allclose(single["scores"], ensemble["scores"])  # the second model changes the result
    assert ensemble["image_probability"] == pytest.approx(probability, abs=1e-5)
    boxes, scores = sorted_by_score(ensemble["boxes"], ensemble["scores"])
    expected_boxes, expected_scores = sorted_by_score(expected_boxes, expected_scores)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(boxes, expected_boxes, atol=1e-3)


@pytest.mark.parametrize("override, key", [({"anchors": {"sizes": [16, 32, 64, 128, 256]}}, "anchors"),
                                           ({"preprocessing": {"image_size": [96, 96]}}, "preprocessing"),
                                           ({"model": {"num_classes": 2}}, "model.num_classes")])
def test_runs_that_disagree_are_an_error_naming_the_run_and_key(two_runs, tmp_path, override, key):
    other = tmp_path / "other_run"
    other.mkdir()
    save_config(tiny_config(tmp_path, **override), other / "config.yaml")
    (other / "best.weights.h5").write_bytes(b"")  # the configs are compared before any weights are read
    with pytest.raises(ModelLoadError, match=rf"run {other} cannot join .* {key} is "):
        resolve_ensemble(run_dir=[two_runs[0], other])


def make_cross_validation_dir(parent, run_dirs, threshold: float):
    """What `retinanet cross-validate` leaves: config.yaml, threshold.json and fold_<k>/ runs."""
    parent.mkdir()
    shutil.copy(run_dirs[0] / "config.yaml", parent / "config.yaml")
    write_threshold(parent, threshold, 0.5, "out-of-fold predictions", metrics_file=parent / "oof_metrics.json")
    for fold, run_dir in zip((2, 10), run_dirs):  # numeric order, not the names'
        shutil.copytree(run_dir, parent / f"fold_{fold}")
        # Each fold's own, chosen on its validation by training: for that fold's weights alone.
        write_validation_threshold(parent / f"fold_{fold}", 4, {"best_threshold": 0.7, "best_rsna_metric": 0.2})
    (parent / "fold_x").mkdir()  # not a fold: ignored
    return parent


def test_a_cross_validation_directory_stands_for_every_folds_best_weights_and_its_threshold(two_runs, tmp_path):
    from retinanet.serve.inference import Detector

    parent = make_cross_validation_dir(tmp_path / "cv", two_runs, threshold=0.3)
    ensemble = resolve_ensemble(run_dir=[parent])
    assert [source.weights for source in ensemble.sources] == [parent / "fold_2" / "best.weights.h5",
                                                               parent / "fold_10" / "best.weights.h5"]
    assert ensemble.threshold_dir == parent
    detector = Detector.load(run_dir=[parent])
    assert detector.is_ensemble and detector.threshold == 0.3
    assert detector.threshold_origin == (f"chosen on out-of-fold predictions ({parent / 'oof_metrics.json'}), "
                                         f"{parent / 'threshold.json'}")
    # One fold given alone is a run with its own threshold.
    assert resolve_ensemble(run_dir=[parent / "fold_2"]).threshold_dir == parent / "fold_2"
    # Several directories: no common threshold.json, the first run's evaluation.score_threshold.
    assert resolve_ensemble(run_dir=list(two_runs)).threshold_dir is None
    (parent / "fold_10" / "best.weights.h5").unlink()
    with pytest.raises(ModelLoadError, match=r"fold_10: no best.weights.h5"):
        resolve_ensemble(run_dir=[parent])


def test_one_run_stays_a_single_model_detector(two_runs):
    from retinanet.serve.inference import Detector

    for run_dir in (two_runs[0], [two_runs[0]]):
        detector = Detector.load(run_dir=run_dir)
        assert not detector.is_ensemble and detector.source.run_dir == two_runs[0]


def test_evaluating_an_ensemble_on_patients_a_run_trained_on_is_refused(two_runs, tmp_path):
    split = "patientId,Target,fold\n" + "".join(f"p{index},0,{index % 2}\n" for index in range(6))
    for run_dir in two_runs:
        (run_dir / "split.csv").write_text(split)  # both validated on fold 0 (the config's)
    try:
        ensemble = resolve_ensemble(run_dir=list(two_runs))
        assert check_held_out(ensemble, ["p0", "p2"]) == []
        with pytest.raises(ModelLoadError, match=r"run_a trained on 1 of the 2 evaluated patients \(e.g. p1\)"):
            check_held_out(ensemble, ["p0", "p1"])
    finally:
        for run_dir in two_runs:
            (run_dir / "split.csv").unlink()
    assert check_held_out(ensemble, ["p1"]) == [str(run_dir) for run_dir in two_runs]  # no split.csv: unchecked


def test_a_runs_split_file_without_folds_is_an_error_naming_it(tmp_path):
    from types import SimpleNamespace

    from retinanet.data.rsna import LabelError
    from retinanet.serve.ensembles import trained_patients

    (tmp_path / "split.csv").write_text("patientId,Target\np0,0\n")
    source = SimpleNamespace(run_dir=tmp_path, config=config_from_dict({}))
    with pytest.raises(LabelError, match=r"split\.csv: missing column\(s\) fold"):
        trained_patients(source)
    (tmp_path / "split.csv").write_text("patientId,Target,fold\np0,0,0\np1,0,1\n")
    assert trained_patients(source) == {"p1"}  # validated on fold 0, the default


@pytest.mark.slow
def test_exported_ensemble_gives_the_in_process_ensembles_boxes(two_runs, detector_of, tmp_path):
    from retinanet.data.preprocess import apply_clahe
    from retinanet.serve.export import export_detector

    detector = detector_of(*two_runs)
    image = chest_like_image()
    expected = detector.detect_array(image)
    info = export_detector(detector, tmp_path / "exported")
    assert info["num_models"] == 2 and [source["run"] for source in info["sources"]] == ["run_a", "run_b"]
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    clahe = apply_clahe(image, float(loaded.clahe_clip_limit.numpy()), int(loaded.clahe_tile_grid.numpy()))
    served = loaded.signatures["serving_default"](image=tf.constant(clahe))
    np.testing.assert_allclose(served["scores"].numpy(), expected["scores"], atol=1e-5)
    np.testing.assert_allclose(served["boxes"].numpy(), expected["boxes"], atol=1e-3)
    assert float(served["image_probability"]) == pytest.approx(expected["image_probability"], abs=1e-5)
    network = loaded.signatures["network"](image=tf.zeros([1, 64, 64], tf.uint8))
    assert network["predictions"].shape[0] == 2 and network["image_probability"].shape == (2,)


@pytest.mark.slow
def test_infer_script_takes_several_runs_and_names_a_mismatched_one(two_runs, detector_of, tmp_path, script,
                                                                     clean_error):
    image_path = tmp_path / "chest.png"
    cv2.imwrite(str(image_path), chest_like_image())
    completed = script("infer.py", "--run-dir", two_runs[0], "--run-dir", two_runs[1], "--input", image_path,
                       "--output", tmp_path / "out", "--threshold", "0")
    assert completed.returncode == 0, completed.stderr
    document = json.loads((tmp_path / "out" / "chest.json").read_text())
    expected = detector_of(*two_runs).detect_image(image_path)
    boxes = np.array([[box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]]
                      for box in document["boxes"]])
    np.testing.assert_allclose(boxes, expected["boxes"], atol=1e-3)
    other = tmp_path / "other_run"
    other.mkdir()
    save_config(tiny_config(tmp_path, anchors={"sizes": [16, 32, 64, 128, 256]}), other / "config.yaml")
    (other / "best.weights.h5").write_bytes(b"")
    completed = script("infer.py", "--run-dir", two_runs[0], "--run-dir", other, "--input", image_path,
                       "--output", tmp_path / "out")
    clean_error(completed, str(other), "anchors")
