"""Anchors fitted to a data set's boxes: aspect ratios and scales by k-medians on 1 - IoU.

The anchors of a config are the product levels x aspect ratios x scales: on level l an anchor
of ratio r (height / width) and scale s is `sizes[l] * s` on the side of a square of equal area,
`(sizes[l] * s / sqrt(r), sizes[l] * s * sqrt(r))` wide and high. Fitting keeps the levels and
sizes (they follow the strides) and chooses the ratios and scales that suit the boxes best.

Shapes are compared centred (`centred_iou`), as YOLO's anchor clustering does: the distance
of a box to the anchors is 1 - its best IoU with any anchor shape. Lloyd-style alternation on
that factored set: (1) give every box its best (level, ratio, scale); (2) move each ratio to
the median log aspect ratio of its boxes, and each scale to the median of
log(sqrt(box area) / sizes[level]) of its boxes (medians: robust to RSNA's long tails). Several
starts (the config's values, quantiles, seeded k-means++ draws), the best mean IoU kept. Written
here because no library clusters with this distance on a factored set (scikit-learn's KMeans is
Euclidean only); it takes milliseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import yaml

from retinanet.config import AnchorConfig, Config
from retinanet.data.preprocess import letterbox_scale
from retinanet.data.rsna import Record
from retinanet.analysis.statistics import anchor_coverage, coverage_summary

DECIMALS = 4  # of the ratios and scales written


def centred_iou(shapes_a: np.ndarray, shapes_b: np.ndarray) -> np.ndarray:
    """IoU of boxes sharing one centre: shapes [N, 2] and [M, 2] as (width, height) -> [N, M]."""
    shapes_a = np.asarray(shapes_a, np.float64).reshape(-1, 2)
    shapes_b = np.asarray(shapes_b, np.float64).reshape(-1, 2)
    intersection = (np.minimum(shapes_a[:, None, 0], shapes_b[None, :, 0])
                    * np.minimum(shapes_a[:, None, 1], shapes_b[None, :, 1]))
    union = (shapes_a[:, 0] * shapes_a[:, 1])[:, None] + (shapes_b[:, 0] * shapes_b[:, 1])[None, :] - intersection
    return intersection / union


def anchor_shapes(sizes, aspect_ratios, scales) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every anchor shape -> (shapes [L * R * S, 2] as (width, height), level index, ratio index,
    scale index [L * R * S] each), in the order of `retinanet.detection.anchors` (level, ratio, scale)."""
    level, ratio, scale = (index.ravel() for index in np.meshgrid(
        np.arange(len(sizes)), np.arange(len(aspect_ratios)), np.arange(len(scales)), indexing="ij"))
    side = np.asarray(sizes, np.float64)[level] * np.asarray(scales, np.float64)[scale]
    root_ratio = np.sqrt(np.asarray(aspect_ratios, np.float64)[ratio])
    return np.stack([side / root_ratio, side * root_ratio], axis=1), level, ratio, scale


def mean_best_iou(box_shapes: np.ndarray, sizes, aspect_ratios, scales) -> float:
    """Mean over boxes of the best centred IoU with any anchor shape."""
    shapes, *_ = anchor_shapes(sizes, aspect_ratios, scales)
    return float(centred_iou(box_shapes, shapes).max(axis=1).mean())


@dataclass(frozen=True)
class FittedShapes:
    aspect_ratios: tuple[float, ...]  # ascending
    scales: tuple[float, ...]  # ascending
    mean_iou: float  # mean best centred IoU of the boxes with the fitted anchor shapes
    iterations: int  # alternations from its start to the best iterate


