"""TFLite and ONNX exports of the network, and inference through them.

Both hold the `network` signature of `retinanet.serve.export` (float32 arithmetic whatever the
run's mixed precision): uint8 [1, h, w] letterboxed grey image at the network input size ->
`predictions` [1, A, 4 + K], decoded `boxes` [1, A, 4] in input pixels, `scores` [1, A, K] and,
with the image head, `image_probability` [1]. The resizing (OpenCV's area resize has no TFLite
kernel) and the post-processing stay outside, so every operation is a TFLite builtin and an
ONNX standard one. `detect_with_network` runs an exported network exactly as `Detector` runs
the Keras model: CLAHE and letterbox with OpenCV, the same decoding, NMS, flip TTA, gating and
box shrink. `<output>/serving_info.json` carries the settings a caller needs (see
`retinanet.serve.export.serving_info`).

TFLite conversion ships with TensorFlow; ONNX needs the `export` extra (tf2onnx, onnxruntime).

EXPORT_FORMATS names every format `retinanet export --format` takes (its choices are this
table's keys); a new format is one converter function and one entry. This module imports
TensorFlow only when it converts, so that the command line can read the table at once.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple

from retinanet.errors import UserError
from retinanet.runtime.safe_writes import (FileWriteError, make_directory, scratch_directory, write_bytes_atomically,
                                           write_failure, write_text_atomically)

ONNX_OPSET = 17


class ConversionError(UserError, RuntimeError):
    """A format cannot be made (converter missing or failing); a file that cannot be written is a
    FileWriteError."""


def float32_network(detector):
    """The `network` tf.function over a float32 copy of the detector's model (same weights):
    converters do not take bfloat16 or float16 graphs."""
    import tensorflow as tf

    from retinanet.serve.export import network_function
    from retinanet.serve.inference import build_inference_model

    config = detector.config
    float32 = replace(config, runtime=replace(config.runtime, mixed_precision="float32"))
    model = build_inference_model(float32, detector.source.weights)
    module = tf.Module()
    module.model_variables = model.weights  # alive with the function; not the Keras model (see ServingModule)
    module.network = network_function(model, detector.postprocessor.anchors, config.preprocessing.image_size,
                                      config.preprocessing.channels, detector.has_image_head)
    return module


def _reloaded(module, directory: Path, path: Path):
    """`module` saved as a SavedModel in `directory` (a scratch directory for `path`) and loaded
    back. The converters freeze the variables of a reloaded function into constants; from the
    in-memory function they leave Keras 3's variables as uninitialised TFLite resources (NaN
    outputs) or as extra ONNX inputs."""
    import tensorflow as tf

    try:
        tf.saved_model.save(module, str(directory), signatures={"network": module.network.get_concrete_function()})
    except (OSError, tf.errors.OpError) as error:  # a full disk: a write of `path` that failed, not the converter
        raise write_failure(path, error) from error
    return tf.saved_model.load(str(directory))


def convert_tflite(module, path: Path) -> None:
    """Write `module.network` as a TFLite flatbuffer of builtin operations only."""
    import tensorflow as tf

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


class ExportFormat(NamedTuple):
    """model_file: the file written into the output directory (None: the directory is a
    SavedModel); convert(module, path) writes a `float32_network` module there."""

    model_file: str | None
    convert: Callable | None


# --format name -> what it writes. "savedmodel" is `retinanet.serve.export`'s whole detector.
EXPORT_FORMATS = {
    "savedmodel": ExportFormat(None, None),
    "tflite": ExportFormat("model.tflite", convert_tflite),
    "onnx": ExportFormat("model.onnx", convert_onnx),
}


def export_network(detector, output_dir, export_format: str, threshold: float | None = None) -> dict:
    """Write `<output_dir>/model.<format>` and `serving_info.json`; returns the serving info."""
    threshold = detector.threshold if threshold is None else float(threshold)
    output_dir = make_directory(output_dir)
    export = EXPORT_FORMATS[export_format]
    path = output_dir / export.model_file
    module = float32_network(detector)
    try:
        export.convert(module, path)
    except (ConversionError, FileWriteError):
        raise
    except Exception as error:  # the converters raise many types
        raise ConversionError(f"{export_format} conversion failed: {type(error).__name__}: {error}") from None
    from retinanet.serve.export import serving_info

    info = {**serving_info(detector, threshold), "format": export_format, "model": path.name}
    write_text_atomically(output_dir / "serving_info.json", json.dumps(info, indent=2))
    return info


def export_run(*, output_dir, export_format: str = "savedmodel", checkpoint=None, run_dir=None, config_path=None,
               threshold: float | None = None) -> dict:
    """`retinanet export`: load a run or an ensemble (`run_dir` a list; threshold: argument >
    threshold.json > config) and write it in `export_format` (a key of EXPORT_FORMATS; an
    ensemble only as a SavedModel); the info names the model written and, beside the serving
    info, where the threshold came from ("score_threshold_source")."""
    from retinanet.serve.export import export_detector
    from retinanet.serve.inference import Detector

    if export_format not in EXPORT_FORMATS:
        raise ConversionError(f"unknown export format {export_format!r}")
    detector = Detector.load(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path, threshold=threshold,
                             threshold_origin="--threshold")
    source = {"score_threshold_source": detector.threshold_origin}  # may hold a path: not in serving_info.json
    if EXPORT_FORMATS[export_format].model_file is None:
        return {**export_detector(detector, output_dir), "format": "savedmodel", "model": str(output_dir), **source}
    if detector.is_ensemble:
        raise ConversionError(f"{export_format} holds one network: export an ensemble of {len(detector.models)} "
                              "models as a SavedModel (--format savedmodel)")
    info = export_network(detector, output_dir, export_format)
    return {**info, "model": str(Path(output_dir) / info["model"]), **source}


def load_tflite(path):
    """A TFLite network -> callable(uint8 [1, h, w]) -> {output name: numpy array}."""
    import numpy as np
    import tensorflow as tf

    with warnings.catch_warnings():
        # tf.lite.Interpreter announces its move to the ai-edge-litert package; it works here.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    return lambda image: runner(image=np.asarray(image, np.uint8))


def load_onnx(path):
    """An ONNX network -> callable(uint8 [1, h, w]) -> {output name: numpy array} (onnxruntime, CPU)."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return lambda image: dict(zip(names, session.run(None, {"image": np.asarray(image, np.uint8)})))


def detect_with_network(run_network, detector, image, threshold: float | None = None) -> dict:
    """Original grey uint8 [h, w] -> a `Detector` result, the network run by `run_network`
    (`load_tflite` / `load_onnx`) and everything else as `Detector.detect_array` does it."""
    import tensorflow as tf

    from retinanet.detection.detections import per_image_results
    from retinanet.detection.postprocess import NetworkPass

    processed, scale = detector.preprocess(image)
    passes = [(run_network(processed[None]), False)]
    if detector.config.postprocessing.flip_tta:
        passes.append((run_network(processed[None, :, ::-1]), True))
    passes = [NetworkPass(tf.constant(outputs["predictions"]), outputs.get("image_probability"), mirrored)
              for outputs, mirrored in passes]
    result = detector.postprocessor(passes, tf.constant([scale], tf.float32), tf.constant([image.shape[:2]], tf.int32))
    return per_image_results(result, detector.threshold if threshold is None else threshold)[0]
