"""scripts/export.py end to end: the SavedModel loads without this package and agrees with infer.py,
for one image (grey or RGB) and for a padded batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from retinanet.data.dicom import read_image
from retinanet.data.preprocess import apply_clahe
from retinanet.serve.inference import Detector

# Runs in a fresh interpreter where importing retinanet fails: only TensorFlow and numpy.
SERVE = """
import json, sys
sys.modules["retinanet"] = None  # any import of the package now raises ImportError
import numpy as np
import tensorflow as tf

loaded = tf.saved_model.load(sys.argv[1])
results = {"clahe": bool(loaded.clahe.numpy()), "clahe_clip_limit": float(loaded.clahe_clip_limit.numpy()),
           "clahe_tile_grid": int(loaded.clahe_tile_grid.numpy()), "images": []}
images = [np.load(path) for path in sys.argv[2:]]
for image in images:
    output = loaded.signatures["serving_default"](image=tf.constant(image))
    for variant in (image[..., None], np.repeat(image[..., None], 3, axis=-1)):  # [H, W, 1] and RGB [H, W, 3]
        same = loaded.detect(tf.constant(variant))
        assert int(same["num_detections"]) == int(output["num_detections"])
        np.testing.assert_allclose(same["boxes"].numpy(), output["boxes"].numpy(), atol=1e-3)
    results["images"].append({key: value.numpy().tolist() for key, value in output.items()})
# The batch signature: the images padded into one [B, H, W] array, with their sizes.
sizes = np.array([image.shape for image in images], np.int32)
padded = np.zeros((len(images), *sizes.max(axis=0)), np.uint8)
for index, image in enumerate(images):
    padded[index, :image.shape[0], :image.shape[1]] = image
batch = loaded.signatures["detect_batch"](images=tf.constant(padded), sizes=tf.constant(sizes))
results["batch"] = {key: value.numpy().tolist() for key, value in batch.items()}
rgb_batch = loaded.detect_batch(tf.constant(np.repeat(padded[..., None], 3, axis=-1)), tf.constant(sizes))
assert rgb_batch["num_detections"].numpy().tolist() == results["batch"]["num_detections"]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def exported(tiny_run, evaluated_run, tmp_path_factory, script):
    output = tmp_path_factory.mktemp("exported") / "model"
    completed = script("export.py", "--run-dir", tiny_run.run_dir, "--output", output, "--threshold", "0")
    assert completed.returncode == 0, completed.stderr
    assert "score threshold 0 (--threshold)" in completed.stdout
    return output


