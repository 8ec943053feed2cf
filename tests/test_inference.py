"""scripts/infer.py and retinanet.serve.inference end to end on the tiny trained run (see conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from retinanet.serve.inference import Detector, ModelLoadError
from retinanet.data.submission import read_submission


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
    assert "score threshold 0 (--threshold)" in inferred_dicom["stdout"]
    assert len(document["boxes"]) == tiny_run.config.postprocessing.max_detections
    overlay = cv2.imread(str(inferred_dicom["output"] / f"{inferred_dicom['path'].stem}.png"))
    # The image at its own size under a band with the legend, threshold and p(pneumonia).
    assert overlay.shape[0] > tiny_run.image_size and overlay.shape[1:] == (tiny_run.image_size, 3)


@pytest.mark.slow
def test_infer_on_a_png_with_checkpoint_uses_the_run_threshold(tiny_run, evaluated_run, png_image, tmp_path,
                                                                script):
    completed = script("infer.py", "--checkpoint", tiny_run.run_dir / "final.weights.h5", "--input", png_image,
                       "--output", tmp_path)
    assert completed.returncode == 0, completed.stderr
    document = json.loads((tmp_path / "chest.json").read_text())
    # The checkpoint's run directory holds threshold.json (evaluate.py --write-threshold).
    assert document["score_threshold"] == evaluated_run["metrics"]["best_threshold"]
    assert (f"score threshold {document['score_threshold']:g} (chosen on evaluation "
            f"({evaluated_run['output'] / 'metrics.json'}), {tiny_run.run_dir / 'threshold.json'})") in completed.stdout
    check_document(document, 200, 240)
    overlay = cv2.imread(str(tmp_path / "chest.png"))
    assert overlay.shape[0] > 200 and overlay.shape[1:] == (240, 3)


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
def test_infer_and_export_use_the_threshold_training_chose_and_say_so(tiny_run, run_as_trained, tmp_path, capsys,
                                                                      monkeypatch):
    import retinanet.visualize
    from retinanet.commands import export, infer
    from retinanet.commands.common import run_module

    chosen = json.loads(tiny_run.training_threshold)["score_threshold"]
    used = f"score threshold {chosen:g} (chosen on validation at step 4, {run_as_trained / 'threshold.json'})"
    drawn_at = []
    draw_boxes = retinanet.visualize.draw_boxes
    monkeypatch.setattr(retinanet.visualize, "draw_boxes",
                        lambda *arguments, **options: drawn_at.append(options["threshold"]) or draw_boxes(*arguments,
                                                                                                         **options))
    image = tiny_run.test_dicoms[0]
    assert run_module(infer, ["--run-dir", str(run_as_trained), "--input", str(image), "--output",
                              str(tmp_path / "default")]) == 0
    assert used in capsys.readouterr().out
    document = json.loads((tmp_path / "default" / f"{image.stem}.json").read_text())
    assert document["score_threshold"] == chosen and drawn_at == [chosen]  # the overlay's caption too
    check_document(document, tiny_run.image_size, tiny_run.image_size)

    assert run_module(infer, ["--run-dir", str(run_as_trained), "--input", str(image), "--output",
                              str(tmp_path / "given"), "--threshold", "0.01"]) == 0
    assert "score threshold 0.01 (--threshold)" in capsys.readouterr().out
    assert json.loads((tmp_path / "given" / f"{image.stem}.json").read_text())["score_threshold"] == 0.01
    assert drawn_at == [chosen, 0.01]

    assert run_module(export, ["--run-dir", str(run_as_trained), "--output", str(tmp_path / "exported")]) == 0
    assert used in capsys.readouterr().out
    info = json.loads((tmp_path / "exported" / "assets.extra" / "serving_info.json").read_text())
    assert info["score_threshold"] == chosen


def reference_detections(model, config, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The detections of the module's Postprocessor re-derived from the raw network outputs: numpy
    decoding written from the box-coding formulas, greedy NMS by tf.image.non_max_suppression, then
    box voting, shrink, letterbox scale and clip by hand. One class, no flip TTA, no gating; every level's
    anchors fit in pre_nms_top_k (checked), so the per-level top-k keeps them all."""
    from retinanet.builders import build_anchor_set
    from retinanet.data.preprocess import normalize, preprocess_image

    pre, post = config.preprocessing, config.postprocessing
    height, width = pre.image_size
    anchor_set = build_anchor_set(config)
    assert max(anchor_set.level_sizes) <= post.pre_nms_top_k
    processed, scale = preprocess_image(image, pre)
    predictions = model(normalize(processed[None, ..., None], pre.channels), training=False)["predictions"]
    predictions = np.asarray(predictions, np.float64)[0]
    anchors = anchor_set.boxes.astype(np.float64)
    # boxes = anchor centre + (dx, dy) * 0.1 * anchor size; size = anchor size * exp((dw, dh) * 0.2)
    anchor_sizes = anchors[:, 2:] - anchors[:, :2]
    anchor_centres = anchors[:, :2] + anchor_sizes / 2
    centres = anchor_centres + predictions[:, :2] * 0.1 * anchor_sizes
    sizes = anchor_sizes * np.exp(np.minimum(predictions[:, 2:4] * 0.2, np.log(1000 / 16)))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    scores = 1 / (1 + np.exp(-predictions[:, 4]))
    kept = tf.image.non_max_suppression(boxes.astype(np.float32), scores.astype(np.float32),
                                        max_output_size=post.max_detections, iou_threshold=post.nms_iou,
                                        score_threshold=post.candidate_score_threshold).numpy()
    if post.box_voting_iou > 0:  # each kept box: the score-weighted mean of the candidates overlapping it enough
        voted = []
        for box in boxes[kept]:
            corner_min, corner_max = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
            inter = np.prod(np.clip(corner_max - corner_min, 0, None), axis=1)
            iou = inter / (np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter)
            weights = np.where((iou >= post.box_voting_iou) & (scores > post.candidate_score_threshold), scores, 0)
            voted.append(weights @ boxes / weights.sum())
        boxes, scores = np.array(voted).reshape(-1, 4), scores[kept]
    else:
        boxes, scores = boxes[kept], scores[kept]
    centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * post.box_shrink
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) / scale
    original_height, original_width = image.shape
    return np.clip(boxes, 0, [original_width, original_height, original_width, original_height]), scores


