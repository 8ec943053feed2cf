"""Data set statistics for exploration: label counts, box sizes, and how well anchors cover the boxes.

Pure functions of `Record`s (boxes `x1, y1, x2, y2` in original pixels) and configs; the
exploration notebook only calls and displays them. Anchor measures work in network-input
pixels: a box is scaled by the letterbox factor of its image, exactly as training does.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from retinanet.detection import boxes as box_ops
from retinanet.builders import anchor_set_for, build_label_encoder
from retinanet.detection.anchors import feature_map_size
from retinanet.config import AnchorConfig
from retinanet.data.preprocess import letterbox_scale
from retinanet.data.rsna import CLASS_NAMES, Record

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Boxes per IoU call: [chunk, A] IoUs for A = 49,104 anchors (512 px) stay near 50 MB.
IOU_CHUNK = 256


def dataset_summary(records: list[Record]) -> dict:
    """Counts over records.

    Returns {"images", "positive_images", "negative_images", "positive_fraction" (NaN for no
    records), "boxes", "boxes_per_positive_image": {boxes: images} ascending, "class_counts":
    {class name: images}}. Class counts cover the records that carry a class name (RSNA order
    first, any other name after, alphabetically); without the class CSV only the positives carry
    one ("Lung Opacity"), and the negatives are counted in negative_images alone.
    """
    images = len(records)
    positives = sum(1 for record in records if record.target == 1)
    per_image = Counter(len(record.boxes) for record in records if record.target == 1)
    named = Counter(record.class_name for record in records if record.class_name)
    order = [name for name in CLASS_NAMES if name in named] + sorted(set(named) - set(CLASS_NAMES))
    return {
        "images": images,
        "positive_images": positives,
        "negative_images": images - positives,
        "positive_fraction": positives / images if images else float("nan"),
        "boxes": int(sum(len(record.boxes) for record in records)),
        "boxes_per_positive_image": {int(count): per_image[count] for count in sorted(per_image)},
        "class_counts": {name: named[name] for name in order},
    }


def box_frame(records: list[Record]) -> pd.DataFrame:
    """One row per box: patient_id, x1, y1, x2, y2, width, height, aspect_ratio (height / width)."""
    rows = [(record.patient_id, *(float(value) for value in box)) for record in records for box in record.boxes]
    frame = pd.DataFrame(rows, columns=["patient_id", "x1", "y1", "x2", "y2"])
    frame["width"] = frame["x2"] - frame["x1"]
    frame["height"] = frame["y2"] - frame["y1"]
    frame["aspect_ratio"] = frame["height"] / frame["width"]
    return frame


def box_size_table(records: list[Record], quantiles=QUANTILES) -> pd.DataFrame:
    """Box width, height (original pixels) and aspect ratio (height / width) summarised.

    Index: width, height, aspect_ratio. Columns: count, mean, min, one per quantile
    (`p5`, `p25`, `median`, `p75`, `p95` by default), max. NaN statistics when there are no boxes.
    """
    frame = box_frame(records)
    rows = {}
    for column in ("width", "height", "aspect_ratio"):
        values = frame[column].to_numpy(np.float64)
        row = {"count": len(values), "mean": values.mean() if len(values) else np.nan,
               "min": values.min() if len(values) else np.nan}
        for quantile in quantiles:
            name = "median" if quantile == 0.5 else f"p{round(quantile * 100):g}"
            row[name] = np.quantile(values, quantile) if len(values) else np.nan
        row["max"] = values.max() if len(values) else np.nan
        rows[column] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def anchor_levels(image_size: tuple[int, int], anchor_config: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """[A] int pyramid level of every anchor, in the order of `generate_anchors_numpy`."""
    anchor_set = anchor_set_for(anchor_config, image_size)
    return np.repeat(np.asarray(anchor_set.levels), anchor_set.level_sizes)


def _original_hw(original_size) -> tuple[int, int]:
    if np.ndim(original_size) == 0:
        return int(original_size), int(original_size)
    height, width = original_size
    return int(height), int(width)


def anchor_coverage(records: list[Record], image_size: tuple[int, int],
                    anchor_config: AnchorConfig = AnchorConfig(), original_size=1024) -> pd.DataFrame:
    """How well the anchors fit each ground-truth box, at the network input.

    Every box is scaled by the letterbox factor `letterbox_scale(original_size, image_size)`
    (`original_size` is a side or (height, width) of the originals) and compared with every
    anchor of `image_size` (height, width). One row per box: patient_id, box_index, width,
    height (input pixels), best_iou (highest IoU with any anchor), best_level (the pyramid level
    of that anchor), num_positive_anchors (anchors with IoU >= positive_iou) and
    has_positive (at least one). Unless `anchors.allow_low_quality_matches` is on, a box without
    a positive anchor never trains the box head, and the anchors on it are ignored or even
    labelled background.
    """
    image_size = tuple(image_size)
    scale = letterbox_scale(_original_hw(original_size), image_size)
    anchors = anchor_set_for(anchor_config, image_size).boxes
    levels = anchor_levels(image_size, anchor_config)
    frame = box_frame(records)
    scaled = frame[["x1", "y1", "x2", "y2"]].to_numpy(np.float32).reshape(-1, 4) * np.float32(scale)
    best_iou = np.zeros(len(scaled))
    best_index = np.zeros(len(scaled), int)
    num_positive = np.zeros(len(scaled), int)
    for start in range(0, len(scaled), IOU_CHUNK):
        iou = box_ops.pairwise_iou(scaled[start:start + IOU_CHUNK], anchors).numpy()  # [chunk, A]
        best_iou[start:start + IOU_CHUNK] = iou.max(axis=1)
        best_index[start:start + IOU_CHUNK] = iou.argmax(axis=1)
        num_positive[start:start + IOU_CHUNK] = (iou >= anchor_config.positive_iou).sum(axis=1)
    return pd.DataFrame({
        "patient_id": frame["patient_id"],
        "box_index": frame.groupby("patient_id").cumcount(),
        "width": scaled[:, 2] - scaled[:, 0],
        "height": scaled[:, 3] - scaled[:, 1],
        "best_iou": best_iou,
        "best_level": levels[best_index] if len(scaled) else np.zeros(0, int),
        "num_positive_anchors": num_positive,
        "has_positive": num_positive > 0,
    })


def coverage_summary(coverage: pd.DataFrame, positive_iou: float) -> dict:
    """An `anchor_coverage` frame -> {"boxes", "boxes_with_positive", "fraction_with_positive",
    "median_best_iou", "mean_positive_anchors", "positive_iou", "best_level_counts": {level: boxes}}.

    Fractions and medians are NaN for no boxes.
    """
    boxes = len(coverage)
    covered = int(coverage["has_positive"].sum())
    levels = Counter(int(level) for level in coverage["best_level"])
    return {
        "boxes": boxes,
        "boxes_with_positive": covered,
        "fraction_with_positive": covered / boxes if boxes else float("nan"),
        "median_best_iou": float(coverage["best_iou"].median()) if boxes else float("nan"),
        "mean_positive_anchors": float(coverage["num_positive_anchors"].mean()) if boxes else float("nan"),
        "positive_iou": float(positive_iou),
        "best_level_counts": {level: levels[level] for level in sorted(levels)},
    }


def format_coverage_summary(summary: dict) -> str:
    """`coverage_summary` -> one printable paragraph."""
    if not summary["boxes"]:
        return "Anchor coverage: no ground-truth boxes."
    levels = ", ".join(f"P{level}: {count}" for level, count in summary["best_level_counts"].items())
    return (f"Anchor coverage: {summary['boxes_with_positive']} of {summary['boxes']} boxes "
            f"({100 * summary['fraction_with_positive']:.1f} %) have at least one anchor with IoU >= "
            f"{summary['positive_iou']:g}; median best IoU {summary['median_best_iou']:.3f}, "
            f"{summary['mean_positive_anchors']:.1f} positive anchors per box on average. "
            f"Best anchor level: {levels}.")


def location_anchors(image_size: tuple[int, int], anchor_config: AnchorConfig = AnchorConfig(),
                     point: tuple[float, float] | None = None) -> dict[int, np.ndarray]:
    """{level: [S, 4] anchors} of the feature-map cell holding `point` (x, y input pixels) on each
    level; S = anchors_per_location. Default point: the image centre."""
    image_size = tuple(image_size)
    if point is None:
        point = (image_size[1] / 2, image_size[0] / 2)
    anchor_set = anchor_set_for(anchor_config, image_size)
    anchors, per_location = anchor_set.boxes, anchor_set.per_location
    offsets = np.concatenate([[0], np.cumsum(anchor_set.level_sizes)])
    result = {}
    for index, level in enumerate(anchor_config.levels):
        rows, columns = feature_map_size(image_size, level)
        stride = 2**level
        row = int(np.clip(point[1] // stride, 0, rows - 1))
        column = int(np.clip(point[0] // stride, 0, columns - 1))
        start = offsets[index] + (row * columns + column) * per_location
        result[level] = anchors[start:start + per_location]
    return result


def positive_anchors(boxes, image_size: tuple[int, int],
                     anchor_config: AnchorConfig = AnchorConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] in input pixels -> (anchors [P, 4], levels [P]) that training labels positive.

    Uses the training `LabelEncoder`, so the answer is the anchors whose targets are positive.
    """
    image_size = tuple(image_size)
    anchor_set = anchor_set_for(anchor_config, image_size)
    anchors = anchor_set.boxes
    encoder = build_label_encoder(anchor_config, anchor_set)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    states = encoder(boxes, np.zeros(len(boxes), np.float32)).numpy()[:, 4]
    positive_mask = states >= 0  # positive anchors carry their class id; NEGATIVE and IGNORE are < 0
    return anchors[positive_mask], anchor_levels(image_size, anchor_config)[positive_mask]
