"""Chest-like phantom radiographs with known opacity boxes, for the synthetic data set.

`render_chest_radiograph` draws body, two dark lungs, ribs, heart, spine and noise. Lung
Opacity pictures carry 1-3 bright, soft-edged, cloudy opacities inside the lungs whose extent
is the labelled box (RSNA-like box statistics); 'No Lung Opacity / Not Normal' pictures carry
distractors that are not opacities (a tube line, a small nodule, a lower-lung effusion
gradient). Everything derives from the generator passed in.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from retinanet.data.rsna import CLASS_NAMES

LUNG_OPACITY, NOT_NORMAL, NORMAL = CLASS_NAMES

# Anatomy is drawn at most at this resolution and resized: it is smooth, and drawing at
# 1024 px would cost four times as much. The noise is added at full resolution.
RENDER_SIZE = 512

# Box statistics at 1024 px (width median 217, p5 124, p95 317; height median 298, p5 121,
# p95 623) as log-normals in units of the image size; the lungs clip the big ones.
BOX_WIDTH_MEDIAN = 217 / 1024
BOX_WIDTH_LOG_SIGMA = 0.28
BOX_HEIGHT_MEDIAN = 298 / 1024
BOX_HEIGHT_LOG_SIGMA = 0.5
# Boxes per positive image 1/2/3 (RSNA: 2,614 / 3,266 / 132 with 3 or 4).
BOXES_PER_POSITIVE_PROBABILITIES = (0.435, 0.543, 0.022)
# The labelled box is where the opacity's shape (lung-clipped) exceeds this level; the soft
# edge fades out over the outer OPACITY_EDGE of its radius, so the shape is drawn a little
# larger than the sampled box to keep the extent close to the sampled size.
OPACITY_EXTENT_LEVEL = 0.2
OPACITY_EDGE = 0.25
OPACITY_OVERSIZE = 1.07


@dataclasses.dataclass(frozen=True)
class SyntheticRadiograph:
    """One rendered picture and its truth.

    image: uint8 [S, S]; boxes: float [N, 4] `x, y, width, height` in pixels (N = 0 for
    negatives); lung_mask: bool [S, S], True inside the lungs.
    """

    image: np.ndarray
    boxes: np.ndarray
    lung_mask: np.ndarray


def _smoothstep(values):
    return values * values * (3.0 - 2.0 * values)


def _soft_inside(radius, edge: float):
    """1 inside radius 1 - edge, 0 outside radius 1, a smooth step between (any shape)."""
    return _smoothstep(np.clip((1.0 - radius) / edge, 0.0, 1.0)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, render_size: int, grid: int) -> np.ndarray:
    """[R, R] float32 in about -1..1, varying over `grid` cells: a random grid, cubic-resized."""
    cells = rng.uniform(-1.0, 1.0, (grid, grid)).astype(np.float32)
    return cv2.resize(cells, (render_size, render_size), interpolation=cv2.INTER_CUBIC)


def _to_pixel(point, render_size: int, shift: int = 4) -> tuple[int, int]:
    """Normalised (x, y) -> fixed-point pixel coordinates for OpenCV drawing with `shift`."""
    return int(round(point[0] * render_size * 2**shift)), int(round(point[1] * render_size * 2**shift))


@dataclasses.dataclass(frozen=True)
class _Lung:
    """An ellipse narrower at the apex, in normalised image coordinates (0..1)."""

    center_x: float
    center_y: float
    half_width: float  # at the base; the apex is 0.75 times as wide
    half_height: float

    def taper(self, row):
        top = self.center_y - self.half_height
        return 0.75 + 0.3 * np.clip((row - top) / (2 * self.half_height), 0.0, 1.0)

    def radius(self, column, row):
        """Elliptic radius (< 1 inside); broadcasts column [1, R] with row [R, 1], or scalars."""
        return np.sqrt(((column - self.center_x) / (self.half_width * self.taper(row))) ** 2
                       + ((row - self.center_y) / self.half_height) ** 2)

    def soft_mask(self, column, row) -> np.ndarray:
        return _soft_inside(self.radius(column, row), 0.06)


def _sample_lungs(rng: np.random.Generator) -> list[_Lung]:
    spread = rng.uniform(0.19, 0.205)
    center_y = rng.uniform(0.47, 0.52)
    return [_Lung(center_x=0.5 + side * spread + rng.uniform(-0.01, 0.01),
                  center_y=center_y + rng.uniform(-0.015, 0.015) + 0.01 * (side > 0),  # heart side lower
                  half_width=rng.uniform(0.145, 0.165), half_height=rng.uniform(0.27, 0.30))
            for side in (-1, 1)]


def _draw_anatomy(rng: np.random.Generator, column, row, lung_masks) -> np.ndarray:
    """[R, R] float32 grey levels: background, body, dark lungs, heart, spine, ribs, clavicles."""
    render_size = row.shape[0]
    spine_x = 0.5 + rng.uniform(-0.01, 0.01)
    torso_radius = ((np.abs(column - 0.5) / rng.uniform(0.41, 0.45)) ** 4 + (np.abs(row - 0.62) / 0.58) ** 4) ** 0.25
    neck = _soft_inside(np.abs(column - spine_x) / 0.08, 0.3) * (row < 0.12)
    body = np.maximum(_soft_inside(torso_radius, 0.05), neck)
    lungs = np.maximum(*lung_masks)
    picture = rng.uniform(8.0, 20.0) + body * rng.uniform(100.0, 120.0) - lungs * rng.uniform(55.0, 68.0)

    mediastinum = _soft_inside(np.abs(column - spine_x) / 0.06, 0.4) * _soft_inside(np.abs(row - 0.42) / 0.33, 0.2)
    heart_radius = np.sqrt(((column - spine_x - rng.uniform(0.03, 0.06)) / rng.uniform(0.11, 0.14)) ** 2
                           + ((row - rng.uniform(0.62, 0.67)) / rng.uniform(0.10, 0.12)) ** 2)
    picture += np.maximum(mediastinum, _soft_inside(heart_radius, 0.25)) * rng.uniform(45.0, 60.0)

    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * row / 0.045)
    picture += _soft_inside(np.abs(column - spine_x) / 0.032, 0.3) * vertebrae * body * rng.uniform(20.0, 30.0)

    # All ribs of both sides in one pass: a periodic profile along arcs that droop laterally.
    distance = np.abs(column - spine_x)
    phase = (row - rng.uniform(0.13, 0.16) - 0.9 * distance**2 + 0.1 * distance) / rng.uniform(0.062, 0.072)
    ribs = np.clip((0.5 + 0.5 * np.cos(2 * np.pi * phase) - 0.55) / 0.3, 0.0, 1.0)
    ribs *= (phase > -0.5) & (phase < 10.0) & (distance > 0.035) & (distance < 0.43)
    picture += ribs * (0.2 + 0.8 * lungs) * body * rng.uniform(14.0, 22.0)

    canvas = np.zeros((render_size, render_size), np.uint8)
    for side in (-1, 1):
        cv2.line(canvas, _to_pixel((spine_x + side * 0.04, 0.15), render_size),
                 _to_pixel((spine_x + side * 0.3, 0.1 + rng.uniform(-0.02, 0.01)), render_size), 255,
                 thickness=max(1, round(0.02 * render_size)), lineType=cv2.LINE_AA, shift=4)
    clavicles = cv2.GaussianBlur(canvas, (0, 0), 0.006 * render_size).astype(np.float32) / 255.0
    picture += clavicles * rng.uniform(18.0, 26.0)
    picture += _smooth_noise(rng, render_size, grid=6) * body * rng.uniform(4.0, 8.0)
    return picture.astype(np.float32)


def _sample_box(rng: np.random.Generator, lung: _Lung, top: float, bottom: float) -> tuple[float, ...]:
    """Normalised x1, y1, x2, y2 of an RSNA-sized box whose edge midpoints lie in the lung
    between rows `top` and `bottom`; centres lean to the lower lung, like pneumonia."""
    scale = 1.0
    for _ in range(50):
        width = BOX_WIDTH_MEDIAN * np.exp(BOX_WIDTH_LOG_SIGMA * rng.standard_normal()) * scale
        height = BOX_HEIGHT_MEDIAN * np.exp(BOX_HEIGHT_LOG_SIGMA * rng.standard_normal()) * scale
        height = min(height, 0.95 * (bottom - top))
        center_y = top + height / 2 + (bottom - top - height) * rng.beta(1.6, 1.2)
        vertical_offset = (center_y - lung.center_y) / lung.half_height
        available = lung.half_width * lung.taper(center_y) * np.sqrt(max(0.0, 0.94 - vertical_offset**2))
        width = min(width, 1.96 * available)
        center_x = lung.center_x + rng.uniform(-1.0, 1.0) * (available - width / 2)
        if (width > 0.3 * BOX_WIDTH_MEDIAN * scale
                and lung.radius(center_x, center_y - height / 2) < 0.97
                and lung.radius(center_x, center_y + height / 2) < 0.97):
            return center_x - width / 2, center_y - height / 2, center_x + width / 2, center_y + height / 2
        scale *= 0.93
    # Practically unreachable; a modest box in the lung centre keeps the image positive.
    half_width, half_height = 0.4 * lung.half_width, 0.3 * lung.half_height
    return (lung.center_x - half_width, lung.center_y - half_height,
            lung.center_x + half_width, lung.center_y + half_height)


def _draw_opacities(rng: np.random.Generator, column, row, lungs, lung_masks):
    """1-3 cloudy opacities -> ([R, R] float32 0..1, [N, 4] normalised x1, y1, x2, y2 extents)."""
    render_size = row.shape[0]
    count = int(rng.choice([1, 2, 3], p=BOXES_PER_POSITIVE_PROBABILITIES))
    if count == 1:
        regions = [(int(rng.integers(2)), "whole")]
    elif count == 2:  # two boxes: one in each lung, as in most RSNA cases
        regions = [(0, "whole"), (1, "whole")]
    else:
        crowded = int(rng.integers(2))
        regions = [(crowded, "upper"), (crowded, "lower"), (1 - crowded, "whole")]
    opacity = np.zeros((render_size, render_size), np.float32)
    boxes = []
    for lung_index, part in regions:
        lung = lungs[lung_index]
        top = lung.center_y if part == "lower" else lung.center_y - lung.half_height
        bottom = lung.center_y if part == "upper" else lung.center_y + lung.half_height
        x1, y1, x2, y2 = _sample_box(rng, lung, top, bottom)
        half_width = (x2 - x1) / 2 * OPACITY_OVERSIZE
        half_height = (y2 - y1) / 2 * OPACITY_OVERSIZE
        # A rounded rectangle (power 4) fills most of its box, unlike an ellipse.
        radius = ((np.abs(column - (x1 + x2) / 2) / half_width) ** 4
                  + (np.abs(row - (y1 + y2) / 2) / half_height) ** 4) ** 0.25
        shape = _soft_inside(radius, OPACITY_EDGE) * lung_masks[lung_index]
        inside = shape > OPACITY_EXTENT_LEVEL
        rows_inside = np.flatnonzero(inside.any(axis=1))
        columns_inside = np.flatnonzero(inside.any(axis=0))
        if rows_inside.size:  # the box is what was drawn, after the lung clipped it
            x1, y1 = columns_inside[0] / render_size, rows_inside[0] / render_size
            x2, y2 = (columns_inside[-1] + 1) / render_size, (rows_inside[-1] + 1) / render_size
        boxes.append((x1, y1, x2, y2))
        opacity = np.maximum(opacity, shape)
    cloud = 0.86 + 0.14 * _smooth_noise(rng, render_size, grid=14)  # fairly homogeneous texture
    return opacity * cloud, np.asarray(boxes, np.float64).reshape(-1, 4)


def _draw_tube(rng: np.random.Generator, render_size: int) -> np.ndarray:
    """[R, R] float32: a thin bright line from the neck down the mediastinum (tube or catheter)."""
    start = np.array([0.5 + rng.uniform(-0.03, 0.03), 0.0])
    control = np.array([0.5 + rng.uniform(-0.05, 0.05), rng.uniform(0.25, 0.4)])
    end = np.array([0.5 + rng.choice([-1, 1]) * rng.uniform(0.0, 0.2), rng.uniform(0.45, 0.75)])
    steps = np.linspace(0.0, 1.0, 24)[:, None]
    curve = (1 - steps) ** 2 * start + 2 * (1 - steps) * steps * control + steps**2 * end
    canvas = np.zeros((render_size, render_size), np.uint8)
    points = np.array([_to_pixel(point, render_size) for point in curve], np.int32)
    cv2.polylines(canvas, [points], False, 255, thickness=max(1, round(0.004 * render_size)),
                  lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) * np.float32(rng.uniform(90.0, 120.0) / 255.0)


def _draw_distractors(rng: np.random.Generator, column, row, lungs, lung_masks) -> np.ndarray:
    """[R, R] float32: one or two findings that are not opacities (tube, nodule, effusion)."""
    render_size = row.shape[0]
    picture = np.zeros((render_size, render_size), np.float32)
    for kind in rng.choice(["tube", "nodule", "effusion"], size=int(rng.integers(1, 3)), replace=False):
        index = int(rng.integers(2))
        lung = lungs[index]
        if kind == "tube":
            picture += _draw_tube(rng, render_size)
        elif kind == "nodule":  # small and round: far below the smallest opacity box
            center_x = lung.center_x + rng.uniform(-0.6, 0.6) * lung.half_width
            center_y = lung.center_y + rng.uniform(-0.6, 0.6) * lung.half_height
            nodule_radius = rng.uniform(0.01, 0.022)
            radius = np.sqrt((column - center_x) ** 2 + (row - center_y) ** 2) / nodule_radius
            picture += _soft_inside(radius, 0.5) * rng.uniform(40.0, 65.0)
        else:  # fluid at the lung base: a gradient, brightest at the bottom, climbing laterally
            bottom = lung.center_y + lung.half_height
            lateral = np.clip((column - lung.center_x) * np.sign(lung.center_x - 0.5) / lung.half_width, 0.0, 1.0)
            surface = lung.center_y + lung.half_height * rng.uniform(0.0, 0.4) - 0.06 * lateral
            ramp = np.clip((row - surface) / (bottom - surface), 0.0, 1.0) ** 1.5
            picture += ramp * lung_masks[index] * rng.uniform(50.0, 70.0)
    return picture


def render_chest_radiograph(rng: np.random.Generator, *, size: int, class_name: str) -> SyntheticRadiograph:
    """Draw one chest-like `size` x `size` picture of the given RSNA class."""
    if class_name not in (LUNG_OPACITY, NOT_NORMAL, NORMAL):
        raise ValueError(f"unknown class {class_name!r}")
    render_size = min(size, RENDER_SIZE)
    coordinates = (np.arange(render_size, dtype=np.float32) + 0.5) / render_size
    column, row = coordinates[None, :], coordinates[:, None]  # normalised x [1, R], y [R, 1]

    lungs = _sample_lungs(rng)
    lung_masks = [lung.soft_mask(column, row) for lung in lungs]
    picture = _draw_anatomy(rng, column, row, lung_masks)
    boxes = np.zeros((0, 4), np.float64)
    if class_name == LUNG_OPACITY:
        opacity, boxes = _draw_opacities(rng, column, row, lungs, lung_masks)
        picture += rng.uniform(65.0, 85.0) * opacity
        if rng.random() < 0.2:  # tubes also appear with pneumonia: not a shortcut to "negative"
            picture += _draw_tube(rng, render_size)
    elif class_name == NOT_NORMAL:
        picture += _draw_distractors(rng, column, row, lungs, lung_masks)

    picture = picture * rng.uniform(0.9, 1.1) + rng.uniform(-8.0, 8.0)
    lung_mask = np.maximum(*lung_masks) > 0.5
    if size != render_size:
        picture = cv2.resize(picture, (size, size), interpolation=cv2.INTER_LINEAR)
        lung_mask = cv2.resize(lung_mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    picture += rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(2.0, 4.0))
    image = np.clip(picture + 0.5, 0, 255).astype(np.uint8)

    # Normalised x1, y1, x2, y2 -> whole pixels x, y, width, height, as in the real labels.
    corners = np.round(boxes * size)
    boxes_xywh = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
    return SyntheticRadiograph(image=image, boxes=boxes_xywh, lung_mask=lung_mask)
