"""Per-image preprocessing shared by training, evaluation, inference and export.

The image is CLAHE'd (OpenCV) at its original resolution, then letterboxed: resized to fit the
network input keeping its aspect ratio and padded at the bottom and right, so a box maps to
the input by one scale factor and back by dividing by it.
"""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

from retinanet.config import PreprocessingConfig

# As dicom.READER_VERSION, for `preprocess_image` (CLAHE, letterbox): the cache keys on it, so
# bump it with any change to the pixels it returns.
PREPROCESSING_VERSION = 1

# ImageNet channel means of Keras' ResNet50 ("caffe" mode, BGR); a grey image has equal channels.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def apply_clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [H, W] after contrast-limited adaptive histogram equalisation."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(image)


def letterbox_scale(original_size: tuple[int, int], input_size: tuple[int, int]) -> float:
    """Factor that fits (height, width) `original_size` inside `input_size`."""
    return min(input_size[0] / original_size[0], input_size[1] / original_size[1])


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """uint8 [h, w] -> (uint8 [H, W] resized and zero-padded at bottom/right, scale)."""
    scale = letterbox_scale(image.shape[:2], input_size)
    height = max(1, min(input_size[0], round(image.shape[0] * scale)))
    width = max(1, min(input_size[1], round(image.shape[1] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    output = np.zeros(input_size, np.uint8)
    output[:height, :width] = resized
    return output, scale


def preprocess_image(image: np.ndarray, config: PreprocessingConfig) -> tuple[np.ndarray, float]:
    """Original uint8 [h, w] -> (network-size uint8 [H, W], scale from original to input pixels)."""
    if config.clahe:
        image = apply_clahe(image, config.clahe_clip_limit, config.clahe_tile_grid)
    return letterbox(image, config.image_size)


def channel_means(channels: int) -> np.ndarray:
    """The value `normalize` subtracts from each of `channels` channels: the BGR means for 3, their
    mean for 1 (one grey channel stands for all three)."""
    means = np.asarray(IMAGENET_BGR_MEAN, np.float64)
    return (means if channels == 3 else np.full(channels, means.mean())).astype(np.float32)


def normalize(images, channels: int):
    """uint8 or float [..., H, W, 1] grey in 0..255 -> float32 [..., H, W, channels] for ResNet50."""
    images = tf.cast(images, tf.float32)
    return tf.repeat(images, channels, axis=-1) - tf.constant(channel_means(channels))


def denormalize(images, channels: int) -> np.ndarray:
    """`normalize`'s output float [..., H, W, channels] -> the grey uint8 [..., H, W] it came from."""
    grey = np.asarray(images, np.float32)[..., 0] + channel_means(channels)[0]
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)
