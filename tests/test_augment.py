"""Tests for retinanet.data.augment: image and boxes move together; visibility, determinism, range."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from retinanet.config import AugmentationConfig
from retinanet.data.augment import (AugmentationRanges, Augmenter, augment, augment_geometry, augment_intensity,
                                    make_noise_bank, transform_boxes)

HEIGHT, WIDTH = 64, 96
BRIGHT = 200.0
NOISE_BANK = make_noise_bank((HEIGHT, WIDTH))


def ranges(**changes) -> AugmentationRanges:
    """The config's default ranges (every jitter on), with `changes`."""
    defaults = dataclasses.asdict(AugmentationConfig())
    defaults.pop("enabled")
    return AugmentationRanges(**{**defaults, **changes})


# Geometry switched off except for what a test turns on.
IDENTITY = ranges(horizontal_flip=0.0, scale_range=(1.0, 1.0), translate_fraction=0.0, rotation_degrees=0.0,
                  min_visible_fraction=0.4)


def rectangle_image(box, height=HEIGHT, width=WIDTH):
    """Black float32 [H, W, 1] image with the pixels inside `box` (x1, y1, x2, y2; integer edges) bright."""
    image = np.zeros([height, width, 1], np.float32)
    x1, y1, x2, y2 = (int(v) for v in box)
    image[y1:y2, x1:x2] = BRIGHT
    return image


def bright_extent(image, threshold=BRIGHT / 2):
    """[x1, y1, x2, y2] of the pixels above `threshold`, as pixel edges (pixel i spans [i, i + 1])."""
    rows, cols = np.nonzero(np.asarray(image)[..., 0] > threshold)
    assert rows.size > 0, "no bright pixels left"
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)


def seed(a, b=0):
    return np.random.default_rng([a, b])


def test_horizontal_flip_moves_rectangle_and_box():
    box = [10.0, 20.0, 30.0, 40.0]
    config = dataclasses.replace(IDENTITY, horizontal_flip=1.0)
    image, boxes = augment_geometry(np.asarray(rectangle_image(box)), np.asarray([box]), config, seed(3))
    # Mirror: x -> WIDTH - x.
    np.testing.assert_allclose(boxes, [[WIDTH - 30.0, 20.0, WIDTH - 10.0, 40.0]], atol=1e-3)
    np.testing.assert_allclose(bright_extent(image), boxes[0], atol=1.0)
    assert image.shape == (HEIGHT, WIDTH, 1)


def test_identity_geometry_changes_nothing():
    box = [10.0, 20.0, 30.0, 40.0]
    source = rectangle_image(box)
    image, boxes = augment_geometry(np.asarray(source), np.asarray([box]), IDENTITY, seed(4))
    np.testing.assert_allclose(boxes, [box], atol=1e-3)
    np.testing.assert_allclose(image, source, atol=1e-3)


def test_horizontal_flip_is_an_exact_mirror():
    source = np.tile(np.arange(1, WIDTH + 1, dtype=np.float32)[None, :, None], [HEIGHT, 1, 1])
    config = dataclasses.replace(IDENTITY, horizontal_flip=1.0)
    image, _ = augment_geometry(np.asarray(source), np.zeros([0, 4]), config, seed(5))
    np.testing.assert_allclose(image, source[:, ::-1], atol=1e-3)


@pytest.mark.parametrize("seed_value", range(6))
def test_random_affine_keeps_rectangle_inside_its_box(seed_value):
    box = [36.0, 24.0, 60.0, 42.0]
    config = dataclasses.replace(IDENTITY, horizontal_flip=0.5, scale_range=(0.8, 1.25), rotation_degrees=10.0,
                                 translate_fraction=0.1)
    image, boxes = augment_geometry(np.asarray(rectangle_image(box)), np.asarray([box]), config, seed(seed_value))
    assert boxes.shape == (1, 4)
    transformed = boxes[0]
    extent = bright_extent(image)
    tolerance = 2.0
    # The bright rectangle lies within the transformed box ...
    assert extent[0] >= transformed[0] - tolerance and extent[1] >= transformed[1] - tolerance
    assert extent[2] <= transformed[2] + tolerance and extent[3] <= transformed[3] + tolerance
    # ... and fills it (the enclosing box of a rotated rectangle touches its corners).
    assert extent[0] <= transformed[0] + tolerance and extent[1] <= transformed[1] + tolerance
    assert extent[2] >= transformed[2] - tolerance and extent[3] >= transformed[3] - tolerance


