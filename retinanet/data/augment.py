"""Training-time augmentation of one grey image and its boxes (NumPy and OpenCV).

Geometric jitter (flip, scale, rotation, translation) is one affine map applied to the image
with a single `cv2.warpAffine` and to the box corners; a box is kept only while at least
`min_visible_fraction` of its transformed area stays inside the image. Photometric jitter
(gamma, contrast, brightness) is one 256-entry lookup table, then Gaussian noise is added.
OpenCV's SIMD warp and LUT run several times faster than the equivalent TensorFlow ops on a
CPU and release the GIL, so `tf.numpy_function` calls still run in parallel in tf.data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentationRanges:
    """The random ranges of the augmentation (their meaning and defaults: the config's `augmentation`
    section, `retinanet/config/schema.py`)."""

    horizontal_flip: float  # probability
    scale_range: tuple[float, float]  # factors
    translate_fraction: float  # of the image side, either way
    rotation_degrees: float  # either way
    brightness: float  # +- fraction of the intensity range
    contrast_range: tuple[float, float]  # factors about the image mean
    gamma_range: tuple[float, float]
    noise_std: float  # of the full intensity range
    min_visible_fraction: float  # of a box's area that must stay inside the image for it to be kept


def affine_matrix(ranges: AugmentationRanges, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Random 3x3 map from input to output coordinates (x, y, 1), pixel i spanning [i, i + 1]."""
    mirror = -1.0 if rng.uniform() < ranges.horizontal_flip else 1.0
    scale = rng.uniform(*ranges.scale_range)
    angle = rng.uniform(-1.0, 1.0) * math.radians(ranges.rotation_degrees)
    shift_x, shift_y = rng.uniform(-1.0, 1.0, size=2) * ranges.translate_fraction
    center_x, center_y = width / 2.0, height / 2.0
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # p_out = R * S * diag(mirror, 1) * (p_in - c) + c + shift
    return np.array([
        [cos * mirror, -sin, center_x - cos * mirror * center_x + sin * center_y + shift_x * width],
        [sin * mirror, cos, center_y - sin * mirror * center_x - cos * center_y + shift_y * height],
        [0.0, 0.0, 1.0],
    ])


def transform_boxes(boxes, matrix: np.ndarray, height: float, width: float, min_visible_fraction: float):
    """Boxes [N, 4] through a 3x3 affine map -> (boxes [K, 4] float32 clipped, keep mask [N])."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1], -1), np.stack([x2, y1], -1),
                        np.stack([x1, y2], -1), np.stack([x2, y2], -1)], axis=1)  # [N, 4, 2]
    moved = corners @ matrix[:2, :2].T + matrix[:2, 2]
    enclosing = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=-1)
    clipped = np.clip(enclosing, 0.0, [width, height, width, height])
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    enclosing_area = area(enclosing)
    visible = np.divide(area(clipped), enclosing_area, out=np.zeros_like(enclosing_area), where=enclosing_area > 0)
    keep = visible >= min_visible_fraction
    return clipped[keep].astype(np.float32), keep


def augment_geometry(image: np.ndarray, boxes, ranges: AugmentationRanges, rng: np.random.Generator):
    """image [H, W] or [H, W, 1] (uint8 or float32), boxes [N, 4] -> (warped image, boxes [K, 4])."""
    height, width = image.shape[:2]
    matrix = affine_matrix(ranges, height, width, rng)
    # OpenCV puts pixel centres on integers; the boxes put pixel i on [i, i + 1].
    to_centers = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    from_centers = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    pixel_matrix = (to_centers @ matrix @ from_centers)[:2]
    warped = cv2.warpAffine(image, pixel_matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    new_boxes, _ = transform_boxes(boxes, matrix, height, width, ranges.min_visible_fraction)
    return warped.reshape(image.shape), new_boxes


def make_noise_bank(image_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Standard normal noise float32 [2H, 2W]; each image takes a random window of it.

    Drawing fresh normal samples for every pixel of every image cost more than the rest of
    the augmentation; a random window (with a random sign) of a fixed field serves as well.
    """
    return np.random.default_rng(seed).standard_normal((2 * image_size[0], 2 * image_size[1]), np.float32)


def augment_intensity(image: np.ndarray, ranges: AugmentationRanges, rng: np.random.Generator,
                      noise_bank: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 1] -> same, with random gamma, contrast (about the image mean),
    brightness and Gaussian noise of standard deviation `noise_std` (fractions of 255)."""
    levels = np.arange(256) / 255.0
    gamma = rng.uniform(*ranges.gamma_range)
    contrast = rng.uniform(*ranges.contrast_range)
    brightness = rng.uniform(-ranges.brightness, ranges.brightness) if ranges.brightness else 0.0
    histogram = np.bincount(image.ravel(), minlength=256)
    mean = float(histogram @ levels**gamma) / max(1, image.size)
    table = np.clip(((levels**gamma - mean) * contrast + mean + brightness) * 255.0, 0, 255)
    result = cv2.LUT(image, np.round(table).astype(np.uint8)).reshape(image.shape)
    if ranges.noise_std:
        height, width = image.shape[:2]
        top = rng.integers(0, noise_bank.shape[0] - height + 1)
        left = rng.integers(0, noise_bank.shape[1] - width + 1)
        scale = ranges.noise_std * 255.0 * (1.0 if rng.uniform() < 0.5 else -1.0)
        noise = noise_bank[top:top + height, left:left + width].reshape(image.shape)
        result = np.clip(result + noise * scale, 0, 255).round().astype(np.uint8)
    return result


def augment(image: np.ndarray, boxes, ranges: AugmentationRanges, seed, noise_bank: np.ndarray):
    """One training example: uint8 image [H, W] or [H, W, 1], boxes [N, 4], a seed (int or
    sequence of ints) -> (uint8 image, float32 boxes [K, 4]). Same seed, same result."""
    rng = np.random.default_rng(seed)
    image, boxes = augment_geometry(image, boxes, ranges, rng)
    return augment_intensity(image, ranges, rng, noise_bank), boxes


class Augmenter:
    """`augment` bound to its ranges and a noise bank: `(image, boxes, seed) -> (image, boxes)`, ready for
    `tf.numpy_function`.

    Args:
        image_size: (height, width) of the network input, pixels: the images it augments.
        seed: seed of the noise bank (`make_noise_bank`).
        **ranges: the fields of `AugmentationRanges`, as keywords.
    """

    def __init__(self, image_size: tuple[int, int], seed: int, **ranges):
        self.image_size = tuple(image_size)
        self.ranges = AugmentationRanges(**ranges)
        self.noise_bank = make_noise_bank(self.image_size, seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, seed: np.ndarray):
        # tf.data's random stream yields signed int64; NumPy seeds must be non-negative.
        return augment(image, boxes, self.ranges, np.asarray(seed, np.int64).view(np.uint64), self.noise_bank)