@pytest.mark.slow
@pytest.mark.parametrize("box_voting_iou", [0.0, 0.6])
def test_detector_matches_a_numpy_reference_on_a_non_square_image(tiny_run, png_image, box_voting_iou):
    from dataclasses import replace

    from retinanet.data.dicom import read_image
    from retinanet.serve.inference import build_inference_model

    config = tiny_run.config
    config = replace(config, postprocessing=replace(config.postprocessing, flip_tta=False, image_gating="none",
                                                    box_shrink=0.9, box_voting_iou=box_voting_iou))
    detector = Detector(config, build_inference_model(config, tiny_run.run_dir / "final.weights.h5"), threshold=0.0)
    image = read_image(png_image)
    assert image.shape == (200, 240)
    result = detector.detect_array(image)
    boxes, scores = reference_detections(detector.model, config, image)
    assert len(scores) == config.postprocessing.max_detections
    np.testing.assert_allclose(result["scores"], scores, rtol=1e-5)
    np.testing.assert_allclose(result["boxes"], boxes, atol=2e-3)
    # A threshold keeps the most confident boxes only, the same ones.
    cut = float(np.median(scores))
    kept = detector.detect_array(image, threshold=cut)
    np.testing.assert_allclose(kept["scores"], scores[scores >= cut], rtol=1e-5)


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


# --- Unreadable files in a directory, and weights that do not fit the config ----------------------


@pytest.fixture(scope="module")
def broken_dicom(tmp_path_factory):
    path = tmp_path_factory.mktemp("broken") / "broken.dcm"
    path.write_bytes(b"DICM? no: a file cut short by a failed copy")
    return path


@pytest.mark.slow
def test_detect_paths_leaves_unreadable_files_out_in_order(tiny_run, broken_dicom, tmp_path):
    from retinanet.data.dicom import DicomReadError
    from retinanet.data.rsna import SkipReport

    detector = Detector.load(run_dir=tiny_run.run_dir, threshold=0.0)
    second_broken = tmp_path / "also-broken.dcm"
    second_broken.write_bytes(b"")
    good = tiny_run.test_dicoms[:3]
    # Batches of two: [good, good], [broken, broken] (nothing to detect), [good].
    paths = [good[0], good[1], broken_dicom, second_broken, good[2]]
    skipped = SkipReport()
    results = list(detector.detect_paths(paths, batch_size=2, progress=False, skipped=skipped))
    assert [path for path, _ in results] == good
    assert [where for where, _ in skipped.skipped] == [str(broken_dicom), str(second_broken)]
    assert all(where in reason for where, reason in skipped.skipped)
    expected = detector.detect_image(good[2])
    np.testing.assert_allclose(results[2][1]["boxes"], expected["boxes"], atol=1e-4)
    with pytest.raises(DicomReadError, match=str(broken_dicom)):
        list(detector.detect_paths(paths, batch_size=2, progress=False))


@pytest.fixture
def directory_with_a_broken_file(tiny_run, broken_dicom, tmp_path):
    directory = tmp_path / "images"
    directory.mkdir()
    for path in tiny_run.test_dicoms:
        (directory / path.name).write_bytes(path.read_bytes())
    (directory / broken_dicom.name).write_bytes(broken_dicom.read_bytes())
    return directory


