"""Training-time augmentation in TensorFlow ops (runs in parallel inside tf.data).

Geometric jitter (flip, scale, rotation, translation) is one affine map applied to the image
with a single resampling and to the box corners; a box is kept only while at least
`min_visible_fraction` of its transformed area stays inside the image. Photometric jitter
(brightness, contrast, gamma, noise) works on the 0..255 grey values.
"""

from __future__ import annotations

import math

import tensorflow as tf

from retinanet import boxes as box_ops
from retinanet.config import AugmentationConfig


def _affine_matrix(config: AugmentationConfig, height, width, seed):
    """Random 3x3 map from input to output pixel coordinates (x, y, 1)."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    flip = tf.random.stateless_uniform([], seeds[0]) < config.horizontal_flip
    scale = tf.random.stateless_uniform([], seeds[1], *config.scale_range)
    angle = tf.random.stateless_uniform([], seeds[2], -1.0, 1.0) * config.rotation_degrees * math.pi / 180
    shift = tf.random.stateless_uniform([2], seeds[3], -1.0, 1.0) * config.translate_fraction
    center_x, center_y = width / 2.0, height / 2.0
    mirror = tf.where(flip, -1.0, 1.0)
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    # p_out = R * S * diag(mirror, 1) * (p_in - c) + c + shift
    return tf.stack([
        [cos * mirror, -sin, center_x - cos * mirror * center_x + sin * center_y + shift[0] * width],
        [sin * mirror, cos, center_y - sin * mirror * center_x - cos * center_y + shift[1] * height],
        [0.0, 0.0, 1.0],
    ])


def transform_boxes(boxes, matrix, height, width, min_visible_fraction: float):
    """Boxes [N, 4] through a 3x3 affine map -> (boxes [K, 4] clipped, keep mask [N])."""
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    corners = tf.stack([tf.stack([x1, y1], -1), tf.stack([x2, y1], -1),
                        tf.stack([x1, y2], -1), tf.stack([x2, y2], -1)], axis=1)  # [N, 4, 2]
    moved = tf.einsum("ij,nkj->nki", matrix[:2, :2], corners) + matrix[:2, 2]
    enclosing = tf.concat([tf.reduce_min(moved, axis=1), tf.reduce_max(moved, axis=1)], axis=-1)
    clipped = box_ops.clip(enclosing, height, width)
    visible = tf.math.divide_no_nan(box_ops.area(clipped), box_ops.area(enclosing))
    keep = visible >= min_visible_fraction
    return tf.boolean_mask(clipped, keep), keep


def augment_geometry(image, boxes, config: AugmentationConfig, seed):
    """image float32 [H, W, 1], boxes [N, 4] -> (image, boxes [K, 4]); K <= N."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    matrix = _affine_matrix(config, height, width, seed)
    # Boxes treat pixel i as [i, i + 1]; the image op puts pixel centres on integers.
    to_centers = tf.constant([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    from_centers = tf.constant([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    # The image op maps output pixels back to input pixels: invert.
    inverse = tf.linalg.inv(to_centers @ matrix @ from_centers)
    transform = tf.reshape(inverse, [9])[:8] / inverse[2, 2]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    new_boxes, _ = transform_boxes(boxes, matrix, height, width, config.min_visible_fraction)
    return warped, new_boxes


def augment_intensity(image, config: AugmentationConfig, seed):
    """float32 [H, W, 1] in 0..255 -> same, with random brightness, contrast, gamma and noise."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = image / 255.0
    gamma = tf.random.stateless_uniform([], seeds[0], *config.gamma_range)
    image = tf.pow(tf.clip_by_value(image, 0.0, 1.0), gamma)
    contrast = tf.random.stateless_uniform([], seeds[1], *config.contrast_range)
    mean = tf.reduce_mean(image)
    image = (image - mean) * contrast + mean
    image += tf.random.stateless_uniform([], seeds[2], -config.brightness, config.brightness + 1e-12)
    image += tf.random.stateless_normal(tf.shape(image), seeds[3]) * config.noise_std
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def augment(image, boxes, config: AugmentationConfig, seed):
    """One training example: image float32 [H, W, 1] 0..255, boxes [N, 4] -> (image, boxes [K, 4])."""
    geometry_seed, intensity_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image, boxes = augment_geometry(image, boxes, config, geometry_seed)
    return augment_intensity(image, config, intensity_seed), boxes
