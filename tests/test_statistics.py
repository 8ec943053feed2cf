"""Tests for retinanet.analysis.statistics: counts, box sizes and anchor coverage on hand-made records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinanet.builders import anchor_set_for
from retinanet.detection.anchors import num_anchors
from retinanet.config import AnchorConfig
from retinanet.data.rsna import Record
from retinanet.analysis.statistics import (
    anchor_coverage,
    anchor_levels,
    box_frame,
    box_size_table,
    coverage_summary,
    dataset_summary,
    format_coverage_summary,
    location_anchors,
    positive_anchors,
)

# One square 16 px anchor per cell of an 8 px grid: anchors [8c - 4, 8r - 4, 8c + 12, 8r + 12].
ONE_SHAPE = AnchorConfig(levels=(3,), sizes=(16.0,), aspect_ratios=(1.0,), scales=(1.0,))


def record(patient_id: str, boxes, class_name: str = "") -> Record:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Record(patient_id, f"{patient_id}.dcm", boxes, int(len(boxes) > 0), class_name)


def hand_made_records() -> list[Record]:
    return [
        record("a", [[0, 0, 10, 20]], "Lung Opacity"),
        record("b", [[0, 0, 20, 20], [50, 50, 80, 110]], "Lung Opacity"),
        record("c", [], "Normal"),
        record("d", [], "No Lung Opacity / Not Normal"),
        record("e", [], "Normal"),
    ]


def iou_loop(box, anchor) -> float:
    width = max(0.0, min(box[2], anchor[2]) - max(box[0], anchor[0]))
    height = max(0.0, min(box[3], anchor[3]) - max(box[1], anchor[1]))
    intersection = width * height
    union = (box[2] - box[0]) * (box[3] - box[1]) + (anchor[2] - anchor[0]) * (anchor[3] - anchor[1]) - intersection
    return intersection / union if union > 0 else 0.0


def test_dataset_summary_counts_hand_made_records():
    summary = dataset_summary(hand_made_records())
    assert summary["images"] == 5
    assert summary["positive_images"] == 2
    assert summary["negative_images"] == 3
    assert summary["positive_fraction"] == pytest.approx(0.4)
    assert summary["boxes"] == 3
    assert summary["boxes_per_positive_image"] == {1: 1, 2: 1}
    # RSNA order, not order of appearance.
    assert list(summary["class_counts"].items()) == [
        ("Lung Opacity", 2), ("No Lung Opacity / Not Normal", 1), ("Normal", 2)]


def test_dataset_summary_without_class_names_or_records():
    summary = dataset_summary([record("a", [[0, 0, 4, 4]]), record("b", [])])
    assert summary["class_counts"] == {}
    assert summary["positive_fraction"] == 0.5
    empty = dataset_summary([])
    assert empty["images"] == 0 and empty["boxes"] == 0 and math.isnan(empty["positive_fraction"])


def test_box_frame_and_size_table():
    frame = box_frame(hand_made_records())
    assert frame["patient_id"].tolist() == ["a", "b", "b"]
    assert frame["width"].tolist() == [10, 20, 30]
    assert frame["height"].tolist() == [20, 20, 60]
    assert frame["aspect_ratio"].tolist() == [2, 1, 2]
    table = box_size_table(hand_made_records())
    assert list(table.index) == ["width", "height", "aspect_ratio"]
    assert list(table.columns) == ["count", "mean", "min", "p5", "p25", "median", "p75", "p95", "max"]
    assert table.loc["width", "median"] == 20
    assert table.loc["width", "min"] == 10 and table.loc["width", "max"] == 30
    assert table.loc["height", "mean"] == pytest.approx(100 / 3)
    assert table.loc["aspect_ratio", "median"] == 2
    assert table.loc["width", "p25"] == 15  # linear interpolation between 10 and 20
    assert (table["count"] == 3).all()


def test_box_size_table_without_boxes_is_nan():
    table = box_size_table([record("c", [])])
    assert (table["count"] == 0).all()
    assert table.drop(columns="count").isna().all().all()


def test_box_equal_to_an_anchor_has_iou_one():
    # Original 128 px -> 64 px input: scale 0.5, so [8, 8, 40, 40] becomes the anchor [4, 4, 20, 20].
    coverage = anchor_coverage([record("a", [[8, 8, 40, 40]])], (64, 64), ONE_SHAPE, original_size=128)
    row = coverage.iloc[0]
    assert row["best_iou"] == pytest.approx(1.0)
    assert row["width"] == pytest.approx(16) and row["height"] == pytest.approx(16)
    assert row["best_level"] == 3
    # The neighbours, shifted by 8 px, overlap 8 x 16 of 16 x 16: IoU 128 / 384 < 0.5.
    assert row["num_positive_anchors"] == 1
    assert bool(row["has_positive"])


def test_box_far_smaller_than_any_anchor_gets_no_positive_anchor():
    # A 2 x 2 box inside two 16 x 16 anchors: IoU 4 / 256 at best.
    coverage = anchor_coverage([record("a", [[5, 5, 7, 7]])], (64, 64), ONE_SHAPE, original_size=64)
    row = coverage.iloc[0]
    assert row["best_iou"] == pytest.approx(4 / 256)
    assert row["num_positive_anchors"] == 0
    assert not bool(row["has_positive"])


def test_coverage_uses_the_letterbox_scale_of_non_square_originals():
    # (height 200, width 100) into 64 x 64: scale min(64 / 200, 64 / 100) = 0.32.
    coverage = anchor_coverage([record("a", [[0, 0, 50, 100]])], (64, 64), ONE_SHAPE, original_size=(200, 100))
    assert coverage.iloc[0]["width"] == pytest.approx(16)
    assert coverage.iloc[0]["height"] == pytest.approx(32)


def test_coverage_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    config = AnchorConfig(sizes=(8.0, 16.0, 32.0, 64.0, 128.0))
    image_size = (64, 96)
    records = []
    for index in range(6):
        corners = rng.uniform(0, 96, size=(2, 2))
        sizes = rng.uniform(4, 60, size=(2, 2))
        records.append(record(f"p{index}", np.concatenate([corners, corners + sizes], axis=1)))
    coverage = anchor_coverage(records, image_size, config, original_size=96)  # scale 64 / 96
    anchors = anchor_set_for(config, image_size).boxes
    levels = anchor_levels(image_size, config)
    scale = 64 / 96
    row = 0
    for item in records:
        for box_index, box in enumerate(item.boxes * scale):
            ious = np.array([iou_loop(box, anchor) for anchor in anchors])
            assert coverage.loc[row, "patient_id"] == item.patient_id
            assert coverage.loc[row, "box_index"] == box_index
            assert coverage.loc[row, "best_iou"] == pytest.approx(ious.max(), abs=1e-5)
            assert coverage.loc[row, "best_level"] == levels[ious.argmax()]
            assert coverage.loc[row, "num_positive_anchors"] == (ious >= config.positive_iou - 1e-6).sum()
            row += 1
    assert row == len(coverage) == 12


def test_coverage_summary_counts_and_text():
    records = [record("a", [[8, 8, 40, 40]]), record("b", [[10, 10, 14, 14]]), record("c", [])]
    coverage = anchor_coverage(records, (64, 64), ONE_SHAPE, original_size=128)
    summary = coverage_summary(coverage, ONE_SHAPE.positive_iou)
    assert summary["boxes"] == 2
    assert summary["boxes_with_positive"] == 1
    assert summary["fraction_with_positive"] == 0.5
    assert summary["median_best_iou"] == pytest.approx((1.0 + 4 / 256) / 2)
    assert summary["mean_positive_anchors"] == 0.5
    assert summary["best_level_counts"] == {3: 2}
    text = format_coverage_summary(summary)
    assert "1 of 2 boxes (50.0 %)" in text and "IoU >= 0.5" in text


def test_coverage_of_no_boxes():
    coverage = anchor_coverage([record("c", [])], (64, 64), ONE_SHAPE, original_size=64)
    assert len(coverage) == 0
    summary = coverage_summary(coverage, 0.5)
    assert summary["boxes"] == 0 and math.isnan(summary["fraction_with_positive"])
    assert "no ground-truth boxes" in format_coverage_summary(summary)


def test_anchor_levels_follow_the_anchor_order():
    config = AnchorConfig()
    levels = anchor_levels((128, 128), config)
    assert len(levels) == num_anchors((128, 128), config.levels, config.aspect_ratios, config.scales)
    # 16 x 16 cells of 9 anchors on P3, then 8 x 8 on P4, ...
    assert (levels[: 16 * 16 * 9] == 3).all() and levels[16 * 16 * 9] == 4 and levels[-1] == 7


def test_location_anchors_are_centred_on_the_cell_of_the_point():
    config = AnchorConfig()
    found = location_anchors((128, 128), config, point=(13.0, 40.0))
    assert sorted(found) == [3, 4, 5, 6, 7]
    for level, anchors in found.items():
        stride = 2**level
        assert anchors.shape == (9, 4)
        centre_x = (anchors[:, 0] + anchors[:, 2]) / 2
        centre_y = (anchors[:, 1] + anchors[:, 3]) / 2
        assert centre_x == pytest.approx(np.full(9, (13 // stride + 0.5) * stride))
        assert centre_y == pytest.approx(np.full(9, (min(40 // stride, 128 // stride - 1) + 0.5) * stride))
    # Scale 1, ratio 1 on P3 is the configured 32 px square.
    widths = found[3][:, 2] - found[3][:, 0]
    assert 32.0 in np.round(widths, 4)


def test_positive_anchors_are_those_training_labels_positive():
    anchors, levels = positive_anchors([[4, 4, 20, 20]], (64, 64), ONE_SHAPE)
    assert anchors.tolist() == [[4, 4, 20, 20]]
    assert levels.tolist() == [3]
    anchors, levels = positive_anchors([[5, 5, 7, 7]], (64, 64), ONE_SHAPE)
    assert anchors.shape == (0, 4) and levels.shape == (0,)
    anchors, _ = positive_anchors(np.zeros((0, 4)), (64, 64), ONE_SHAPE)
    assert anchors.shape == (0, 4)