@pytest.mark.slow
def test_infer_on_a_directory_skips_unreadable_files_when_asked(tiny_run, directory_with_a_broken_file, tmp_path,
                                                               script, clean_error):
    output = tmp_path / "out"
    stopped = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", directory_with_a_broken_file,
                     "--output", output, "--no-progress")
    clean_error(stopped, str(directory_with_a_broken_file / "broken.dcm"), "--skip-unreadable")
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", directory_with_a_broken_file,
                       "--output", output, "--threshold", "0", "--skip-unreadable", "--no-progress")
    assert completed.returncode == 0, completed.stderr
    # The skip report comes first, then the summary.
    assert completed.stdout.startswith("Skipped 1 unreadable image(s)")
    summary = json.loads(completed.stdout[completed.stdout.index("{"): completed.stdout.rindex("}") + 1])
    assert summary["num_images"] == len(tiny_run.test_dicoms) + 1 and summary["num_unreadable"] == 1
    predictions = read_submission(output / "submission.csv",
                                  expected_patient_ids=[p.stem for p in tiny_run.test_dicoms] + ["broken"])
    assert len(predictions["broken"][1]) == 0
    # At threshold 0 every readable image keeps its postprocessing.max_detections boxes.
    assert all(len(predictions[p.stem][1]) == tiny_run.config.postprocessing.max_detections
               for p in tiny_run.test_dicoms)
    listed = (output / "skipped_images.csv").read_text().splitlines()
    assert listed[0] == "where,reason" and len(listed) == 2
    assert listed[1].startswith(f"{directory_with_a_broken_file / 'broken.dcm'},")


@pytest.mark.slow
def test_infer_on_a_directory_follows_the_run_bad_file_policy(tiny_run, directory_with_a_broken_file, tmp_path):
    import shutil
    from dataclasses import replace

    from retinanet.config import load_config, save_config
    from retinanet.serve.infer import run_inference

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(tiny_run.run_dir / "best.weights.h5", run_dir / "best.weights.h5")
    config = load_config(tiny_run.run_dir / "config.yaml")
    save_config(replace(config, data=replace(config.data, bad_file_policy="skip")), run_dir / "config.yaml")
    summary = run_inference(input_path=directory_with_a_broken_file, output_dir=tmp_path / "out", run_dir=run_dir,
                            progress=False)
    assert summary["num_unreadable"] == 1 and str(tmp_path / "out" / "skipped_images.csv") in summary["outputs"]
    assert len((tmp_path / "out" / "submission.csv").read_text().splitlines()) == 1 + summary["num_images"]


@pytest.fixture(scope="module")
def weights_with_and_without_image_head(tmp_path_factory):
    import keras

    from retinanet.model.retinanet import build_retinanet

    directory = tmp_path_factory.mktemp("heads")
    files = {}
    for image_head in (True, False):
        model = build_retinanet((64, 64, 1), fpn_channels=8, head_convs=1, image_head=image_head)
        files[image_head, "h5"] = directory / f"head_{image_head}.weights.h5"
        model.save_weights(files[image_head, "h5"])
        prefix = tf.train.Checkpoint(model=model).write(str(directory / f"ckpt_{image_head}"))
        files[image_head, "checkpoint"] = Path(prefix)
        # Training's checkpoints hold the optimizer too, which files the trainable weights under its own path.
        optimizer = keras.optimizers.AdamW()
        optimizer.build(model.trainable_variables)
        prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(directory / f"train_{image_head}"))
        files[image_head, "training checkpoint"] = Path(prefix)
        # The check relies on this: the head's kernel is the model's only 2-D weight.
        assert [w.path for w in model.weights if len(w.shape) == 2] == (["image_logits/kernel"] if image_head else [])
    return files


def small_config(image_head: bool):
    from retinanet.config import config_from_dict

    return config_from_dict({"preprocessing": {"image_size": [64, 64], "channels": 1},
                             "model": {"fpn_channels": 8, "head_convs": 1, "image_head": image_head}})


@pytest.mark.parametrize("kind", ["h5", "checkpoint", "training checkpoint"])
@pytest.mark.parametrize("trained_with", [True, False])
def test_image_head_mismatch_on_load_says_so(weights_with_and_without_image_head, trained_with, kind):
    from retinanet.serve.inference import build_inference_model

    weights = weights_with_and_without_image_head[trained_with, kind]
    with pytest.raises(ModelLoadError) as error:
        build_inference_model(small_config(not trained_with), weights)
    expected = "with" if trained_with else "without"
    assert f"{weights} was trained {expected} the image-level head" in str(error.value)
    assert f"model.image_head: {str(not trained_with).lower()}" in str(error.value)