def serve_without_package(export_dir, images, scratch) -> dict:
    """Run the SavedModel on uint8 images [H, W] in a subprocess that cannot import retinanet."""
    paths = []
    for index, image in enumerate(images):
        paths.append(scratch / f"image{index}.npy")
        np.save(paths[-1], image)
    completed = subprocess.run([sys.executable, "-c", SERVE, str(export_dir), *map(str, paths)], capture_output=True,
                               text=True, cwd=scratch, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def assert_agree(served: dict, expected: dict, threshold: float) -> None:
    """Same boxes within 1 px and scores within 1e-3; a box may be missing on one side only if its
    score is within 1e-3 of the threshold (a tiny score difference moved it across)."""
    served_boxes = np.array(served["boxes"]).reshape(-1, 4)
    served_scores = np.array(served["scores"])
    count = min(len(served_scores), len(expected["scores"]))
    for extra in list(served_scores[count:]) + list(expected["scores"][count:]):
        assert abs(extra - threshold) < 1e-3
    assert served["num_detections"] == len(served_scores)
    np.testing.assert_allclose(served_boxes[:count], expected["boxes"][:count], atol=1.0)
    np.testing.assert_allclose(served_scores[:count], expected["scores"][:count], atol=1e-3)
    assert served["image_probability"] == pytest.approx(expected["image_probability"], abs=1e-3)


@pytest.mark.slow
def test_saved_model_matches_infer_script(tiny_run, exported, inferred_dicom, png_image, tmp_path):
    config = tiny_run.config.preprocessing
    dicom = read_image(inferred_dicom["path"])
    png = cv2.imread(str(png_image), cv2.IMREAD_GRAYSCALE)
    clahe = [apply_clahe(image, config.clahe_clip_limit, config.clahe_tile_grid) for image in (dicom, png)]
    served = serve_without_package(exported, clahe, tmp_path)
    assert (served["clahe"], served["clahe_clip_limit"], served["clahe_tile_grid"]) == (
        config.clahe, config.clahe_clip_limit, config.clahe_tile_grid)

    document = inferred_dicom["json"]  # what scripts/infer.py wrote for the DICOM
    from_script = {"boxes": np.array([[b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]]
                                      for b in document["boxes"]]).reshape(-1, 4),
                   "scores": np.array([b["score"] for b in document["boxes"]]),
                   "image_probability": document["image_probability"]}
    assert len(served["images"][0]["scores"]) == tiny_run.config.postprocessing.max_detections
    # 256 -> 64 px is an integer factor: the in-graph resize gives the same pixels as OpenCV.
    assert_agree(served["images"][0], from_script, document["score_threshold"])
    detector = Detector.load(run_dir=tiny_run.run_dir, threshold=0.0)
    # 240 x 200 -> 64 x 53 is not: a few pixels may differ by one grey level.
    assert_agree(served["images"][1], detector.detect_array(png), detector.threshold)
    info = json.loads((exported / "assets.extra" / "serving_info.json").read_text())
    assert info["score_threshold"] == 0.0 and info["input_size"] == [64, 64]
    # Names, no absolute paths: the export (and the run) can move.
    assert info["source"] == {"run": tiny_run.run_dir.name, "weights": "best.weights.h5"}

    batch = served["batch"]  # each image of the padded batch gives what it gives alone
    for index, single in enumerate(served["images"]):
        count = batch["num_detections"][index]
        assert count == single["num_detections"]
        np.testing.assert_allclose(np.array(batch["boxes"][index][:count]).reshape(-1, 4),
                                   np.array(single["boxes"]).reshape(-1, 4), atol=1e-3)
        np.testing.assert_allclose(batch["scores"][index][:count], single["scores"], atol=1e-5)
        assert not any(batch["scores"][index][count:])
        assert batch["image_probability"][index] == pytest.approx(single["image_probability"], abs=1e-5)


@pytest.mark.slow
def test_missing_run_is_a_clean_error(tmp_path, script, clean_error):
    completed = script("export.py", "--run-dir", tmp_path / "absent", "--output", tmp_path / "out")
    clean_error(completed, f"run directory not found: {tmp_path / 'absent'}")


@pytest.mark.parametrize("original_size, input_size, exact", [
    ((256, 256), (64, 64), True),  # 4x: OpenCV's generic area path, rounding to even
    ((1024, 1024), (512, 512), True),  # 2x: OpenCV's fast path, rounding halves up
    ((1024, 682), (512, 512), True),  # 2x into 512 x 341
    ((200, 240), (64, 64), False),
    ((517, 333), (512, 512), False),
    ((40, 50), (64, 64), False),  # enlarged: bilinear
])
def test_in_graph_letterbox_matches_opencv(original_size, input_size, exact):
    from retinanet.data.preprocess import letterbox
    from retinanet.serve.export import letterbox_in_graph

    image = np.random.default_rng(0).integers(0, 256, original_size).astype(np.uint8)
    expected, expected_scale = letterbox(image, input_size)
    letterboxed, scale = letterbox_in_graph(image, input_size)
    difference = np.abs(letterboxed.numpy()[..., 0] - expected.astype(np.float32))
    assert float(scale) == pytest.approx(expected_scale, rel=1e-7)
    assert difference.max() <= (0 if exact else 1)
    # Shrinking differs on a few pixels in 10,000; enlarging (OpenCV's fixed point) on about 1 in 8.
    assert (difference > 0).mean() < (0.002 if max(original_size) > max(input_size) else 0.2)


def test_rgb_to_grey_in_graph_matches_opencv():
    from retinanet.serve.export import grey_in_graph

    rgb = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3)).astype(np.uint8)
    expected = np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in rgb])
    np.testing.assert_array_equal(grey_in_graph(rgb).numpy(), expected)
    np.testing.assert_array_equal(grey_in_graph(rgb[..., :1]).numpy(), rgb[..., 0])
