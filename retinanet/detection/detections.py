"""The numpy side of the one detections path: padded results -> per-image boxes, thresholds, datasets.

`retinanet.detection.postprocess.Postprocessor` turns network outputs and letterbox info into padded
detections in original pixels, clipped to the original image. Validation, evaluation,
inference and export all get their boxes from it; here are the steps they share after it:
`unpad` (per-image arrays), `above` / `keep_above` (the score threshold) and
`predict_dataset` (an unshuffled dataset -> detections in dataset order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import tensorflow as tf
from tqdm import tqdm

if TYPE_CHECKING:
    import keras

    from retinanet.detection.losses import RetinaNetLoss
    from retinanet.detection.postprocess import Postprocessor


def unpad(result: dict[str, tf.Tensor | np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A `Postprocessor` result (tensors or numpy: "boxes" [B, D, 4], "scores" [B, D], "num_detections"
    [B]) -> per image (boxes float64 [M, 4], scores float64 [M]), M its num_detections."""
    boxes, scores, counts = (np.asarray(result[key]) for key in ("boxes", "scores", "num_detections"))
    return [(boxes[index, :count].astype(np.float64), scores[index, :count].astype(np.float64))
            for index, count in enumerate(counts)]


def above(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [M, 4], scores [M]) without the detections scoring below `threshold`."""
    keep = scores >= threshold
    return boxes[keep], scores[keep]


def keep_above(detections: dict[str, tuple[np.ndarray, np.ndarray]],
               threshold: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (boxes [M, 4], scores [M])} without the boxes scoring below `threshold`."""
    return {key: above(boxes, scores, threshold) for key, (boxes, scores) in detections.items()}


def per_image_results(result: dict[str, tf.Tensor | np.ndarray], threshold: float) -> list[dict]:
    """A `Postprocessor` result -> per image {"boxes" float64 [M, 4], "scores" float64 [M] (>= threshold),
    "image_probability" (float, or None without the image head)}: what `Detector` returns."""
    probabilities = result.get("image_probabilities")
    documents = []
    for index, (boxes, scores) in enumerate(unpad(result)):
        boxes, scores = above(boxes, scores, threshold)
        probability = None if probabilities is None else float(np.asarray(probabilities)[index])
        documents.append({"boxes": boxes, "scores": scores, "image_probability": probability})
    return documents


def forward_function(models: list[keras.Model], postprocessor: Postprocessor,
                     loss: RetinaNetLoss | None = None) -> Callable[[dict], tuple[dict, dict]]:
    """A tf.function: batch {"images", "scales", "original_sizes"[, "targets", "image_labels"]} ->
    (the `Postprocessor` result, loss sums). Built once and reused, so that its graph is traced once.

    `models` is a list: one model, or an ensemble whose passes are fused. With `loss` (one model)
    the sums hold its components on the plain pass and, with the image head, "image_loss".
    """
    from retinanet.detection.losses import image_loss
    from retinanet.detection.postprocess import network_pass

    if loss is not None and len(models) != 1:
        raise ValueError("loss sums need exactly one model")

    def forward(batch):
        raw = [item for model in models for item in postprocessor.run_model(model, batch["images"])]
        result = postprocessor([network_pass(outputs, mirrored) for outputs, mirrored in raw], batch["scales"],
                               batch["original_sizes"])
        sums = {}
        if loss is not None:
            outputs = raw[0][0]
            sums.update(loss.components(batch["targets"], outputs["predictions"]))
            if "image_logits" in outputs:
                sums["image_loss"] = tf.reduce_sum(image_loss(batch["image_labels"], outputs["image_logits"]))
        return result, sums

    return tf.function(forward, reduce_retracing=True, autograph=False)  # no tensor control flow: see train/step.py


@dataclass
class DatasetDetections:
    """What `predict_dataset` gives.

    Args:
        detections: Per image of the dataset, in its order, (boxes float64 [M, 4] `x1, y1, x2, y2`
            in original pixels, scores float64 [M] probabilities).
        probabilities: The N images' image-level probabilities [N] float32, or None without the
            image head.
        sums: Loss sums over the dataset by name (`forward_function`), floats; empty without a loss.
        first_batch: The first batch's "images" [B, H, W, C] (normalised) and "scales" [B]
            (original -> input pixels) as numpy, for pictures; None for an empty dataset.
    """

    detections: list[tuple[np.ndarray, np.ndarray]]
    probabilities: np.ndarray | None
    sums: dict[str, float]
    first_batch: dict[str, np.ndarray] | None


def predict_dataset(forward: Callable[[dict], tuple[dict, dict]], dataset: tf.data.Dataset, progress: bool = False,
                    desc: str = "predicting") -> DatasetDetections:
    """Run `forward` (see `forward_function`) over an unshuffled dataset; every detection above
    postprocessing.candidate_score_threshold is kept."""
    detections, probabilities, sums, first_batch = [], [], {}, None
    for batch in tqdm(dataset, desc=desc, disable=not progress, unit="batch", leave=False):
        result, batch_sums = forward(batch)
        if first_batch is None:
            first_batch = {key: batch[key].numpy() for key in ("images", "scales")}
        detections += unpad(result)
        if "image_probabilities" in result:
            probabilities.append(result["image_probabilities"].numpy())
        for key, value in batch_sums.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return DatasetDetections(detections, np.concatenate(probabilities) if probabilities else None, sums,
                             first_batch)
