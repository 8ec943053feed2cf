"""Anchor boxes for an input size, level-major P3..P7.

Within a level the order is row-major over feature-map cells, then the anchor shapes
(aspect ratio major, scale minor) — the order the heads' reshape produces.

`make_anchor_set` computes the anchors of one input size once; the label encoder, the loss,
the postprocessor and the model take the resulting `AnchorSet` (or the parts they need).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The RetinaNet paper's anchors, the defaults of the `anchors` config section.
LEVELS = (3, 4, 5, 6, 7)
SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))


def feature_map_size(image_size: tuple[int, int], level: int) -> tuple[int, int]:
    """Cells of pyramid level `level` (stride 2**level) for an input (height, width)."""
    stride = 2**level
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def anchors_per_location(aspect_ratios: tuple[float, ...] = ASPECT_RATIOS, scales: tuple[float, ...] = SCALES) -> int:
    """Anchor shapes per feature-map cell: one per (aspect ratio, scale) pair."""
    return len(aspect_ratios) * len(scales)


def generate_anchors_numpy(image_size: tuple[int, int], levels: tuple[int, ...] = LEVELS,
                           sizes: tuple[float, ...] = SIZES, aspect_ratios: tuple[float, ...] = ASPECT_RATIOS,
                           scales: tuple[float, ...] = SCALES) -> np.ndarray:
    """[A, 4] float32 anchors `x1, y1, x2, y2` in input pixels for `image_size` (height, width);
    A = 99,765 for (640, 832) and 49,104 for (512, 512) with the default shapes. The arguments
    are those of `make_anchor_set`."""
    per_level = []
    for level, size in zip(levels, sizes):
        stride = 2**level
        rows, cols = feature_map_size(image_size, level)
        # ratio = height / width at a constant area of (size * scale)^2.
        shapes = np.array([(size * scale / math.sqrt(ratio), size * scale * math.sqrt(ratio))
                           for ratio in aspect_ratios for scale in scales])  # [S, (w, h)]
        centers_y, centers_x = np.meshgrid((np.arange(rows) + 0.5) * stride,
                                           (np.arange(cols) + 0.5) * stride, indexing="ij")
        centers = np.stack([centers_x.ravel(), centers_y.ravel()], axis=-1)  # [cells, 2]
        half = shapes[None, :, :] / 2.0
        boxes = np.concatenate([centers[:, None, :] - half, centers[:, None, :] + half], axis=-1)
        per_level.append(boxes.reshape(-1, 4))
    return np.concatenate(per_level, axis=0).astype(np.float32)


def level_sizes(image_size: tuple[int, int], levels: tuple[int, ...] = LEVELS,
                aspect_ratios: tuple[float, ...] = ASPECT_RATIOS, scales: tuple[float, ...] = SCALES) -> list[int]:
    """Number of anchors on each level, in order."""
    return [int(np.prod(feature_map_size(image_size, level))) * anchors_per_location(aspect_ratios, scales)
            for level in levels]


def num_anchors(image_size: tuple[int, int], levels: tuple[int, ...] = LEVELS,
                aspect_ratios: tuple[float, ...] = ASPECT_RATIOS, scales: tuple[float, ...] = SCALES) -> int:
    """A, the number of anchors of an input (height, width): the sum of `level_sizes`."""
    return sum(level_sizes(image_size, levels, aspect_ratios, scales))


@dataclass(frozen=True, eq=False)
class AnchorSet:
    """The anchors of one input size; made by `make_anchor_set`.

    Args:
        boxes: [A, 4] float32 anchors `x1, y1, x2, y2` in network-input pixels, level-major
            (`generate_anchors_numpy`); read-only.
        level_sizes: Anchors on each pyramid level, in order, counts summing to A.
        levels: The pyramid levels, increasing (level l has stride 2**l input pixels).
        per_location: Anchor shapes per feature-map cell, a count (aspect ratios x scales).
        image_size: The network input (height, width) in pixels.
    """

    boxes: np.ndarray
    level_sizes: tuple[int, ...]
    levels: tuple[int, ...]
    per_location: int
    image_size: tuple[int, int]


def make_anchor_set(image_size: tuple[int, int], levels: tuple[int, ...] = LEVELS, sizes: tuple[float, ...] = SIZES,
                    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS,
                    scales: tuple[float, ...] = SCALES) -> AnchorSet:
    """The `AnchorSet` of `image_size` with these anchor shapes.

    Args:
        image_size: The network input (height, width) in pixels.
        levels: Pyramid levels, a subset of 3..7, increasing; level l has stride 2**l input
            pixels. Default `LEVELS` (3, 4, 5, 6, 7).
        sizes: One base size per level, in input pixels: the side of the level's square anchor
            at scale 1. Default `SIZES` (32, 64, 128, 256, 512).
        aspect_ratios: Anchor height / width ratios; each shape keeps the area of its square.
            Default `ASPECT_RATIOS` (0.5, 1, 2).
        scales: Factors on each level's size. Default `SCALES` (1, 2^(1/3), 2^(2/3)).
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    boxes = generate_anchors_numpy(image_size, levels, sizes, aspect_ratios, scales)
    boxes.setflags(write=False)
    return AnchorSet(boxes, tuple(level_sizes(image_size, levels, aspect_ratios, scales)), tuple(levels),
                     anchors_per_location(aspect_ratios, scales), image_size)
