"""Export a trained run as a TensorFlow SavedModel that serves without this package.

Signatures (each also a method of the loaded object, e.g. `loaded.detect(image)`):

`serving_default` (= `detect`): one image of any size
    image             uint8 [H, W] or [H, W, 1] grey, or [H, W, 3] RGB
    -> boxes          float32 [N, 4] `x1, y1, x2, y2` in that image's pixels (clipped to it)
       scores         float32 [N], descending, all >= the exported score threshold
       num_detections int32 [] (= N)
       image_probability float32 [] (only when the model has the image-level head)

`detect_batch`: B images padded into one array, each in the top-left corner
    images            uint8 [B, H, W] grey, or [B, H, W, 1] / [B, H, W, 3] (RGB)
    sizes             int32 [B, 2]: each image's (height, width) inside the padding
    -> boxes [B, D, 4], scores [B, D] (zero past each image's count), num_detections [B],
       image_probability [B]; D = postprocessing.max_detections

`network`: the network alone at its fixed input size (what TFLite and ONNX hold, see
`retinanet.serve.export_formats`)
    image             uint8 [1, h, w] (the network input size): the letterboxed grey image
    -> predictions    float32 [M, A, 4 + K] box deltas and class logits, one row per anchor
       boxes          float32 [M, A, 4] the deltas decoded on the anchors, input pixels, clipped
       scores         float32 [M, A, K] class probabilities
       image_probability float32 [M] (with the image-level head)
    M is the number of models: 1 for a run, one row per model for an ensemble.
    Thresholding, NMS, flip TTA, gating, box shrink and the division by the letterbox scale are
    the caller's (`retinanet.serve.export_formats.detect_with_network` does them as inference does).

An ensemble (several runs, or a cross-validation directory, see `retinanet.serve.ensembles`) is
one SavedModel holding every model: `detect` and `detect_batch` fuse their passes as the
ensemble Detector does.

Inside `detect` and `detect_batch`: RGB to grey (OpenCV's integer weights, as `read_image`),
letterbox resize (as OpenCV's, see `letterbox_in_graph`), normalisation, the network (both
passes with flip TTA), decoding, NMS, fusion, gating and box shrink, all as the run's config
says. CLAHE is not: when `loaded.clahe` is True, the caller applies it to the original grey
image first, with the parameters stored in the SavedModel::

    import cv2, tensorflow as tf
    loaded = tf.saved_model.load("exported")
    if bool(loaded.clahe.numpy()):
        grid = int(loaded.clahe_tile_grid.numpy())
        image = cv2.createCLAHE(clipLimit=float(loaded.clahe_clip_limit.numpy()),
                                tileGridSize=(grid, grid)).apply(image)  # uint8 [H, W]
    result = loaded.signatures["serving_default"](image=tf.constant(image))

The same values are in `<export>/assets.extra/serving_info.json` with the threshold, the
network input size and the run and weights file it came from (names, no absolute paths).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from retinanet.detection import boxes as box_ops
from retinanet.data.preprocess import normalize
from retinanet.serve.inference import Detector
from retinanet.detection.postprocess import keep_above_in_graph
from retinanet.runtime.safe_writes import fill_directory

GREY_ONLY = "expected a grey [H, W] / [H, W, 1] or RGB [H, W, 3] uint8 image"
# OpenCV's fixed-point RGB -> grey weights (0.299, 0.587, 0.114 scaled by 2^15, rounded to nearest),
# so that a colour image served here gets exactly the grey values `read_image` gives the same picture.
OPENCV_GREY_WEIGHTS = (9798, 19235, 3735)
OPENCV_GREY_SHIFT = 15


def letterbox_in_graph(image, input_size: tuple[int, int]):
    """uint8 [h, w] -> (float32 [H, W, 1] holding whole values 0..255, scale float32 []).

    Matches `retinanet.data.preprocess.letterbox`: same scale and size rounding; shrinking is
    area averaging (cv2.INTER_AREA), rounded like OpenCV: halves up for its exact 2x path,
    to even otherwise, so integer factors (1024 -> 512) give identical pixels and other
    factors differ by 1 grey level on a few pixels in 10,000. Enlarging is bilinear
    (cv2.INTER_LINEAR), where OpenCV's fixed-point arithmetic differs by 1 grey level on
    about one pixel in eight.
    """
    height, width = input_size
    shape = tf.shape(image)
    original = tf.cast(shape, tf.float64)
    scale = tf.minimum(height / original[0], width / original[1])
    new_height = tf.cast(tf.clip_by_value(tf.round(original[0] * scale), 1.0, float(height)), tf.int32)
    new_width = tf.cast(tf.clip_by_value(tf.round(original[1] * scale), 1.0, float(width)), tf.int32)
    pixels = tf.cast(image, tf.float32)[None, :, :, None]

    def shrink():
        resized = tf.image.resize(pixels, [new_height, new_width], method="area")
        halving = tf.logical_and(tf.equal(shape[0], 2 * new_height), tf.equal(shape[1], 2 * new_width))
        return tf.where(halving, tf.floor(resized + 0.5), tf.round(resized))

    def enlarge():
        return tf.round(tf.image.resize(pixels, [new_height, new_width], method="bilinear"))

    resized = tf.clip_by_value(tf.cond(scale < 1.0, shrink, enlarge), 0.0, 255.0)[0]
    return tf.image.pad_to_bounding_box(resized, 0, 0, height, width), tf.cast(scale, tf.float32)


def grey_in_graph(images):
    """uint8 [..., H, W, C] with C 1 or 3 (RGB) -> uint8 [..., H, W], RGB as cv2.COLOR_RGB2GRAY."""
    images = tf.convert_to_tensor(images, tf.uint8)
    channels = tf.shape(images)[-1]
    tf.debugging.assert_equal(tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)), True,
                              message="expected 1 (grey) or 3 (RGB) channels")

    def from_rgb():
        weighted = tf.cast(images, tf.int32) * tf.constant(OPENCV_GREY_WEIGHTS, tf.int32)
        rounded = tf.reduce_sum(weighted, axis=-1) + (1 << (OPENCV_GREY_SHIFT - 1))
        return tf.cast(tf.bitwise.right_shift(rounded, OPENCV_GREY_SHIFT), tf.uint8)

    return tf.cond(tf.equal(channels, 3), from_rgb, lambda: images[..., 0])


class ServingModule(tf.Module):
    """The Detector's model and post-processing behind the signatures of the module docstring."""

    def __init__(self, detector: Detector, threshold: float):
        super().__init__(name="retinanet_serving")
        preprocessing = detector.config.preprocessing
        models = list(detector.models)
        # The models' weights, not the Keras models: saving a Keras model traces its own functions
        # too, which made the export a third longer and the load half again as long. The models
        # run inside the signatures only.
        self.model_variables = [variable for model in models for variable in model.weights]
        self._detect_models = functools.partial(detector.postprocessor.detect, models)
        self._channels = preprocessing.channels
        self._input_size = preprocessing.image_size
        self._has_image_head = detector.has_image_head
        self.input_size = tf.Variable(list(self._input_size), dtype=tf.int32, trainable=False, name="input_size")
        self.score_threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False, name="score_threshold")
        self.clahe = tf.Variable(preprocessing.clahe, trainable=False, name="clahe")
        self.clahe_clip_limit = tf.Variable(preprocessing.clahe_clip_limit, dtype=tf.float32, trainable=False,
                                            name="clahe_clip_limit")
        self.clahe_tile_grid = tf.Variable(preprocessing.clahe_tile_grid, dtype=tf.int32, trainable=False,
                                           name="clahe_tile_grid")
        self.detect = tf.function(self._detect, input_signature=[tf.TensorSpec(None, tf.uint8, name="image")])
        self.detect_batch = tf.function(self._detect_batch, input_signature=[
            tf.TensorSpec(None, tf.uint8, name="images"), tf.TensorSpec([None, 2], tf.int32, name="sizes")])
        self.network = network_function(models, detector.postprocessor.anchors, self._input_size,
                                         self._channels, self._has_image_head)

    def signatures(self) -> dict:
        return {"serving_default": self.detect.get_concrete_function(),
                "detect_batch": self.detect_batch.get_concrete_function(),
                "network": self.network.get_concrete_function()}

    def _letterbox_batch(self, grey, sizes):
        """uint8 [B, H, W] and sizes [B, 2] -> (float32 [B, h, w, 1] letterboxed, scales [B])."""
        height, width = self._input_size

        def one(item):
            image, size = item
            return letterbox_in_graph(image[: size[0], : size[1]], self._input_size)

        return tf.map_fn(one, (grey, sizes), fn_output_signature=(
            tf.TensorSpec([height, width, 1], tf.float32), tf.TensorSpec([], tf.float32)))

    def _detect_grey_batch(self, grey, sizes):
        """uint8 [B, H, W] grey with sizes [B, 2] -> the `detect_batch` outputs."""
        tf.debugging.assert_equal(tf.shape(sizes)[0], tf.shape(grey)[0], message="one size per image")
        tf.debugging.assert_positive(sizes, message="sizes must be positive")
        tf.debugging.assert_less_equal(sizes, tf.shape(grey)[1:3], message="a size exceeds the padded array")
        letterboxed, scales = self._letterbox_batch(grey, sizes)
        result = self._detect_models(normalize(letterboxed, self._channels), scales, sizes)
        result = keep_above_in_graph(result, self.score_threshold)
        outputs = {key: result[key] for key in ("boxes", "scores", "num_detections")}
        if self._has_image_head:
            outputs["image_probability"] = result["image_probabilities"]
        return outputs

    def _detect_batch(self, images, sizes):
        rank = tf.rank(images)
        tf.debugging.assert_rank_in(images, [3, 4], message="expected images [B, H, W] or [B, H, W, C]")
        grey = tf.cond(tf.equal(rank, 4), lambda: grey_in_graph(images),
                       lambda: tf.reshape(images, tf.shape(images)[:3]))
        return self._detect_grey_batch(tf.ensure_shape(grey, [None, None, None]), sizes)

    def _detect(self, image):
        tf.debugging.assert_rank_in(image, [2, 3], message=GREY_ONLY)
        grey = tf.cond(tf.equal(tf.rank(image), 3), lambda: grey_in_graph(image),
                       lambda: tf.reshape(image, tf.shape(image)[:2]))
        grey = tf.ensure_shape(grey, [None, None])
        batch = self.detect_batch(grey[None], tf.shape(grey)[None])  # its graph, not traced a second time
        count = batch["num_detections"][0]
        outputs = {"boxes": batch["boxes"][0, :count], "scores": batch["scores"][0, :count], "num_detections": count}
        if self._has_image_head:
            outputs["image_probability"] = batch["image_probability"][0]
        return outputs