def test_matching_image_head_loads(weights_with_and_without_image_head):
    from retinanet.serve.inference import build_inference_model

    for kind in ("checkpoint", "training checkpoint"):
        model = build_inference_model(small_config(True), weights_with_and_without_image_head[True, kind])
        assert "image_logits" in model.output


# --- A directory of hostile files among good ones ------------------------------------------------


@pytest.fixture
def hostile_directory(tiny_run, tmp_path) -> tuple[Path, dict]:
    """The run's test films and one file of every hostile kind: (directory, {stem: reason fragment})."""
    import warnings

    from hostile_files import deflate_bomb, seed_files, stream_size_bomb, with_header
    from pydicom.uid import JPEGBaseline8Bit

    directory = tmp_path / "hostile"
    directory.mkdir()
    for path in tiny_run.test_dicoms:
        (directory / path.name).write_bytes(path.read_bytes())
    seeds = seed_files(tmp_path / "seeds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns as it writes the invalid values
        made = {
            "bomb-jpeg-ls": (stream_size_bomb(seeds["mr_jpeg_ls"], directory / "bomb-jpeg-ls.dcm"), "65535 x 65535"),
            "bomb-jpeg": (stream_size_bomb(seeds["film_jpeg"], directory / "bomb-jpeg.dcm"), "65535 x 65535"),
            "bomb-jpeg2000": (stream_size_bomb(seeds["mr_jpeg2000"], directory / "bomb-jpeg2000.dcm"),
                              "65535 x 65535"),
            "bomb-deflate": (deflate_bomb(directory / "bomb-deflate.dcm", 1100),
                             "inflates to more than the limit of 1024 MiB"),
            "blank-slope": (with_header(seeds["ct_native_signed"], directory / "blank-slope.dcm", RescaleSlope="0"),
                            "RescaleSlope 0"),
            "blank-window": (with_header(seeds["ct_native_signed"], directory / "blank-window.dcm",
                                         WindowCenter="40", WindowWidth="nan"), "WindowWidth nan"),
            "jpeg2000-as-baseline": (with_header(seeds["mr_jpeg2000"], directory / "jpeg2000-as-baseline.dcm",
                                                 TransferSyntaxUID=JPEGBaseline8Bit), "looks like JPEG 2000"),
            "signed-jpeg": (with_header(seeds["film_jpeg"], directory / "signed-jpeg.dcm", PixelRepresentation=1),
                            "PixelRepresentation 1"),
        }
    cut = directory / "truncated.dcm"
    cut.write_bytes(tiny_run.test_dicoms[0].read_bytes()[:600])
    made["truncated"] = (cut, "")
    return directory, {stem: fragment for stem, (_, fragment) in made.items()}


@pytest.mark.slow
def test_infer_skips_every_hostile_file_and_writes_the_whole_submission(tiny_run, hostile_directory, tmp_path,
                                                                        script):
    directory, expected = hostile_directory
    output = tmp_path / "out"
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", directory, "--output", output,
                       "--skip-unreadable", "--no-progress")
    assert completed.returncode == 0, completed.stderr
    good = [path.stem for path in tiny_run.test_dicoms]
    predictions = read_submission(output / "submission.csv", expected_patient_ids=good + list(expected))
    assert all(len(predictions[stem][1]) == 0 for stem in expected)
    import pandas as pd

    listed = pd.read_csv(output / "skipped_images.csv")
    reasons = {Path(where).stem: reason for where, reason in zip(listed["where"], listed["reason"])}
    assert set(reasons) == set(expected)
    for stem, fragment in expected.items():
        assert fragment in reasons[stem] and str(directory / f"{stem}.dcm") in reasons[stem]


@pytest.mark.slow
def test_without_skipping_the_first_hostile_file_stops_infer_before_more_is_read(tiny_run, hostile_directory,
                                                                                  tmp_path, monkeypatch):
    from retinanet.data.dicom import DicomReadError
    from retinanet.serve import infer, inference

    directory, _ = hostile_directory
    first = directory / "0000-deflate-bomb.dcm"  # first in the directory's order, before the films
    first.write_bytes((directory / "bomb-deflate.dcm").read_bytes())
    files = sorted(path.name for path in directory.iterdir())
    assert files[0] == first.name
    reads = []
    original = inference.read_image
    monkeypatch.setattr(inference, "read_image", lambda path, **limit: reads.append(Path(path).name)
                        or original(path, **limit))
    with pytest.raises(DicomReadError, match=f"{files[0]}: .*--skip-unreadable"):
        infer.run_inference(input_path=directory, output_dir=tmp_path / "out", run_dir=[tiny_run.run_dir],
                                progress=False, skip_unreadable=False, batch_size=2)
    # The bad file and what was in flight beside it (two batches of two ahead), never the rest.
    assert len(reads) <= 1 + 2 * 2 and len(files) > 10
