"""Validation on the held-out split: loss components, RSNA metric, AP, image-level AUC, overlays."""

from __future__ import annotations

import math

import cv2
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retinanet.data.pipeline import build_dataset_and_records
from retinanet.data.preprocess import IMAGENET_BGR_MEAN
from retinanet.data.rsna import Record
from retinanet.losses import image_loss
from retinanet.metrics import (average_precision, best_of_sweep, image_level_metrics, rsna_metric,
                               sweep_thresholds)
from retinanet.visualize import draw_boxes

OVERLAY_SIZE = 384  # pixels, at least, of the pictures of validation predictions


class NonFiniteOutputError(ValueError):
    """The model gives NaN or infinite boxes, scores or image probabilities: its training diverged."""


def forward_function(model, postprocessor, loss=None):
    """A tf.function: batch -> (detections, extras: image probabilities and loss sums). Built
    once and reused, so that the graph is traced once, not at every validation."""
    has_image_head = "image_logits" in model.output

    def forward(batch):
        # The same passes (flip TTA) and gating as evaluation and inference.
        outputs, mirrored_outputs = postprocessor.run_model(model, batch["images"])
        detections = postprocessor.from_outputs(outputs, mirrored_outputs, batch["scales"])
        extras = {}
        if has_image_head:
            extras["image_probabilities"] = detections.pop("image_probabilities")
            extras["image_loss"] = tf.reduce_sum(image_loss(batch["image_labels"], outputs["image_logits"]))
        if loss is not None:
            extras.update(loss.components(batch["targets"], outputs["predictions"]))
        return detections, extras

    return tf.function(forward, reduce_retracing=True)


def predict_dataset(forward, dataset, progress: bool = False, desc: str = "predicting"):
    """Run `forward` (see `forward_function`) over an unshuffled dataset.

    Returns (detections: list of (boxes [D, 4] original pixels, scores [D]) in dataset order,
    image probabilities [N] or None, loss sums dict, and the first batch's network-size grey
    images uint8 [B, H, W] with their scales [B], for pictures).
    """
    detections, probabilities, sums, first_batch = [], [], {}, None
    for batch in tqdm(dataset, desc=desc, disable=not progress, unit="batch", leave=False):
        result, extras = forward(batch)
        if first_batch is None:
            # The first channel holds the grey image minus its ImageNet mean.
            grey = np.clip(batch["images"][..., 0].numpy() + IMAGENET_BGR_MEAN[0], 0, 255).astype(np.uint8)
            first_batch = (grey, batch["scales"].numpy())
        for boxes, scores, count in zip(result["boxes"].numpy(), result["scores"].numpy(),
                                        result["num_detections"].numpy()):
            detections.append((boxes[:count], scores[:count]))
        if "image_probabilities" in extras:
            probabilities.append(extras.pop("image_probabilities").numpy())
        for key, value in extras.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return detections, np.concatenate(probabilities) if probabilities else None, sums, first_batch


def check_finite_outputs(records: list[Record], detections: list, probabilities) -> None:
    """NonFiniteOutputError naming how many images (and the first) got a non-finite output.

    Finite weights can still overflow in inference mode (huge batch-norm statistics): the metrics
    would otherwise fail on the NaN with a message that does not say why.
    """
    bad = [record.patient_id for index, (record, (boxes, scores)) in enumerate(zip(records, detections))
           if not (np.isfinite(boxes).all() and np.isfinite(scores).all()
                   and (probabilities is None or np.isfinite(probabilities[index])))]
    if bad:
        raise NonFiniteOutputError(f"non-finite boxes, scores or image probabilities for {len(bad)} of "
                                   f"{len(records)} held-out images (e.g. patient {bad[0]})")


def keep_above(detections: dict, threshold: float) -> dict:
    """{patient_id: (boxes, scores)} without the boxes scoring below `threshold`."""
    return {pid: (boxes[scores >= threshold], scores[scores >= threshold]) for pid, (boxes, scores) in detections.items()}