def _spread_start(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding in one dimension: each next centre drawn in proportion to its squared
    distance from the nearest centre so far."""
    centres = [rng.choice(values)]
    for _ in range(count - 1):
        distance = np.min(np.abs(values[:, None] - np.asarray(centres)[None, :]), axis=1) ** 2
        total = distance.sum()
        centres.append(rng.choice(values, p=distance / total) if total > 0 else rng.choice(values))
    return np.sort(np.asarray(centres))


def _alternate(box_shapes, log_ratio, log_side, sizes, log_ratios, log_scales, max_iterations) -> FittedShapes:
    """Alternate assignment and medians from one start until the assignment stops changing; the
    best iterate (the start included) by mean best IoU, rounded as written."""
    assignment, best = None, None
    for iteration in range(max_iterations + 1):
        ratios = tuple(sorted(round(float(v), DECIMALS) for v in np.exp(log_ratios)))
        scales = tuple(sorted(round(float(v), DECIMALS) for v in np.exp(log_scales)))
        candidate = FittedShapes(ratios, scales, mean_best_iou(box_shapes, sizes, ratios, scales), iteration)
        if best is None or candidate.mean_iou > best.mean_iou + 1e-12:
            best = candidate
        shapes, level, ratio, scale = anchor_shapes(sizes, np.exp(log_ratios), np.exp(log_scales))
        nearest = centred_iou(box_shapes, shapes).argmax(axis=1)
        if assignment is not None and np.array_equal(nearest, assignment):
            break
        assignment = nearest
        log_size = np.log(np.asarray(sizes, np.float64))[level[nearest]]
        for index in range(len(log_ratios)):  # a cluster left without boxes keeps its place
            members = ratio[nearest] == index
            if members.any():
                log_ratios[index] = np.median(log_ratio[members])
        for index in range(len(log_scales)):
            members = scale[nearest] == index
            if members.any():
                log_scales[index] = np.median(log_side[members] - log_size[members])
    return best


def fit_anchor_shapes(box_shapes, sizes, num_ratios: int, num_scales: int, *, seed: int = 0, starts: int = 10,
                      max_iterations: int = 100, initial: tuple | None = None) -> FittedShapes:
    """Box shapes [N, 2] (width, height, input pixels) -> the ratios and scales that maximise
    (locally) their mean best centred IoU with the anchors of `sizes`.

    The starts: `initial` (aspect ratios, scales) when given with the right counts, so that the fit
    is never worse than it; the ratios at the quantiles of the boxes' aspect ratios and the scales
    evenly over an octave; then ratios drawn k-means++-style (`seed` fixes them) up to `starts`.
    """
    box_shapes = np.asarray(box_shapes, np.float64).reshape(-1, 2)
    if not len(box_shapes):
        raise ValueError("no boxes to fit anchors to")
    if (box_shapes <= 0).any():
        raise ValueError("box widths and heights must be positive")
    if num_ratios < 1 or num_scales < 1:
        raise ValueError(f"need at least one ratio and one scale, got {num_ratios} and {num_scales}")
    log_ratio = np.log(box_shapes[:, 1] / box_shapes[:, 0])
    log_side = 0.5 * np.log(box_shapes[:, 0] * box_shapes[:, 1])
    rng = np.random.default_rng(seed)
    even_scales = np.log(2.0) * np.arange(num_scales) / num_scales
    beginnings = [(np.quantile(log_ratio, (np.arange(num_ratios) + 0.5) / num_ratios), even_scales)]
    if initial is not None and (len(initial[0]), len(initial[1])) == (num_ratios, num_scales):
        beginnings.insert(0, (np.log(np.asarray(initial[0], np.float64)), np.log(np.asarray(initial[1], np.float64))))
    while len(beginnings) < starts:
        beginnings.append((_spread_start(log_ratio, num_ratios, rng), even_scales))
    best = None
    for log_ratios, log_scales in beginnings:
        fitted = _alternate(box_shapes, log_ratio, log_side, sizes, np.array(log_ratios, np.float64),
                            np.array(log_scales, np.float64), max_iterations)
        if best is None or fitted.mean_iou > best.mean_iou + 1e-12:
            best = fitted
    return best


def input_box_shapes(records: list[Record], config: Config) -> np.ndarray:
    """[N, 2] (width, height) of every box at the network input, scaled as training scales it."""
    boxes = [record.boxes for record in records if len(record.boxes)]
    if not boxes:
        return np.zeros((0, 2))
    boxes = np.concatenate(boxes).astype(np.float64)
    original = config.data.original_size
    scale = letterbox_scale((original, original), config.preprocessing.image_size)
    return (boxes[:, 2:] - boxes[:, :2]) * scale


@dataclass(frozen=True)
class AnchorFit:
    before: AnchorConfig
    after: AnchorConfig
    coverage_before: dict  # `coverage_summary` of the training boxes at the input size
    coverage_after: dict
    mean_iou_before: float  # mean best centred IoU
    mean_iou_after: float


def fit_anchors(records: list[Record], config: Config, *, num_ratios: int | None = None,
                num_scales: int | None = None, seed: int = 0) -> AnchorFit:
    """Fit `config.anchors`' ratios and scales to the boxes of `records`; measure both anchor sets.

    The counts default to the config's (the same anchors per location, so the heads keep their shape);
    with the config's counts its own values are one of the starts, so the fitted mean IoU is never lower.
    """
    anchors = config.anchors
    shapes = input_box_shapes(records, config)
    fitted = fit_anchor_shapes(shapes, anchors.sizes, num_ratios or len(anchors.aspect_ratios),
                               num_scales or len(anchors.scales), seed=seed,
                               initial=(anchors.aspect_ratios, anchors.scales))
    after = dataclasses.replace(anchors, aspect_ratios=fitted.aspect_ratios, scales=fitted.scales)
    image_size = config.preprocessing.image_size

    def coverage(anchor_config: AnchorConfig) -> dict:
        frame = anchor_coverage(records, image_size, anchor_config, config.data.original_size)
        return coverage_summary(frame, anchor_config.positive_iou)

    return AnchorFit(anchors, after, coverage(anchors), coverage(after),
                     mean_best_iou(shapes, anchors.sizes, anchors.aspect_ratios, anchors.scales), fitted.mean_iou)


def _plain_number(value: float):
    return int(value) if float(value).is_integer() else float(value)


def anchors_yaml(fit: AnchorFit, source: str = "") -> str:
    """The `anchors:` section of a config with the fitted values, under comments that say what was measured."""
    def describe(anchor_config: AnchorConfig, coverage: dict, mean_iou: float) -> str:
        return (f"{coverage['boxes_with_positive']} of {coverage['boxes']} boxes "
                f"({100 * coverage['fraction_with_positive']:.1f} %) have an anchor at IoU >= "
                f"{coverage['positive_iou']:g}, mean best centred IoU {mean_iou:.3f} "
                f"(aspect ratios {', '.join(f'{v:g}' for v in anchor_config.aspect_ratios)}; "
                f"scales {', '.join(f'{v:g}' for v in anchor_config.scales)})")

    section = {name: [_plain_number(v) for v in value] if isinstance(value, tuple) else value
               for name, value in dataclasses.asdict(fit.after).items()}
    header = [f"# Anchor ratios and scales fitted to the training boxes{' of ' + source if source else ''}.",
              f"# Before: {describe(fit.before, fit.coverage_before, fit.mean_iou_before)}.",
              f"# After:  {describe(fit.after, fit.coverage_after, fit.mean_iou_after)}."]
    body = yaml.safe_dump({"anchors": section}, sort_keys=False, default_flow_style=None)
    return "\n".join(header) + "\n" + body


def format_fit_report(fit: AnchorFit) -> str:
    """Two lines: the share of boxes with a positive anchor before and after."""
    lines = []
    for name, coverage, mean_iou in (("before", fit.coverage_before, fit.mean_iou_before),
                                     ("after", fit.coverage_after, fit.mean_iou_after)):
        lines.append(f"{name:6s} {coverage['boxes_with_positive']:6d} of {coverage['boxes']} boxes "
                     f"({100 * coverage['fraction_with_positive']:5.1f} %) with an anchor at IoU >= "
                     f"{coverage['positive_iou']:g}; mean best centred IoU {mean_iou:.3f}; "
                     f"{coverage['mean_positive_anchors']:.1f} positive anchors per box")
    return "\n".join(lines)