def test_random_affine_actually_moves_the_box():
    box = [36.0, 24.0, 60.0, 42.0]
    config = dataclasses.replace(IDENTITY, scale_range=(0.8, 1.25), rotation_degrees=10.0, translate_fraction=0.1)
    moved = [augment_geometry(np.asarray(rectangle_image(box)), np.asarray([box]), config, seed(s))[1]
             for s in range(4)]
    assert any(np.abs(m[0] - box).max() > 1.0 for m in moved)


def test_scale_two_about_centre_drops_and_clips_boxes():
    # 64 x 64 image, scale 2 about (32, 32): x -> 2x - 32.
    config = dataclasses.replace(IDENTITY, scale_range=(2.0, 2.0), min_visible_fraction=0.4)
    boxes = np.asarray([
        [0.0, 0.0, 16.0, 16.0],  # -> [-32, -32, 0, 0]: entirely outside, dropped
        [24.0, 24.0, 40.0, 40.0],  # -> [16, 16, 48, 48]: inside
        [4.0, 24.0, 20.0, 40.0],  # -> x [-24, 8]: 25 % visible, dropped
        [12.0, 24.0, 28.0, 40.0],  # -> x [-8, 24]: 75 % visible, clipped to x [0, 24]
    ])
    image = np.zeros([64, 64, 1], np.float32)
    _, result = augment_geometry(image, boxes, config, seed(0))
    np.testing.assert_allclose(result, [[16.0, 16.0, 48.0, 48.0], [0.0, 16.0, 24.0, 48.0]], atol=1e-3)


