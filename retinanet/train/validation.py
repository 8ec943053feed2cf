"""Validation on the held-out split: loss components, RSNA metric, AP, image-level AUC, overlays."""

from __future__ import annotations

import math

import cv2
import numpy as np

from retinanet.data.decode_checks import DEFAULT_LIMIT_MIB
from retinanet.data.preprocess import denormalize
from retinanet.data.rsna import Record
from retinanet.detection.detections import above, forward_function, keep_above, predict_dataset
from retinanet.detection.localization import localization_report
from retinanet.detection.metrics import (average_precision, best_of_sweep, image_level_metrics, rsna_metric,
                                         sweep_thresholds)
from retinanet.visualize import draw_boxes

OVERLAY_SIZE = 384  # pixels, at least, of the pictures of validation predictions


class NonFiniteOutputError(ValueError):
    """The model gives NaN or infinite boxes, scores or image probabilities: its training diverged."""


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


def overlays_first(records: list[Record], count: int) -> list[Record]:
    """The records reordered so that the first `count` (drawn as overlays) are half positive where possible."""
    positives = [r for r in records if r.target]
    negatives = [r for r in records if not r.target]
    first = positives[:max((count + 1) // 2, count - len(negatives))]
    first += negatives[:count - len(first)]
    chosen = {r.patient_id for r in first}
    return first + [r for r in records if r.patient_id not in chosen]


class Validator:
    """Evaluates a model on fixed held-out records; `run()` -> {"scalars" (rsna_metric at
    `score_threshold`, best_rsna_metric at best_threshold, the best of the sweep...), "overlays",
    "overlay_threshold" and its "overlay_threshold_origin", "detections", "probabilities",
    "localization" (`retinanet.detection.localization`, of the boxes at the overlay threshold)}.

    Args:
        model: the Keras model, called on the dataset's images.
        postprocessor: the `Postprocessor` that turns its outputs into boxes in original pixels.
        loss: the `RetinaNetLoss` whose components are reported on the held-out images.
        dataset: evaluation batches of `records`, in their order (`retinanet.data.pipeline.batches`).
        records: the held-out records, the first `num_overlays` of them drawn (see `overlays_first`).
        score_threshold: the configured score threshold (fraction) of `rsna_metric`.
        sweep: (start, stop, step) of the thresholds whose best gives `best_rsna_metric`.
        num_overlays: how many of the first images are drawn with their boxes.
        channels: the network input's channels (1 or 3), to turn the images back into pictures.
        views: {patient: view position} for the localization report's metric by view (None: none).
        progress: a progress bar while predicting.
    """

    def __init__(self, model, postprocessor, loss, dataset, records: list[Record], *, score_threshold: float,
                 sweep: tuple[float, float, float], num_overlays: int, channels: int, views: dict | None = None,
                 progress: bool = True):
        self.model = model
        self.postprocessor = postprocessor
        self.loss = loss
        self.dataset, self.records = dataset, records
        self.score_threshold, self.sweep = score_threshold, sweep
        self.num_overlays, self.channels, self.views = num_overlays, channels, views
        self.progress = progress
        self.forward = forward_function([model], postprocessor, loss)

    def warm_up(self) -> None:
        """Trace the forward pass on one batch, so that the next `run` takes its usual time."""
        self.forward(next(iter(self.dataset)))

    def run(self) -> dict:
        predicted = predict_dataset(self.forward, self.dataset, self.progress, "validating")
        detections, probabilities, sums = predicted.detections, predicted.probabilities, predicted.sums
        first_images = denormalize(predicted.first_batch["images"], self.channels)
        first_scales = predicted.first_batch["scales"]
        check_finite_outputs(self.records, detections, probabilities)
        ground_truth = {r.patient_id: r.boxes for r in self.records}
        by_patient = {r.patient_id: d for r, d in zip(self.records, detections)}
        threshold = self.score_threshold
        metric = rsna_metric(ground_truth, keep_above(by_patient, threshold))
        normalizer = max(1.0, sums["num_positive"])
        best_metric, best_threshold = best_of_sweep(ground_truth, by_patient,
                                                    sweep_thresholds(self.sweep))
        scalars = {"rsna_metric": metric["score"], "best_rsna_metric": best_metric, "best_threshold": best_threshold,
                   "ap50": average_precision(ground_truth, by_patient, 0.5),
                   "loss/classification": sums["classification"] / normalizer, "loss/box": sums["box"] / normalizer}
        if probabilities is not None:
            labels = np.array([r.target for r in self.records])
            scalars["loss/image"] = sums["image_loss"] / len(self.records)
            scalars["image_auc"] = image_level_metrics(labels, probabilities)["roc_auc"]
        # Pictures show the boxes at the threshold chosen on this validation: the one inference
        # uses (threshold.json) when these weights are kept as the best.
        drawn_at = best_threshold if math.isfinite(best_threshold) else threshold
        drawn_origin = ("chosen on this validation" if math.isfinite(best_threshold)
                        else "config evaluation.score_threshold: no image scored")
        overlays = []
        for index, (record, image, scale) in enumerate(zip(self.records, first_images, first_scales)):
            boxes, scores = above(*by_patient[record.patient_id], drawn_at)
            # Small network inputs are enlarged so that boxes and scores stay legible.
            zoom = max(1, OVERLAY_SIZE // max(image.shape))
            image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
            overlays.append(draw_boxes(image, record.boxes * scale * zoom, boxes * scale * zoom, scores,
                                       title=f"{record.patient_id[:8]} (network input, {zoom}x)",
                                       threshold=drawn_at, image_probability=_probability(probabilities, index)))
            if len(overlays) == self.num_overlays:
                break
        localization = localization_report(ground_truth, keep_above(by_patient, drawn_at), self.views)
        return {"scalars": scalars, "overlays": overlays, "overlay_threshold": drawn_at,
                "overlay_threshold_origin": drawn_origin, "detections": by_patient, "probabilities": probabilities,
                "localization": localization}


def _probability(probabilities, index: int) -> float | None:
    return None if probabilities is None else float(probabilities[index])


def validation_picture(records: list[Record], results: dict, count: int, tile_side: int = 768, *,
                       memory_limit_mib: float = DEFAULT_LIMIT_MIB) -> np.ndarray:
    """The first `count` records (those of `Validator.run`'s overlays) drawn from their original
    images (read within `memory_limit_mib`), each fitted into tile_side pixels, with `results`'
    boxes at its overlay threshold -> one mosaic."""
    threshold = results["overlay_threshold"]
    from retinanet.data.dicom import read_image
    from retinanet.visualize import fit_tile, grid

    tiles = []
    for index, record in enumerate(records[:count]):
        boxes, scores = above(*results["detections"][record.patient_id], threshold)
        image = read_image(record.image_path, memory_limit_mib=memory_limit_mib)
        tile, (truth, predicted) = fit_tile(image, [record.boxes, boxes], tile_side)
        tiles.append(draw_boxes(tile, truth, predicted, scores, title=record.patient_id,
                                threshold=threshold, image_probability=_probability(results["probabilities"], index)))
    return grid(tiles)
