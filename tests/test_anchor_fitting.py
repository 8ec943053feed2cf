"""Tests for retinanet.analysis.anchor_fitting and `retinanet fit-anchors`: hand-made box sets whose answer is
known, coverage against a brute-force count, and the written section loading as a config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from retinanet.analysis.anchor_fitting import (anchor_shapes, anchors_yaml, centred_iou, fit_anchor_shapes, fit_anchors,
                                           mean_best_iou)
from retinanet.builders import anchor_set_for
from retinanet.config import AnchorConfig, config_from_dict, load_config
from retinanet.data.rsna import Record

SIZES = (16.0, 32.0, 64.0, 128.0, 256.0)
ROOT_THREE = np.sqrt(3.0)


def flat_and_square(num_flat: int, num_square: int) -> np.ndarray:
    """Boxes of aspect ratio 1/3 and 1 whose side (square root of the area) is a level's size."""
    flat = [[side * ROOT_THREE, side / ROOT_THREE] for side in (16.0, 32.0, 64.0)]
    square = [[side, side] for side in (32.0, 64.0, 128.0)]
    return np.array([flat[i % 3] for i in range(num_flat)] + [square[i % 3] for i in range(num_square)])


def test_centred_iou_by_hand():
    # 10 x 10 and 5 x 20 on one centre: intersection 5 x 10, union 100 + 100 - 50.
    np.testing.assert_allclose(centred_iou([[10, 10]], [[5, 20], [10, 10], [20, 20]]), [[50 / 150, 1.0, 0.25]])


def test_anchor_shapes_follow_the_anchor_generator():
    config = AnchorConfig(levels=(3, 4), sizes=(16.0, 32.0), aspect_ratios=(0.5, 2.0), scales=(1.0, 1.5))
    shapes, level, ratio, scale = anchor_shapes(config.sizes, config.aspect_ratios, config.scales)
    generated = anchor_set_for(config, (8, 8)).boxes  # one cell per level: 4 shapes each
    np.testing.assert_allclose(shapes, generated[:, 2:] - generated[:, :2], rtol=1e-5)
    assert list(level) == [0] * 4 + [1] * 4 and list(ratio) == [0, 0, 1, 1] * 2 and list(scale) == [0, 1] * 4


@pytest.mark.parametrize("num_flat, num_square", [(15, 15), (4, 36), (36, 4)])
def test_two_aspect_ratio_clusters_are_found(num_flat, num_square):
    """Unbalanced sets put both quantile starts in one cluster: the other starts must find the second."""
    fitted = fit_anchor_shapes(flat_and_square(num_flat, num_square), SIZES, num_ratios=2, num_scales=1)
    assert fitted.aspect_ratios == pytest.approx((1 / 3, 1.0), abs=1e-4)
    assert fitted.scales == pytest.approx((1.0,), abs=1e-4)
    assert fitted.mean_iou == pytest.approx(1.0, abs=1e-4)


def test_two_scales_within_an_octave_are_found():
    boxes = np.array([[side * factor] * 2 for side in (16.0, 32.0, 64.0) for factor in (1.0, 1.5)])
    fitted = fit_anchor_shapes(boxes, SIZES, num_ratios=1, num_scales=2)
    assert fitted.aspect_ratios == pytest.approx((1.0,))
    assert fitted.scales == pytest.approx((1.0, 1.5))


def test_noisy_clusters_land_near_their_centres_and_the_seed_fixes_the_answer():
    rng = np.random.default_rng(0)
    boxes = flat_and_square(60, 60) * np.exp(rng.normal(0, 0.05, size=(120, 2)))
    fitted = fit_anchor_shapes(boxes, SIZES, num_ratios=2, num_scales=1, seed=3)
    assert fitted.aspect_ratios[0] == pytest.approx(1 / 3, rel=0.1)
    assert fitted.aspect_ratios[1] == pytest.approx(1.0, rel=0.1)
    assert fit_anchor_shapes(boxes, SIZES, num_ratios=2, num_scales=1, seed=3) == fitted


def test_fit_is_never_worse_than_the_configured_start():
    rng = np.random.default_rng(1)
    tall = np.exp(rng.normal([np.log(27.0), np.log(37.0)], [0.25, 0.35], size=(300, 2)))  # RSNA-like at 128 px
    configured = ((0.5, 1.0, 2.0), (1.0, 1.2599, 1.5874))
    fitted = fit_anchor_shapes(tall, SIZES, 3, 3, initial=configured)
    assert fitted.mean_iou >= mean_best_iou(tall, SIZES, *configured)
    assert fitted.mean_iou == pytest.approx(mean_best_iou(tall, SIZES, fitted.aspect_ratios, fitted.scales))
    assert fitted.aspect_ratios[1] > 1.0  # the boxes are tall: the middle ratio moves up


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no boxes"):
        fit_anchor_shapes(np.zeros((0, 2)), SIZES, 3, 3)
    with pytest.raises(ValueError, match="positive"):
        fit_anchor_shapes([[0.0, 4.0]], SIZES, 3, 3)


# --- fit_anchors on records, coverage and the written section ------------------------------------

