"""retinanet.detection.localization on a case worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from retinanet.detection.localization import format_localization, localization_report, true_box_count_group
from retinanet.detection.metrics import IOU_THRESHOLDS

# A: one true box, one prediction 2 px short at the bottom: IoU 80 / 100 = 0.8.
# B: two true boxes; one prediction shifted by (1, 1) over the first: IoU 81 / 119 = 0.6807; the
#    second true box overlaps nothing.
# C: no true box, one prediction (a false positive at every threshold); D: nothing at all (skipped).
GROUND_TRUTH = {"A": np.array([[0, 0, 10, 10]]), "B": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),
                "C": np.zeros((0, 4)), "D": np.zeros((0, 4))}
PREDICTIONS = {"A": (np.array([[0, 0, 10, 8]]), np.array([0.9])), "B": (np.array([[1, 1, 11, 11]]), np.array([0.8])),
               "C": (np.array([[5, 5, 6, 6]]), np.array([0.5]))}
VIEWS = {"A": "PA", "B": "AP", "C": "AP", "D": "PA"}
IOU_B = 81 / 119


@pytest.fixture(scope="module")
def report():
    return localization_report(GROUND_TRUTH, PREDICTIONS, VIEWS)


def test_counts_and_hit_rate_at_each_iou_threshold(report):
    rows = report["per_iou_threshold"]
    assert [row["iou"] for row in rows] == list(IOU_THRESHOLDS)
    for row in rows:
        if row["iou"] <= IOU_B:  # 0.40 ... 0.65: A and B's first box are hits
            expected = (2, 1, 1)
        else:  # 0.70, 0.75: A alone; B's prediction becomes a false positive
            expected = (1, 2, 2)
        assert (row["true_positives"], row["false_positives"], row["false_negatives"]) == expected, row
        assert row["hit_rate"] == pytest.approx(expected[0] / 3)


def test_matched_boxes_their_iou_sizes_and_offsets(report):
    assert (report["true_boxes"], report["matched_boxes"]) == (3, 2)
    ious = [IOU_B, 0.8]
    np.testing.assert_allclose(report["matched_iou"], np.percentile(ious, [25, 50, 75]))
    np.testing.assert_allclose(report["width_ratio"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(report["height_ratio"], np.percentile([0.8, 1.0], [25, 50, 75]))
    # A's predicted centre is 1 px above the true one (-0.1 heights); B's is 1 px right and below (0.1).
    np.testing.assert_allclose(report["centre_offset_x"], np.percentile([0.0, 0.1], [25, 50, 75]))
    np.testing.assert_allclose(report["centre_offset_y"], np.percentile([-0.1, 0.1], [25, 50, 75]))


def test_metric_by_number_of_true_boxes_and_by_view(report):
    # A scores 1 at every threshold; B 1/2 at the six thresholds up to 0.65, 0 at 0.70 and 0.75;
    # C scores 0 (boxes on a film without any); D is skipped.
    assert report["by_true_boxes"] == {"0": {"images": 2, "scored_images": 1, "rsna_metric": 0.0},
                                       "1": {"images": 1, "scored_images": 1, "rsna_metric": 1.0},
                                       "2": {"images": 1, "scored_images": 1, "rsna_metric": 0.375}}
    assert report["by_view"]["AP"] == {"images": 2, "scored_images": 2, "rsna_metric": pytest.approx(0.1875)}
    assert report["by_view"]["PA"] == {"images": 2, "scored_images": 1, "rsna_metric": 1.0}


def test_nothing_matched_and_nothing_scored():
    empty = localization_report({"A": np.array([[0, 0, 10, 10]])}, {})
    assert empty["matched_boxes"] == 0 and empty["matched_iou"] is None and "by_view" not in empty
    assert all(row["false_negatives"] == 1 and row["hit_rate"] == 0 for row in empty["per_iou_threshold"])
    nothing = localization_report({"D": np.zeros((0, 4))}, {})
    assert nothing["by_true_boxes"]["0"]["rsna_metric"] is None
    assert all(row["hit_rate"] is None for row in nothing["per_iou_threshold"])


def test_true_box_count_groups_and_text(report):
    assert [true_box_count_group(count) for count in (0, 1, 2, 3, 4)] == ["0", "1", "2", "3+", "3+"]
    text = "\n".join(format_localization(report))
    assert "0.40   0.667" in text and "0.75   0.333" in text
    assert "matched (overlapping a kept box) 2" in text and "RSNA metric, view AP: 0.1875" in text
