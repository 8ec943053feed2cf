"""TFLite and ONNX exports of the network, and inference through them.

Both hold the `network` signature of `retinanet.export` (float32 arithmetic whatever the
run's mixed precision): uint8 [1, h, w] letterboxed grey image at the network input size ->
`predictions` [1, A, 4 + K], decoded `boxes` [1, A, 4] in input pixels, `scores` [1, A, K] and,
with the image head, `image_probability` [1]. The resizing (OpenCV's area resize has no TFLite
kernel) and the post-processing stay outside, so every operation is a TFLite builtin and an
ONNX standard one. `detect_with_network` runs an exported network exactly as `Detector` runs
the Keras model: CLAHE and letterbox with OpenCV, the same decoding, NMS, flip TTA, gating and
box shrink. `<output>/serving_info.json` carries the settings a caller needs (see
`retinanet.export.serving_info`).

TFLite conversion ships with TensorFlow; ONNX needs the `export` extra (tf2onnx, onnxruntime).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from retinanet.detections import per_image_results
from retinanet.export import export_detector, network_function, serving_info
from retinanet.inference import Detector, build_inference_model
from retinanet.postprocess import NetworkPass
from retinanet.safe_writes import (FileWriteError, make_directory, scratch_directory, write_bytes_atomically,
                                   write_failure, write_text_atomically)

MODEL_FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}
ONNX_OPSET = 17


class ConversionError(RuntimeError):
    """A format cannot be made (converter missing or failing); a file that cannot be written is a FileWriteError."""


def float32_network(detector: Detector):
    """The `network` tf.function over a float32 copy of the detector's model (same weights):
    converters do not take bfloat16 or float16 graphs."""
    config = detector.config
    float32 = replace(config, training=replace(config.training, mixed_precision="float32"))
    model = build_inference_model(float32, detector.source.weights)
    module = tf.Module()
    module.model = model  # keeps the variables alive with the function
    module.network = network_function(model, detector.postprocessor.anchors, tuple(config.preprocessing.image_size),
                                      config.preprocessing.channels, detector.has_image_head)
    return module


def _reloaded(module, directory: Path, path: Path):
    """`module` saved as a SavedModel in `directory` (a scratch directory for `path`) and loaded
    back. The converters freeze the variables of a reloaded function into constants; from the
    in-memory function they leave Keras 3's variables as uninitialised TFLite resources (NaN
    outputs) or as extra ONNX inputs."""
    try:
        tf.saved_model.save(module, str(directory), signatures={"network": module.network.get_concrete_function()})
    except (OSError, tf.errors.OpError) as error:  # a full disk: a write of `path` that failed, not the converter
        raise write_failure(path, error) from error
    return tf.saved_model.load(str(directory))


def convert_tflite(module, path: Path) -> None:
    """Write `module.network` as a TFLite flatbuffer of builtin operations only."""
    with scratch_directory(path) as scratch:
        loaded = _reloaded(module, scratch, path)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([loaded.signatures["network"]], loaded)
        model = converter.convert()
    write_bytes_atomically(path, model)


def convert_onnx(module, path: Path) -> None:
    """Write `module.network` as an ONNX model (tf2onnx, opset ONNX_OPSET)."""
    try:
        import tf2onnx
    except ImportError:
        raise ConversionError('ONNX export needs tf2onnx: pip install "rsna-retinanet[export]"') from None
    with scratch_directory(path) as scratch:
        loaded = _reloaded(module, scratch, path)  # held: the function needs its variables alive
        model, _ = tf2onnx.convert.from_function(loaded.network, input_signature=module.network.input_signature,
                                                 opset=ONNX_OPSET)
    write_bytes_atomically(path, model.SerializeToString())


def export_network(detector: Detector, output_dir, export_format: str, threshold: float | None = None) -> dict:
    """Write `<output_dir>/model.<format>` and `serving_info.json`; returns the serving info."""
    threshold = detector.threshold if threshold is None else float(threshold)
    output_dir = make_directory(output_dir)
    path = output_dir / MODEL_FILES[export_format]
    module = float32_network(detector)
    try:
        (convert_tflite if export_format == "tflite" else convert_onnx)(module, path)
    except (ConversionError, FileWriteError):
        raise
    except Exception as error:  # the converters raise many types
        raise ConversionError(f"{export_format} conversion failed: {type(error).__name__}: {error}") from None
    info = {**serving_info(detector, threshold), "format": export_format, "model": path.name}
    write_text_atomically(output_dir / "serving_info.json", json.dumps(info, indent=2))
    return info


def export_run(*, output_dir, export_format: str = "savedmodel", checkpoint=None, run_dir=None, config_path=None,
               threshold: float | None = None) -> dict:
    """`retinanet export`: load a run or an ensemble (`run_dir` a list; threshold: argument >
    threshold.json > config) and write it in `export_format` ("savedmodel", "tflite" or "onnx";
    an ensemble only as a SavedModel); the info names the model written."""
    if export_format not in ("savedmodel", *MODEL_FILES):
        raise ConversionError(f"unknown export format {export_format!r}")
    detector = Detector.load(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path, threshold=threshold)
    if export_format == "savedmodel":
        return {**export_detector(detector, output_dir), "format": "savedmodel", "model": str(output_dir)}
    if detector.is_ensemble:
        raise ConversionError(f"{export_format} holds one network: export an ensemble of {len(detector.models)} "
                              "models as a SavedModel (--format savedmodel)")
    info = export_network(detector, output_dir, export_format)
    return {**info, "model": str(Path(output_dir) / info["model"])}


def load_tflite(path):
    """A TFLite network -> callable(uint8 [1, h, w]) -> {output name: numpy array}."""
    with warnings.catch_warnings():
        # tf.lite.Interpreter announces its move to the ai-edge-litert package; it works here.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    return lambda image: runner(image=np.asarray(image, np.uint8))


def load_onnx(path):
    """An ONNX network -> callable(uint8 [1, h, w]) -> {output name: numpy array} (onnxruntime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return lambda image: dict(zip(names, session.run(None, {"image": np.asarray(image, np.uint8)})))


def detect_with_network(run_network, detector: Detector, image: np.ndarray, threshold: float | None = None) -> dict:
    """Original grey uint8 [h, w] -> a `Detector` result, the network run by `run_network`
    (`load_tflite` / `load_onnx`) and everything else as `Detector.detect_array` does it."""
    processed, scale = detector.preprocess(image)
    passes = [(run_network(processed[None]), False)]
    if detector.config.postprocessing.flip_tta:
        passes.append((run_network(processed[None, :, ::-1]), True))
    passes = [NetworkPass(tf.constant(outputs["predictions"]), outputs.get("image_probability"), mirrored)
              for outputs, mirrored in passes]
    result = detector.postprocessor(passes, tf.constant([scale], tf.float32), tf.constant([image.shape[:2]], tf.int32))
    return per_image_results(result, detector.threshold if threshold is None else threshold)[0]
