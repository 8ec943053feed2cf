"""The one detections path: validation, evaluation, inference and export give the same boxes.

A tiny untrained model (64 px input, grey `channels: 1`, flip TTA, gating by multiplication,
box shrink) on a non-square 96 x 128 original, whose letterboxed image leaves padding below it:
boxes reaching into the padding must come back clipped to the original image in every path.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from retinanet.config import save_config
from retinanet.data.dicom import read_image
from retinanet.data.preprocess import denormalize, normalize, preprocess_image
from retinanet.data.rsna import Record
from retinanet.detection.detections import above, keep_above, per_image_results, unpad

ORIGINAL_HEIGHT, ORIGINAL_WIDTH = 96, 128  # letterboxed at scale 0.5 into the top 48 rows of 64 x 64


def tiny_config(root, channels: int = 1):
    """The tests' tiny config (tests/helpers.py) with flip TTA, gating and shrinking on."""
    return helpers.tiny_config(root, root / "cache", data={"split_file": str(root / "split.csv"),
                                                            "num_parallel_calls": 1},
                               preprocessing={"channels": channels}, model={"image_head": True, "fpn_channels": 8},
                               postprocessing={"candidate_score_threshold": 0.0, "max_detections": 10,
                                               "flip_tta": True, "image_gating": "multiply", "box_shrink": 0.9},
                               training={"num_summary_images": 1},
                               evaluation={"batch_size": 1, "score_threshold": 0.0})


def chest_like_image() -> np.ndarray:
    """uint8 [96, 128]: a smooth gradient with two bright blobs (CLAHE keeps it varied)."""
    rows, columns = np.mgrid[0:ORIGINAL_HEIGHT, 0:ORIGINAL_WIDTH]
    image = 60 + 0.8 * columns + 0.5 * rows
    for (y, x, radius) in ((40, 35, 14), (70, 95, 18)):
        image += 90 * np.exp(-((rows - y) ** 2 + (columns - x) ** 2) / (2 * radius ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_run(run_dir, config, seed: int):
    """An untrained run directory (config.yaml, best.weights.h5) whose scores are spread out."""
    from retinanet.serve.inference import build_untrained_model

    keras.utils.set_random_seed(seed)
    model = build_untrained_model(config)
    for layer, kernel_factor, bias_shift in ((model.get_layer("class_head").get_layer("class_head_conv0"), 1.0, 0.5),
                                             (model.get_layer("class_head").get_layer("class_head_output"), 30.0, 0.0),
                                             (model.get_layer("image_logits"), 1.0, 7.0)):
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * kernel_factor, bias + bias_shift])
    run_dir.mkdir(parents=True)
    model.save_weights(str(run_dir / "best.weights.h5"))
    save_config(config, run_dir / "config.yaml")
    return run_dir


@pytest.fixture(scope="module")
def tiny_detector_run(tmp_path_factory):
    """(run directory, Record of the one image, Detector): untrained weights whose class logits are
    spread out (the head's features lifted off ReLU's zero, its output kernel enlarged) and whose
    image probability is near 0.4, so that the detections are not a tie of equal scores."""
    from retinanet.serve.inference import Detector

    root = tmp_path_factory.mktemp("detections")
    image_path = root / "patient.png"
    cv2.imwrite(str(image_path), chest_like_image())
    config = tiny_config(root)
    run_dir = write_run(root / "run", config, seed=3)
    record = Record("patient", str(image_path), np.array([[20.0, 50.0, 60.0, 90.0]]), 1)
    return run_dir, record, Detector.load(run_dir=run_dir, threshold=0.0)


def validation_detections(detector, record):
    from retinanet.builders import build_loss, build_validator

    config = detector.config
    loss = build_loss(config, detector.anchor_set)
    validator = build_validator(config, detector.model, detector.postprocessor, loss, [record], detector.anchor_set,
                                progress=False)
    return validator.run()


