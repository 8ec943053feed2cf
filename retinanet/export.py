"""Export a trained run as a TensorFlow SavedModel that serves without this package.

Signature `serving_default` (also callable as `loaded.detect(image)`):

    image             uint8 [H, W] or [H, W, 1], one greyscale image of any size
    -> boxes          float32 [N, 4] `x1, y1, x2, y2` in that image's pixels (clipped to it)
       scores         float32 [N], descending, all >= the exported score threshold
       num_detections int32 [] (= N)
       image_probability float32 [] (only when the model has the image-level head)

Inside the graph: letterbox resize (as OpenCV's, see `letterbox_in_graph`), normalisation,
the network (both passes with flip TTA), decoding, NMS, fusion, gating and box shrink, all
as the run's config says. CLAHE is not: when `loaded.clahe` is True, the caller applies it
to the original image first, with the parameters stored in the SavedModel::

    import cv2, tensorflow as tf
    loaded = tf.saved_model.load("exported")
    if bool(loaded.clahe.numpy()):
        grid = int(loaded.clahe_tile_grid.numpy())
        image = cv2.createCLAHE(clipLimit=float(loaded.clahe_clip_limit.numpy()),
                                tileGridSize=(grid, grid)).apply(image)  # uint8 [H, W]
    result = loaded.signatures["serving_default"](image=tf.constant(image))

The same values are in `<export>/assets.extra/serving_info.json` with the threshold and
the network input size.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from retinanet.data.preprocess import normalize
from retinanet.inference import Detector


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


class ServingModule(tf.Module):
    """The Detector's model and post-processing behind a one-image, any-size uint8 signature."""

    def __init__(self, detector: Detector, threshold: float):
        super().__init__(name="retinanet_serving")
        preprocessing = detector.config.preprocessing
        self.model = detector.model
        self._postprocessor = detector.postprocessor
        self._channels = preprocessing.channels
        self._input_size = tuple(preprocessing.image_size)
        self._has_image_head = detector.has_image_head
        self.input_size = tf.Variable(list(self._input_size), dtype=tf.int32, trainable=False, name="input_size")
        self.score_threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False, name="score_threshold")
        self.clahe = tf.Variable(preprocessing.clahe, trainable=False, name="clahe")
        self.clahe_clip_limit = tf.Variable(preprocessing.clahe_clip_limit, dtype=tf.float32, trainable=False,
                                            name="clahe_clip_limit")
        self.clahe_tile_grid = tf.Variable(preprocessing.clahe_tile_grid, dtype=tf.int32, trainable=False,
                                           name="clahe_tile_grid")
        self.detect = tf.function(self._detect, input_signature=[tf.TensorSpec(None, tf.uint8, name="image")])

    def _detect(self, image):
        shape = tf.shape(image)
        tf.debugging.assert_rank_in(image, [2, 3], message="expected one greyscale image [H, W] or [H, W, 1]")
        tf.debugging.assert_equal(tf.size(image), shape[0] * shape[1],
                                  message="expected one greyscale image [H, W] or [H, W, 1]")
        image = tf.ensure_shape(tf.reshape(image, shape[:2]), [None, None])
        letterboxed, scale = letterbox_in_graph(image, self._input_size)
        result = self._postprocessor.detect(self.model, normalize(letterboxed[None], self._channels), scale[None])
        count = result["num_detections"][0]
        boxes, scores = result["boxes"][0, :count], result["scores"][0, :count]
        size = tf.cast(tf.stack([shape[1], shape[0], shape[1], shape[0]]), tf.float32)
        boxes = tf.clip_by_value(boxes, 0.0, size)
        keep = scores >= self.score_threshold
        boxes, scores = tf.boolean_mask(boxes, keep), tf.boolean_mask(scores, keep)
        outputs = {"boxes": boxes, "scores": scores, "num_detections": tf.shape(scores)[0]}
        if self._has_image_head:
            outputs["image_probability"] = result["image_probabilities"][0]
        return outputs


def serving_info(detector: Detector, threshold: float) -> dict:
    preprocessing = detector.config.preprocessing
    return {"input_size": list(preprocessing.image_size), "score_threshold": threshold,
            "clahe": preprocessing.clahe, "clahe_clip_limit": preprocessing.clahe_clip_limit,
            "clahe_tile_grid": preprocessing.clahe_tile_grid, "image_head": detector.has_image_head,
            "flip_tta": detector.config.postprocessing.flip_tta,
            "image_gating": detector.config.postprocessing.image_gating,
            "box_shrink": detector.config.postprocessing.box_shrink,
            "weights": str(detector.source.weights) if detector.source else None}


def export_detector(detector: Detector, output_dir, threshold: float | None = None) -> dict:
    """Write the SavedModel of `detector` to `output_dir`; returns the serving info."""
    threshold = detector.threshold if threshold is None else float(threshold)
    module = ServingModule(detector, threshold)
    output_dir = Path(output_dir)
    tf.saved_model.save(module, str(output_dir),
                        signatures={"serving_default": module.detect.get_concrete_function()})
    info = serving_info(detector, threshold)
    (output_dir / "assets.extra").mkdir(exist_ok=True)
    (output_dir / "assets.extra" / "serving_info.json").write_text(json.dumps(info, indent=2))
    return info


def export_saved_model(*, output_dir, checkpoint=None, run_dir=None, config_path=None,
                       threshold: float | None = None) -> dict:
    """`scripts/export.py`: load a run (threshold: argument > threshold.json > config) and export it."""
    detector = Detector.load(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path, threshold=threshold)
    return export_detector(detector, output_dir)
