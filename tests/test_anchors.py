"""Tests for retinanet.detection.anchors: counts, order, shapes of the anchor boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinanet.detection.anchors import (
    anchors_per_location,
    feature_map_size,
    generate_anchors_numpy,
    level_sizes,
    make_anchor_set,
    num_anchors,
)
from retinanet.config import AnchorConfig

DEFAULT = AnchorConfig()


def _expected_count(image_size, levels, per_location=9):
    """Cells per level (ceil(side / stride)) times anchors per location, written out."""
    total = 0
    for level in levels:
        stride = 2**level
        total += -(-image_size[0] // stride) * -(-image_size[1] // stride) * per_location
    return total


@pytest.mark.parametrize("image_size, expected", [((640, 832), 99_765), ((512, 512), 49_104)])
def test_documented_counts(image_size, expected):
    assert num_anchors(image_size) == expected
    anchors = generate_anchors_numpy(image_size)
    assert anchors.shape == (expected, 4)
    assert sum(level_sizes(image_size)) == expected


def test_count_for_other_sizes():
    for image_size in [(128, 128), (256, 320), (96, 160)]:
        assert num_anchors(image_size) == _expected_count(image_size, (3, 4, 5, 6, 7))
        assert generate_anchors_numpy(image_size).shape[0] == num_anchors(image_size)


def test_feature_map_size_rounds_up():
    assert feature_map_size((640, 832), 7) == (5, 7)  # 832 / 128 = 6.5
    assert feature_map_size((512, 512), 3) == (64, 64)


def test_anchor_set_holds_the_anchors_of_one_input_size():
    shape = {"levels": (3, 4), "aspect_ratios": (1.0, 2.0), "scales": (1.0,)}
    anchor_set = make_anchor_set([128, 96], sizes=(16.0, 48.0), **shape)
    assert anchor_set.image_size == (128, 96)
    assert anchor_set.boxes.dtype == np.float32
    np.testing.assert_array_equal(anchor_set.boxes, generate_anchors_numpy((128, 96), sizes=(16.0, 48.0), **shape))
    assert anchor_set.level_sizes == (16 * 12 * 2, 8 * 6 * 2)
    assert anchor_set.levels == (3, 4) and anchor_set.per_location == 2
    with pytest.raises(ValueError):
        anchor_set.boxes[0, 0] = 1.0  # shared by the encoder, the loss and the postprocessor: read-only


def test_the_config_defaults_are_the_generator_defaults():
    assert make_anchor_set((128, 128)).level_sizes == tuple(level_sizes((128, 128), DEFAULT.levels,
                                                                        DEFAULT.aspect_ratios, DEFAULT.scales))
    np.testing.assert_array_equal(generate_anchors_numpy((128, 128)), generate_anchors_numpy(
        (128, 128), DEFAULT.levels, DEFAULT.sizes, DEFAULT.aspect_ratios, DEFAULT.scales))


def test_anchors_per_location():
    assert anchors_per_location() == 9
    assert anchors_per_location(aspect_ratios=(1.0,), scales=(1.0, 2.0)) == 2


def test_level_sizes_for_square_input():
    sizes = level_sizes((512, 512))
    assert sizes == [64 * 64 * 9, 32 * 32 * 9, 16 * 16 * 9, 8 * 8 * 9, 4 * 4 * 9]


def _centres_and_shapes(anchors):
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    shapes = anchors[:, 2:] - anchors[:, :2]  # width, height
    return centres, shapes


def test_first_level_is_p3_with_stride_8_centres_row_major():
    image_size = (64, 96)
    anchors = generate_anchors_numpy(image_size)
    first = anchors[: level_sizes(image_size)[0]]
    rows, cols = 64 // 8, 96 // 8
    assert first.shape[0] == rows * cols * 9
    centres, shapes = _centres_and_shapes(first.astype(np.float64))
    centres = centres.reshape(rows, cols, 9, 2)
    for row in range(rows):
        for col in range(cols):
            np.testing.assert_allclose(centres[row, col, :, 0], (col + 0.5) * 8, atol=1e-4)
            np.testing.assert_allclose(centres[row, col, :, 1], (row + 0.5) * 8, atol=1e-4)
    # P3 sizes: sqrt(area) in {32, 32 * 2^(1/3), 32 * 2^(2/3)}.
    sides = np.sqrt(shapes[:, 0] * shapes[:, 1])
    np.testing.assert_allclose(np.unique(np.round(sides, 3)), [32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)], atol=1e-2)


def test_shapes_per_level_area_and_ratio():
    image_size = (128, 128)
    anchors = generate_anchors_numpy(image_size).astype(np.float64)
    offset = 0
    for level, size, count in zip(DEFAULT.levels, DEFAULT.sizes, level_sizes(image_size)):
        block = anchors[offset: offset + count]
        offset += count
        _, shapes = _centres_and_shapes(block)
        # Order within a location: aspect ratio major, scale minor.
        expected = [(ratio, size * scale) for ratio in DEFAULT.aspect_ratios for scale in DEFAULT.scales]
        per_location = shapes.reshape(-1, 9, 2)
        for index, (ratio, side) in enumerate(expected):
            widths, heights = per_location[:, index, 0], per_location[:, index, 1]
            np.testing.assert_allclose(widths * heights, side**2, rtol=1e-5)
            np.testing.assert_allclose(heights / widths, ratio, rtol=1e-5)
        # Centres lie on this level's stride grid.
        centres, _ = _centres_and_shapes(block)
        stride = 2**level
        grid = (centres - stride / 2) / stride
        np.testing.assert_allclose(grid, np.round(grid), atol=1e-4)
    assert offset == anchors.shape[0]


def test_levels_are_in_increasing_size_order():
    anchors = generate_anchors_numpy((256, 256)).astype(np.float64)
    boundaries = np.cumsum([0] + level_sizes((256, 256)))
    mean_sides = []
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        _, shapes = _centres_and_shapes(anchors[start:stop])
        mean_sides.append(np.sqrt(shapes[:, 0] * shapes[:, 1]).mean())
    assert mean_sides == sorted(mean_sides)
    ratios = np.array(mean_sides[1:]) / np.array(mean_sides[:-1])
    np.testing.assert_allclose(ratios, 2.0, rtol=1e-4)


def test_custom_config_with_fewer_levels():
    shape = {"levels": (3, 4), "aspect_ratios": (1.0, 2.0), "scales": (1.0,)}
    image_size = (64, 64)
    assert anchors_per_location(shape["aspect_ratios"], shape["scales"]) == 2
    assert level_sizes(image_size, **shape) == [8 * 8 * 2, 4 * 4 * 2]
    assert num_anchors(image_size, **shape) == 8 * 8 * 2 + 4 * 4 * 2
    anchors = generate_anchors_numpy(image_size, sizes=(16.0, 48.0), **shape).astype(np.float64)
    assert anchors.shape == (160, 4)
    # First anchor: P3 cell (0, 0), ratio 1, side 16 around (4, 4).
    np.testing.assert_allclose(anchors[0], [-4, -4, 12, 12], atol=1e-5)
    # Second: ratio 2 (height / width) at area 16^2: width 16 / sqrt(2), height 16 * sqrt(2).
    half_w, half_h = 8 / math.sqrt(2), 8 * math.sqrt(2)
    np.testing.assert_allclose(anchors[1], [4 - half_w, 4 - half_h, 4 + half_w, 4 + half_h], atol=1e-4)
    # First anchor of P4: cell (0, 0) of stride 16, side 48 around (8, 8).
    np.testing.assert_allclose(anchors[128], [-16, -16, 32, 32], atol=1e-5)