def overlays_first(records: list[Record], count: int) -> list[Record]:
    """The records reordered so that the first `count` (drawn as overlays) are half positive where possible."""
    positives = [r for r in records if r.target]
    negatives = [r for r in records if not r.target]
    first = positives[:max((count + 1) // 2, count - len(negatives))]
    first += negatives[:count - len(first)]
    chosen = {r.patient_id for r in first}
    return first + [r for r in records if r.patient_id not in chosen]


class Validator:
    """Evaluates a model on fixed held-out records; `run()` -> {"scalars", "overlays", "detections"}."""

    def __init__(self, config, model, postprocessor, loss, records: list[Record], progress: bool = True):
        self.config = config
        self.model = model
        self.postprocessor = postprocessor
        self.loss = loss
        records = overlays_first(records, config.training.num_summary_images)
        self.dataset, self.records = build_dataset_and_records(config, "validation", records=records,
                                                               training=False, progress=progress)
        self.progress = progress
        self.forward = forward_function(model, postprocessor, loss)

    def warm_up(self) -> None:
        """Trace the forward pass on one batch, so that the next `run` takes its usual time."""
        self.forward(next(iter(self.dataset)))

    def run(self) -> dict:
        detections, probabilities, sums, (first_images, first_scales) = predict_dataset(
            self.forward, self.dataset, self.progress, "validating")
        check_finite_outputs(self.records, detections, probabilities)
        ground_truth = {r.patient_id: r.boxes for r in self.records}
        by_patient = {r.patient_id: d for r, d in zip(self.records, detections)}
        threshold = self.config.evaluation.score_threshold
        metric = rsna_metric(ground_truth, keep_above(by_patient, threshold))
        normalizer = max(1.0, sums["num_positive"])
        best_metric, best_threshold = best_of_sweep(ground_truth, by_patient,
                                                    sweep_thresholds(self.config.evaluation.sweep))
        scalars = {"rsna_metric": metric["score"], "best_rsna_metric": best_metric, "best_threshold": best_threshold,
                   "ap50": average_precision(ground_truth, by_patient, 0.5),
                   "loss/classification": sums["classification"] / normalizer, "loss/box": sums["box"] / normalizer}
        if probabilities is not None:
            labels = np.array([r.target for r in self.records])
            scalars["loss/image"] = sums["image_loss"] / len(self.records)
            scalars["image_auc"] = image_level_metrics(labels, probabilities)["roc_auc"]
        # Pictures show the boxes at the threshold chosen on this validation, as inference will.
        drawn_at = best_threshold if math.isfinite(best_threshold) else threshold
        overlays = []
        for index, (record, image, scale) in enumerate(zip(self.records, first_images, first_scales)):
            boxes, scores = keep_above({0: by_patient[record.patient_id]}, drawn_at)[0]
            # Small network inputs are enlarged so that boxes and scores stay legible.
            zoom = max(1, OVERLAY_SIZE // max(image.shape))
            image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
            overlays.append(draw_boxes(image, record.boxes * scale * zoom, boxes * scale * zoom, scores,
                                       title=f"{record.patient_id[:8]} (network input, {zoom}x)",
                                       threshold=drawn_at, image_probability=_probability(probabilities, index)))
            if len(overlays) == self.config.training.num_summary_images:
                break
        return {"scalars": scalars, "overlays": overlays, "overlay_threshold": drawn_at, "detections": by_patient,
                "probabilities": probabilities}


def _probability(probabilities, index: int) -> float | None:
    return None if probabilities is None else float(probabilities[index])


def validation_picture(records: list[Record], results: dict, count: int, tile_side: int = 768) -> np.ndarray:
    """The first `count` records (those of `Validator.run`'s overlays) drawn from their original
    images, each fitted into tile_side pixels, with `results`' boxes at its overlay threshold -> one mosaic."""
    threshold = results["overlay_threshold"]
    from retinanet.data.dicom import read_image
    from retinanet.visualize import fit_tile, grid

    tiles = []
    for index, record in enumerate(records[:count]):
        boxes, scores = keep_above({0: results["detections"][record.patient_id]}, threshold)[0]
        tile, (truth, predicted) = fit_tile(read_image(record.image_path), [record.boxes, boxes], tile_side)
        tiles.append(draw_boxes(tile, truth, predicted, scores, title=record.patient_id,
                                threshold=threshold, image_probability=_probability(results["probabilities"], index)))
    return grid(tiles)