def network_function(models, anchors, input_size: tuple[int, int], channels: int, has_image_head: bool):
    """The `network` signature of the module docstring as a tf.function of fixed input shape;
    `models` is one Keras model or a list (an ensemble: one output row per model)."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    anchors = np.asarray(anchors, np.float32)
    height, width = input_size

    @tf.function(input_signature=[tf.TensorSpec([1, height, width], tf.uint8, name="image")])
    def network(image):
        inputs = normalize(tf.cast(image, tf.float32)[..., None], channels)
        outputs = [model(inputs, training=False) for model in models]
        predictions = tf.concat([tf.cast(item["predictions"], tf.float32) for item in outputs], axis=0)
        # A constant of the graph, not a captured tensor: tf2onnx would make a capture an input.
        anchor_boxes = tf.constant(anchors)[None]
        result = {"predictions": predictions,
                  "boxes": box_ops.clip(box_ops.decode(predictions[..., :4], anchor_boxes), height, width),
                  "scores": tf.sigmoid(predictions[..., 4:])}
        if has_image_head:
            logits = tf.concat([tf.cast(item["image_logits"], tf.float32)[:, 0] for item in outputs], axis=0)
            result["image_probability"] = tf.sigmoid(logits)
        return result

    return network


def serving_info(detector: Detector, threshold: float) -> dict:
    """What a caller needs beside the model; paths only as names, so that exports can move."""
    preprocessing, post = detector.config.preprocessing, detector.config.postprocessing

    def named(source) -> dict:
        weights, run_dir = source.weights, source.run_dir
        return {"run": run_dir.name,
                "weights": str(weights.relative_to(run_dir)) if weights.is_relative_to(run_dir) else weights.name}

    sources = [named(source) for source in detector.sources]
    return {"input_size": list(preprocessing.image_size), "score_threshold": threshold,
            "clahe": preprocessing.clahe, "clahe_clip_limit": preprocessing.clahe_clip_limit,
            "clahe_tile_grid": preprocessing.clahe_tile_grid, "image_head": detector.has_image_head,
            "flip_tta": post.flip_tta, "image_gating": post.image_gating,
            "image_gate_threshold": post.image_gate_threshold, "box_shrink": post.box_shrink,
            "candidate_score_threshold": post.candidate_score_threshold, "pre_nms_top_k": post.pre_nms_top_k,
            "nms_iou": post.nms_iou, "max_detections": post.max_detections,
            # "source": the one run's (null for an ensemble); "sources": every model's.
            "source": sources[0] if len(sources) == 1 else None, "sources": sources,
            "num_models": len(detector.models)}


def export_detector(detector: Detector, output_dir, threshold: float | None = None) -> dict:
    """Write the SavedModel of `detector` to `output_dir`, whole or not at all (FileWriteError
    naming `output_dir`); returns the serving info."""
    threshold = detector.threshold if threshold is None else float(threshold)
    module = ServingModule(detector, threshold)
    info = serving_info(detector, threshold)

    def write(directory: Path) -> None:
        tf.saved_model.save(module, str(directory), signatures=module.signatures())
        (directory / "assets.extra").mkdir()
        (directory / "assets.extra" / "serving_info.json").write_text(json.dumps(info, indent=2))

    fill_directory(output_dir, write, last="saved_model.pb")
    return info

