"""Tests for retinanet.data.preprocess: letterbox geometry, CLAHE, ResNet50 normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from retinanet.config import PreprocessingConfig
from retinanet.data.preprocess import (
    IMAGENET_BGR_MEAN,
    apply_clahe,
    letterbox,
    letterbox_scale,
    normalize,
    preprocess_image,
)


def bright_extent(image, threshold):
    rows, cols = np.nonzero(np.asarray(image) > threshold)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)


def test_letterbox_scale():
    assert letterbox_scale((128, 64), (64, 64)) == 0.5
    assert letterbox_scale((64, 128), (64, 64)) == 0.5
    assert letterbox_scale((32, 16), (64, 64)) == 2.0
    assert letterbox_scale((1024, 1024), (512, 512)) == 0.5
    assert letterbox_scale((100, 50), (64, 96)) == pytest.approx(0.64)


def test_letterbox_tall_image_keeps_aspect_and_pads_right():
    image = np.full([128, 64], 150, np.uint8)
    output, scale = letterbox(image, (64, 64))
    assert scale == 0.5
    assert output.shape == (64, 64) and output.dtype == np.uint8
    # Content 64 x 32 at the top left; zero padding to the right.
    assert (output[:, :32] == 150).all()
    assert (output[:, 32:] == 0).all()


def test_letterbox_wide_image_pads_bottom():
    image = np.full([50, 200], 90, np.uint8)
    output, scale = letterbox(image, (64, 64))
    assert scale == pytest.approx(64 / 200)
    assert output.shape == (64, 64)
    content_height = round(50 * 64 / 200)  # 16
    assert (output[:content_height] == 90).all()
    assert (output[content_height:] == 0).all()


def test_letterbox_upscales_small_images():
    image = np.full([32, 16], 77, np.uint8)
    output, scale = letterbox(image, (64, 64))
    assert scale == 2.0
    assert (output[:, :32] == 77).all() and (output[:, 32:] == 0).all()


def test_letterbox_non_square_target():
    image = np.full([100, 100], 60, np.uint8)
    output, scale = letterbox(image, (64, 96))
    assert scale == pytest.approx(0.64)
    assert output.shape == (64, 96)
    assert (output[:, :64] == 60).all() and (output[:, 64:] == 0).all()


@pytest.mark.parametrize("original, box", [((128, 64), (16, 40, 48, 80)), ((256, 512), (200, 64, 328, 192)),
                                           ((40, 20), (4, 10, 12, 30))])
def test_box_scaled_by_scale_lands_on_the_same_content(original, box):
    image = np.full(original, 10, np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 240
    output, scale = letterbox(image, (64, 64))
    expected = np.array(box, np.float64) * scale
    np.testing.assert_allclose(bright_extent(output, 125), expected, atol=1.0)


def test_clahe_raises_contrast_of_a_low_contrast_image():
    rng = np.random.default_rng(0)
    low_contrast = rng.integers(100, 111, size=[64, 80]).astype(np.uint8)
    result = apply_clahe(low_contrast, clip_limit=2.0, tile_grid=4)
    assert result.dtype == np.uint8
    assert result.shape == low_contrast.shape
    assert not np.array_equal(result, low_contrast)
    assert result.std() > low_contrast.std()
    assert int(result.max()) - int(result.min()) > 10


def test_preprocess_image_applies_clahe_then_letterbox():
    rng = np.random.default_rng(1)
    image = rng.integers(100, 111, size=[128, 64]).astype(np.uint8)
    with_clahe, scale = preprocess_image(image, PreprocessingConfig(image_size=(64, 64), clahe=True))
    without, scale_without = preprocess_image(image, PreprocessingConfig(image_size=(64, 64), clahe=False))
    assert scale == scale_without == 0.5
    assert with_clahe.shape == without.shape == (64, 64)
    assert with_clahe.dtype == np.uint8
    assert (with_clahe[:, 32:] == 0).all()
    assert with_clahe[:, :32].std() > without[:, :32].std()


def test_normalize_three_channels_subtracts_bgr_means():
    assert IMAGENET_BGR_MEAN == pytest.approx((103.939, 116.779, 123.68))
    images = np.array([[[[0], [255]], [[100], [50]]]], np.uint8)  # [1, 2, 2, 1]
    result = normalize(images, 3).numpy()
    assert result.shape == (1, 2, 2, 3)
    assert result.dtype == np.float32
    grey = images.astype(np.float64)
    expected = np.concatenate([grey - 103.939, grey - 116.779, grey - 123.68], axis=-1)
    np.testing.assert_allclose(result, expected, atol=1e-4)


def test_normalize_one_channel_subtracts_the_mean_of_means():
    images = np.full([2, 4, 4, 1], 120.0, np.float32)
    result = normalize(images, 1).numpy()
    assert result.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(result, 120.0 - (103.939 + 116.779 + 123.68) / 3, atol=1e-4)
