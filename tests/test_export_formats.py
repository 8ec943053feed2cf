"""`retinanet export --format tflite|onnx` end to end: each file loads in its own runtime and,
with the package's pre- and post-processing around it, gives the boxes of infer.py within 1 px."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from retinanet.data.dicom import read_image
from retinanet.data.preprocess import normalize
from retinanet.serve.export_formats import detect_with_network, load_onnx, load_tflite
from retinanet.serve.inference import Detector
from test_export import assert_agree

LOADERS = {"tflite": load_tflite, "onnx": load_onnx}


def export(run_dir, output, export_format) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retinanet", "export", "--run-dir", str(run_dir), "--output",
                           str(output), "--format", export_format], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def detector(tiny_run, evaluated_run):
    return Detector.load(run_dir=tiny_run.run_dir, threshold=0.0)


@pytest.fixture(scope="module")
def exported(tiny_run, evaluated_run, tmp_path_factory) -> dict:
    """{format: (output directory, what the command printed)}, each format exported once."""
    results = {}
    for export_format in LOADERS:
        output = tmp_path_factory.mktemp(export_format)
        completed = export(tiny_run.run_dir, output, export_format)
        assert completed.returncode == 0, completed.stderr
        results[export_format] = (output, completed.stdout)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["tflite", "onnx"])
def test_exported_network_matches_infer_script(export_format, tiny_run, detector, inferred_dicom, png_image,
                                               exported, evaluated_run):
    output, stdout = exported[export_format]
    path = output / f"model.{export_format}"
    assert f"{export_format} model written to {path}" in stdout
    # No --threshold: the run's, from evaluate.py --write-threshold.
    best = evaluated_run["metrics"]["best_threshold"]
    assert (f"score threshold {best:g} (chosen on evaluation ({evaluated_run['output'] / 'metrics.json'}), "
            f"{tiny_run.run_dir / 'threshold.json'})") in stdout
    info = json.loads((output / "serving_info.json").read_text())
    assert info["score_threshold"] == best
    assert info["format"] == export_format and info["model"] == path.name and info["input_size"] == [64, 64]
    network = LOADERS[export_format](path)

    # The raw network outputs agree with the Keras model's.
    processed, _ = detector.preprocess(read_image(inferred_dicom["path"]))
    outputs = network(processed[None])
    keras_outputs = detector.model(normalize(processed[None, ..., None], detector.config.preprocessing.channels),
                                   training=False)
    np.testing.assert_allclose(outputs["predictions"], keras_outputs["predictions"], atol=1e-3)
    assert outputs["boxes"].shape == (*outputs["predictions"].shape[:2], 4)

    document = inferred_dicom["json"]  # what infer.py wrote for the DICOM, threshold 0
    from_script = {"boxes": np.array([[b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]]
                                      for b in document["boxes"]]).reshape(-1, 4),
                   "scores": np.array([b["score"] for b in document["boxes"]]),
                   "image_probability": document["image_probability"]}
    result = detect_with_network(network, detector, read_image(inferred_dicom["path"]))
    assert len(result["scores"]) == tiny_run.config.postprocessing.max_detections
    served = {"boxes": result["boxes"].tolist(), "scores": result["scores"].tolist(),
              "num_detections": len(result["scores"]), "image_probability": result["image_probability"]}
    assert_agree(served, from_script, 0.0)

    png = cv2.imread(str(png_image), cv2.IMREAD_GRAYSCALE)
    result = detect_with_network(network, detector, png)
    expected = detector.detect_array(png)
    served = {"boxes": result["boxes"].tolist(), "scores": result["scores"].tolist(),
              "num_detections": len(result["scores"]), "image_probability": result["image_probability"]}
    assert_agree(served, expected, 0.0)


@pytest.mark.slow
def test_tflite_holds_builtin_operations_only(exported):
    import tensorflow as tf

    with warnings.catch_warnings():  # the interpreter announces its move to ai-edge-litert
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(exported["tflite"][0] / "model.tflite"))
    operations = {detail["op_name"] for detail in interpreter._get_ops_details()}
    assert "CONV_2D" in operations
    assert not any(name.startswith("Flex") for name in operations), operations  # no select TF ops