def test_transform_boxes_visibility_and_clipping():
    shift = np.asarray([[1.0, 0.0, 50.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # 50 px to the right
    boxes = np.asarray([
        [10.0, 10.0, 40.0, 30.0],  # -> [60, 90]: inside
        [40.0, 10.0, 80.0, 30.0],  # -> [90, 130]: 6 / 40 visible, dropped
        [20.0, 10.0, 60.0, 30.0],  # -> [70, 110]: 26 / 40 visible, clipped at 96
    ])
    kept, keep = transform_boxes(boxes, shift, float(HEIGHT), float(WIDTH), 0.4)
    assert keep.tolist() == [True, False, True]
    np.testing.assert_allclose(kept, [[60.0, 10.0, 90.0, 30.0], [70.0, 10.0, 96.0, 30.0]], atol=1e-4)
    # A stricter policy drops the clipped one too (26 / 40 = 0.65).
    _, strict = transform_boxes(boxes, shift, float(HEIGHT), float(WIDTH), 0.7)
    assert strict.tolist() == [True, False, False]


def test_transform_boxes_rotation_gives_enclosing_box():
    angle = math.radians(90)
    # Rotate by 90 degrees about (48, 32): (x, y) -> (48 - (y - 32), 32 + (x - 48)).
    matrix = np.asarray([[math.cos(angle), -math.sin(angle), 48 + 32],
                          [math.sin(angle), math.cos(angle), 32 - 48],
                          [0.0, 0.0, 1.0]])
    kept, keep = transform_boxes(np.asarray([[40.0, 28.0, 56.0, 36.0]]), matrix, float(HEIGHT), float(WIDTH), 0.4)
    assert keep.tolist() == [True]
    np.testing.assert_allclose(kept, [[44.0, 24.0, 52.0, 40.0]], atol=1e-3)


def test_no_boxes_passes_through():
    config = dataclasses.replace(IDENTITY, horizontal_flip=0.5, rotation_degrees=5.0)
    image, boxes = augment(rectangle_image([10, 10, 20, 20]).astype(np.uint8), np.zeros([0, 4]), config, [1, 0],
                           NOISE_BANK)
    assert boxes.shape == (0, 4)
    assert image.shape == (HEIGHT, WIDTH, 1)


def test_same_seed_same_output_different_seed_different():
    box = [36.0, 24.0, 60.0, 42.0]
    source = (rectangle_image(box) + 20.0).astype(np.uint8)
    config = ranges()  # every jitter on
    image_a, boxes_a = augment(source, np.asarray([box]), config, [7, 1], NOISE_BANK)
    image_b, boxes_b = augment(source, np.asarray([box]), config, [7, 1], NOISE_BANK)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(boxes_a, boxes_b)
    image_c, boxes_c = augment(source, np.asarray([box]), config, [8, 1], NOISE_BANK)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(boxes_a, boxes_c)


def test_augmenter_through_tf_numpy_function_matches_a_direct_call():
    box = [36.0, 24.0, 60.0, 42.0]
    source = rectangle_image(box).astype(np.uint8)
    augmenter = Augmenter((HEIGHT, WIDTH), 0, **dataclasses.asdict(ranges()))
    seed_pair = np.array([-5, 3], np.int64)  # tf.data's random stream is signed
    direct_image, direct_boxes = augmenter(source, np.array([box], np.float32), seed_pair)
    graph = tf.function(lambda image, boxes, s: tf.numpy_function(augmenter, [image, boxes, s],
                                                                  (tf.uint8, tf.float32)))
    graph_image, graph_boxes = graph(tf.constant(source), tf.constant([box]), tf.constant(seed_pair))
    np.testing.assert_array_equal(graph_image.numpy(), direct_image)
    np.testing.assert_array_equal(graph_boxes.numpy(), direct_boxes)
    assert direct_image.dtype == np.uint8 and direct_image.shape == source.shape


@pytest.mark.parametrize("seed_value", range(4))
def test_intensity_stays_in_range(seed_value):
    rng = np.random.default_rng(seed_value)
    source = rng.integers(0, 256, size=[HEIGHT, WIDTH, 1]).astype(np.uint8)
    source[0, 0], source[0, 1] = 0, 255
    config = ranges(brightness=0.5, contrast_range=(0.5, 2.0), gamma_range=(0.5, 2.0), noise_std=0.3)
    result = augment_intensity(np.asarray(source), config, seed(seed_value), NOISE_BANK)
    assert result.shape == source.shape and result.dtype == np.uint8
    assert not np.allclose(result.astype(float), source, atol=1.0)


def test_intensity_identity_settings_keep_the_image():
    rng = np.random.default_rng(9)
    source = rng.integers(0, 256, size=[HEIGHT, WIDTH, 1]).astype(np.uint8)
    config = ranges(brightness=0.0, contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0), noise_std=0.0)
    result = augment_intensity(np.asarray(source), config, seed(0), NOISE_BANK)
    np.testing.assert_array_equal(result, source)


def test_intensity_matches_the_formula_on_every_grey_level():
    source = np.arange(256, dtype=np.uint8).reshape(16, 16)
    config = ranges(brightness=0.1, contrast_range=(1.3, 1.3), gamma_range=(0.8, 0.8), noise_std=0.0)
    result = augment_intensity(source, config, seed(4), NOISE_BANK)
    rng = seed(4)  # the draws happen in the order gamma, contrast, brightness
    rng.uniform(), rng.uniform()
    brightness = rng.uniform(-0.1, 0.1)
    levels = np.arange(256) / 255.0
    gamma_levels = levels**0.8
    mean = gamma_levels.mean()  # every level once
    expected = np.clip(((gamma_levels - mean) * 1.3 + mean + brightness) * 255, 0, 255)
    np.testing.assert_allclose(result.ravel(), expected, atol=0.51)


def test_noise_has_the_configured_spread_and_differs_between_images():
    source = np.full([HEIGHT, WIDTH, 1], 128, np.uint8)
    config = ranges(brightness=0.0, contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0), noise_std=0.02)
    first = augment_intensity(source, config, seed(1), NOISE_BANK) - 128.0
    second = augment_intensity(source, config, seed(2), NOISE_BANK) - 128.0
    assert np.std(first) == pytest.approx(0.02 * 255, rel=0.1)
    assert abs(np.mean(first)) < 0.5
    assert not np.allclose(first, second)