def iou_loop(box, anchor) -> float:
    width = max(0.0, min(box[2], anchor[2]) - max(box[0], anchor[0]))
    height = max(0.0, min(box[3], anchor[3]) - max(box[1], anchor[1]))
    intersection = width * height
    union = (box[2] - box[0]) * (box[3] - box[1]) + (anchor[2] - anchor[0]) * (anchor[3] - anchor[1]) - intersection
    return intersection / union


def brute_force_covered(records, config, anchor_config) -> int:
    """Boxes (scaled to the input by hand) with any anchor at IoU >= positive_iou, by loops."""
    scale = config.preprocessing.image_size[0] / config.data.original_size
    anchors = anchor_set_for(anchor_config, config.preprocessing.image_size).boxes.astype(np.float64)
    covered = 0
    for record in records:
        for box in record.boxes.astype(np.float64) * scale:
            covered += any(iou_loop(box, anchor) >= anchor_config.positive_iou for anchor in anchors)
    return covered


def tall_records(count: int = 24, seed: int = 0) -> list[Record]:
    """1024 px originals with tall boxes (height / width 1.5-4) of 80-300 px across."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        width = rng.uniform(80, 300)
        height = width * rng.uniform(1.5, 4.0)
        x, y = rng.uniform(0, 1024 - width), rng.uniform(0, 1024 - min(height, 1000))
        boxes = np.array([[x, y, x + width, min(1024.0, y + height)]], np.float32)
        positive = index % 3 > 0
        records.append(Record(f"p{index}", f"p{index}.dcm", boxes if positive else np.zeros((0, 4)), int(positive)))
    return records


def small_config():
    return config_from_dict({"preprocessing": {"image_size": [128, 128]},
                             "anchors": {"sizes": list(SIZES), "aspect_ratios": [0.5, 1.0, 2.0]}})


def test_coverage_before_and_after_match_a_brute_force_count():
    records, config = tall_records(), small_config()
    fit = fit_anchors(records, config)
    assert fit.coverage_before["boxes"] == fit.coverage_after["boxes"] == 16
    assert fit.coverage_before["boxes_with_positive"] == brute_force_covered(records, config, fit.before)
    assert fit.coverage_after["boxes_with_positive"] == brute_force_covered(records, config, fit.after)
    assert fit.after.sizes == fit.before.sizes and fit.after.levels == fit.before.levels
    assert fit.mean_iou_after >= fit.mean_iou_before
    assert max(fit.after.aspect_ratios) > 2.0  # boxes up to 4 times as tall as wide


def test_written_section_loads_as_a_config_and_says_what_was_measured(tmp_path):
    config = small_config()
    config = dataclasses.replace(config, anchors=dataclasses.replace(config.anchors, allow_low_quality_matches=True))
    fit = fit_anchors(tall_records(), config, num_ratios=2, num_scales=4)
    text = anchors_yaml(fit, source="configs/x.yaml")
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    loaded = load_config(path).anchors
    assert loaded == fit.after
    assert len(loaded.aspect_ratios) == 2 and len(loaded.scales) == 4 and loaded.allow_low_quality_matches
    covered = fit.coverage_after["boxes_with_positive"]
    assert f"# After:  {covered} of 16 boxes ({100 * covered / 16:.1f} %)" in text
    assert "configs/x.yaml" in text.splitlines()[0]


@pytest.fixture(scope="module")
def synthetic_config(tmp_path_factory):
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    root = tmp_path_factory.mktemp("fit_anchors_data")
    generate_synthetic_rsna(root / "data", num_train=20, num_test=0, size=128, seed=2, progress=False)
    (root / "config.yaml").write_text(
        "data: {root: data, cache_dir: cache, original_size: 128, num_folds: 4}\n"
        "preprocessing: {image_size: [64, 64]}\nanchors: {sizes: [8, 16, 32, 64, 128]}\n")
    return root / "config.yaml"


@pytest.mark.slow
def test_command_writes_a_section_that_loads(synthetic_config, tmp_path, script):
    out = tmp_path / "anchors.yaml"
    completed = script("fit_anchors.py", "--config", synthetic_config, "--out", out, "--num-ratios", "2",
                       "--no-progress")
    assert completed.returncode == 0, completed.stderr
    loaded = load_config(out).anchors
    assert len(loaded.aspect_ratios) == 2 and len(loaded.scales) == 3 and loaded.sizes == (8, 16, 32, 64, 128)
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("before") and lines[1].startswith("after") and str(out) in lines[2]
    from retinanet.data.split import prepare_split

    config = load_config(synthetic_config)
    records = prepare_split(config, progress=False).train
    boxes = sum(len(record.boxes) for record in records)
    for line, anchor_config in ((lines[0], config.anchors), (lines[1], loaded)):
        assert f" {brute_force_covered(records, config, anchor_config)} of {boxes} boxes" in line


@pytest.mark.slow
def test_command_writes_to_stdout_without_out(synthetic_config, script):
    completed = script("fit_anchors.py", "--config", synthetic_config, "--no-progress")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("# Anchor ratios and scales fitted")
    assert "anchors:" in completed.stdout and "before" in completed.stderr


def test_command_errors_name_the_file_or_key(synthetic_config, tmp_path, script, clean_error):
    clean_error(script("fit_anchors.py", "--config", tmp_path / "missing.yaml"), "missing.yaml")
    clean_error(script("fit_anchors.py", "--config", synthetic_config, "--set", "anchors.scales=[-1]"),
                "anchors.scales")
