"""Anchor boxes for an input size, level-major P3..P7.

Within a level the order is row-major over feature-map cells, then the anchor shapes
(aspect ratio major, scale minor) — the order the heads' reshape produces.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from retinanet.config import AnchorConfig


def feature_map_size(image_size: tuple[int, int], level: int) -> tuple[int, int]:
    """Cells of pyramid level `level` (stride 2**level) for an input (height, width)."""
    stride = 2**level
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def anchors_per_location(config: AnchorConfig = AnchorConfig()) -> int:
    return len(config.aspect_ratios) * len(config.scales)


def generate_anchors_numpy(image_size: tuple[int, int], config: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """[A, 4] float32 anchors `x1, y1, x2, y2` in input pixels for `image_size` (height, width)."""
    per_level = []
    for level, size in zip(config.levels, config.sizes):
        stride = 2**level
        rows, cols = feature_map_size(image_size, level)
        # ratio = height / width at a constant area of (size * scale)^2.
        shapes = np.array([(size * scale / math.sqrt(ratio), size * scale * math.sqrt(ratio))
                           for ratio in config.aspect_ratios for scale in config.scales])  # [S, (w, h)]
        centers_y, centers_x = np.meshgrid((np.arange(rows) + 0.5) * stride,
                                           (np.arange(cols) + 0.5) * stride, indexing="ij")
        centers = np.stack([centers_x.ravel(), centers_y.ravel()], axis=-1)  # [cells, 2]
        half = shapes[None, :, :] / 2.0
        boxes = np.concatenate([centers[:, None, :] - half, centers[:, None, :] + half], axis=-1)
        per_level.append(boxes.reshape(-1, 4))
    return np.concatenate(per_level, axis=0).astype(np.float32)


def generate_anchors(image_size: tuple[int, int], config: AnchorConfig = AnchorConfig()) -> tf.Tensor:
    """[A, 4] float32 tensor of anchors; A = 99,765 for (640, 832) and 49,104 for (512, 512)."""
    return tf.constant(generate_anchors_numpy(tuple(image_size), config))


def num_anchors(image_size: tuple[int, int], config: AnchorConfig = AnchorConfig()) -> int:
    cells = sum(np.prod(feature_map_size(image_size, level)) for level in config.levels)
    return int(cells) * anchors_per_location(config)


def level_sizes(image_size: tuple[int, int], config: AnchorConfig = AnchorConfig()) -> list[int]:
    """Number of anchors on each level, in order."""
    return [int(np.prod(feature_map_size(image_size, level))) * anchors_per_location(config)
            for level in config.levels]