def exported_detections(detector, image, directory):
    from retinanet.data.preprocess import apply_clahe
    from retinanet.serve.export import export_detector

    export_detector(detector, directory, threshold=0.0)
    loaded = tf.saved_model.load(str(directory))
    # The SavedModel leaves CLAHE to the caller (see retinanet.serve.export).
    clahe = apply_clahe(image, float(loaded.clahe_clip_limit.numpy()), int(loaded.clahe_tile_grid.numpy()))
    result = loaded.detect(tf.constant(clahe))
    return result["boxes"].numpy().astype(np.float64), result["scores"].numpy().astype(np.float64)


@pytest.mark.slow
def test_validation_evaluation_inference_and_export_give_the_same_boxes(tiny_detector_run, tmp_path):
    from retinanet.evaluate.evaluation import predict_records

    _, record, detector = tiny_detector_run
    image = read_image(record.image_path)
    assert image.shape == (ORIGINAL_HEIGHT, ORIGINAL_WIDTH)
    inferred = detector.detect_image(record.image_path)
    paths = {
        "inference": (inferred["boxes"], inferred["scores"]),
        "evaluation": predict_records(detector, [record], progress=False)[1][record.patient_id],
        "validation": validation_detections(detector, record)["detections"][record.patient_id],
        "export": exported_detections(detector, image, tmp_path / "exported"),
    }
    boxes, scores = paths["inference"]
    assert len(scores) == detector.config.postprocessing.max_detections
    assert np.all(np.diff(scores) <= 0) and len(np.unique(scores)) > 5  # spread out, most confident first
    # Inside the original image; the untrained boxes reach its lower edge, the letterbox padding.
    assert np.all(boxes >= 0)
    assert np.all(boxes[:, [0, 2]] <= ORIGINAL_WIDTH) and np.all(boxes[:, [1, 3]] <= ORIGINAL_HEIGHT)
    assert np.any(boxes[:, 3] == ORIGINAL_HEIGHT)
    for name, (other_boxes, other_scores) in paths.items():
        np.testing.assert_allclose(other_scores, scores, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(other_boxes, boxes, atol=1e-3, err_msg=name)


@pytest.mark.slow
def test_validation_overlay_shows_the_network_input_for_one_channel(tiny_detector_run):
    _, record, detector = tiny_detector_run
    assert detector.config.preprocessing.channels == 1
    overlay = validation_detections(detector, record)["overlays"][0]
    processed, _ = preprocess_image(read_image(record.image_path), detector.config.preprocessing)
    zoom = overlay.shape[1] // processed.shape[1]
    expected = cv2.resize(processed, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    picture = overlay[-expected.shape[0]:]  # below the header band
    # Pixels no box or mark was drawn on are grey (R = G = B) and must be the input's own values.
    untouched = (picture[..., 0] == picture[..., 1]) & (picture[..., 1] == picture[..., 2])
    assert untouched.mean() > 0.5
    np.testing.assert_array_equal(picture[..., 0][untouched], expected[untouched])


@pytest.mark.parametrize("channels", [1, 3])
def test_denormalize_inverts_normalize(channels):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    normalised = normalize(grey[None, ..., None], channels).numpy()
    assert normalised.shape == (1, 16, 16, channels)
    np.testing.assert_array_equal(denormalize(normalised, channels)[0], grey)


def test_unpad_and_thresholds_on_a_padded_result():
    result = {"boxes": np.array([[[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 0]],
                                 [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32),
              "scores": np.array([[0.9, 0.4, 0.0], [0.0, 0.0, 0.0]], np.float32),
              "num_detections": np.array([2, 0]), "image_probabilities": np.array([0.7, 0.2], np.float32)}
    (first_boxes, first_scores), (second_boxes, second_scores) = unpad(result)
    np.testing.assert_array_equal(first_boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert first_boxes.dtype == np.float64 and second_boxes.shape == (0, 4) and second_scores.shape == (0,)
    boxes, scores = above(first_boxes, first_scores, 0.5)
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 4]])
    assert keep_above({"a": (first_boxes, first_scores)}, 0.4)["a"][1].tolist() == pytest.approx([0.9, 0.4])
    documents = per_image_results(result, 0.5)
    assert [len(document["scores"]) for document in documents] == [1, 0]
    assert [document["image_probability"] for document in documents] == pytest.approx([0.7, 0.2])
    assert per_image_results({key: value for key, value in result.items() if key != "image_probabilities"},
                             0.0)[0]["image_probability"] is None
