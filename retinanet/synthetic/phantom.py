"""Chest-like phantom radiographs with given opacity boxes, for the synthetic data set.

`render_chest_radiograph` draws body, two dark lungs with vessel texture, ribs, heart, spine
and noise for a patient of a given view (AP/PA) and age, around a given box set (real
patients' boxes: `retinanet.synthetic.geometry`). Each box holds a faint, patchy, soft-edged
consolidation over the annotated extent, mostly in the lung but crossing its outline; its
contrast is drawn relative to the lung's own texture (`Difficulty.contrast`, of a level of
`DIFFICULTIES`), so that it is found by looking, not by a threshold. AP films have a larger
cardiac shadow, more noise, lower contrast and more tilt; children's chests are smaller. 'No
Lung Opacity / Not Normal' pictures carry findings that are not opacities (a tube line, a small
nodule, a lower-lung effusion gradient).
Everything derives from the generator passed in.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from retinanet.data.rsna import CLASS_NAMES

LUNG_OPACITY, NOT_NORMAL, NORMAL = CLASS_NAMES

# Anatomy is drawn at most at this resolution and resized: it is smooth, and drawing at
# 1024 px would cost four times as much. The pixel noise is added at full resolution.
RENDER_SIZE = 512
REAL_SIZE = 1024  # boxes are given in pixels of the real 1024 px films

# The visible opacity spans this fraction of the annotated extent (annotators draw loose boxes).
OPACITY_EXTENT = (0.8, 1.0)
OUTSIDE_LUNG_WEIGHT = 0.35  # the opacity's strength where it crosses the lung outline


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How hard an opacity is to see and to outline.

    contrast: the range, drawn uniform per box, of the mean rise of the film inside the box's lung
        part over the standard deviation of the lung without the opacity (anatomy, vessels and ribs
        at 512 px, before pixel noise); 1 means an opacity as strong as the lung's own structure.
    edge: the outer fraction of the opacity's radius over which it fades out (softer, larger: an
        outline that is harder to see).
    patch_mean, patch_amplitude: the opacity's patchy texture, mean and amplitude of its fractal
        modulation (a larger amplitude: more textured, less like a uniform blob).
    """

    contrast: tuple[float, float]
    edge: float
    patch_mean: float
    patch_amplitude: float


# "default" is the films' look since their real geometry (docs/data.md); "faint" and "very_faint"
# draw the same patients' opacities weaker, more textured and with softer edges; "varied" spans
# the contrasts of "faint" and "default" box by box, as real opacities range from plain to vague.
DIFFICULTIES = {
    "default": Difficulty(contrast=(0.6, 1.6), edge=0.45, patch_mean=0.65, patch_amplitude=0.35),
    "faint": Difficulty(contrast=(0.3, 0.75), edge=0.7, patch_mean=0.6, patch_amplitude=0.5),
    "very_faint": Difficulty(contrast=(0.15, 0.45), edge=0.85, patch_mean=0.55, patch_amplitude=0.6),
    "varied": Difficulty(contrast=(0.3, 1.6), edge=0.55, patch_mean=0.62, patch_amplitude=0.42),
}


@dataclasses.dataclass(frozen=True)
class SyntheticRadiograph:
    """One rendered picture and its truth.

    image: uint8 [S, S]; boxes: float [N, 4] `x, y, width, height` in pixels (N = 0 for
    negatives); lung_mask: bool [S, S], True inside the lungs; contrast: float [N], each box's
    measured opacity contrast (mean rise in the box's lung part / lung standard deviation).
    """

    image: np.ndarray
    boxes: np.ndarray
    lung_mask: np.ndarray
    contrast: np.ndarray


def _smoothstep(values):
    return values * values * (3.0 - 2.0 * values)


def _soft_inside(radius, edge: float):
    """1 inside radius 1 - edge, 0 outside radius 1, a smooth step between (any shape)."""
    return _smoothstep(np.clip((1.0 - radius) / edge, 0.0, 1.0)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, render_size: int, grid: int) -> np.ndarray:
    """[R, R] float32 in about -1..1, varying over `grid` cells: a random grid, cubic-resized."""
    cells = rng.uniform(-1.0, 1.0, (grid, grid)).astype(np.float32)
    return cv2.resize(cells, (render_size, render_size), interpolation=cv2.INTER_CUBIC)


def _fractal_noise(rng: np.random.Generator, render_size: int, grids=(12, 24, 48, 96)) -> np.ndarray:
    """[R, R] float32 of unit standard deviation: smooth noise summed over scales, 1/f-like."""
    noise = sum(_smooth_noise(rng, render_size, grid) / np.sqrt(index + 1) for index, grid in enumerate(grids))
    return (noise - noise.mean()) / max(float(noise.std()), 1e-6)


def _to_pixel(point, render_size: int, shift: int = 4) -> tuple[int, int]:
    """Normalised (x, y) -> fixed-point pixel coordinates for OpenCV drawing with `shift`."""
    return int(round(point[0] * render_size * 2**shift)), int(round(point[1] * render_size * 2**shift))


@dataclasses.dataclass
class _Lung:
    """An ellipse narrower at the apex, in normalised body coordinates (0..1)."""

    center_x: float
    center_y: float
    half_width: float  # at the base; the apex is 0.75 times as wide
    half_height: float

    def taper(self, row):
        top = self.center_y - self.half_height
        return 0.75 + 0.3 * np.clip((row - top) / (2 * self.half_height), 0.0, 1.0)

    def radius(self, column, row):
        """Elliptic radius (< 1 inside) at body coordinates (arrays or scalars)."""
        return np.sqrt(((column - self.center_x) / (self.half_width * self.taper(row))) ** 2
                       + ((row - self.center_y) / self.half_height) ** 2)

    def soft_mask(self, column, row) -> np.ndarray:
        return _soft_inside(self.radius(column, row), 0.06)

    def reach(self, x: float, y: float, limit: float = 0.8) -> None:
        """Grow the lung towards (x, y) until the point lies within radius `limit` (bounded)."""
        for _ in range(30):
            if self.radius(x, y) <= limit:
                return
            self.half_width *= 1.04
            self.half_height *= 1.03
            self.center_x += 0.08 * float(x - self.center_x)  # Python floats keep the maps float32
            self.center_y += 0.08 * float(y - self.center_y)


@dataclasses.dataclass(frozen=True)
class _Frame:
    """Where the body lies on the film: body = center + rotation(tilt) (image - center) / zoom."""

    zoom: float
    tilt: float  # radians
    center: tuple[float, float] = (0.5, 0.55)

    def to_body(self, x, y):
        cos, sin = float(np.cos(self.tilt)), float(np.sin(self.tilt))
        dx, dy = (x - self.center[0]) / self.zoom, (y - self.center[1]) / self.zoom
        return self.center[0] + cos * dx - sin * dy, self.center[1] + sin * dx + cos * dy


def _sample_frame(rng: np.random.Generator, view: str, age: int) -> _Frame:
    """Children's chests fill less of the film; AP (bedside) films are tilted more."""
    zoom = float(np.clip(0.6 + 0.03 * age, 0.6, 1.0)) if age < 14 else 1.0
    max_tilt = 5.0 if view == "AP" else 2.0
    return _Frame(zoom=zoom * rng.uniform(0.96, 1.04), tilt=np.radians(rng.uniform(-max_tilt, max_tilt)))


def _sample_lungs(rng: np.random.Generator) -> list[_Lung]:
    spread = rng.uniform(0.19, 0.21)
    center_y = rng.uniform(0.49, 0.53)
    return [_Lung(center_x=0.5 + side * spread + rng.uniform(-0.01, 0.01),
                  center_y=center_y + rng.uniform(-0.015, 0.015) + 0.01 * (side > 0),  # heart side lower
                  half_width=rng.uniform(0.15, 0.17), half_height=rng.uniform(0.29, 0.33))
            for side in (-1, 1)]


def _draw_anatomy(rng: np.random.Generator, column, row, lung_masks, view: str) -> np.ndarray:
    """[R, R] float32 grey levels at body coordinates column/row [R, R]: background, body, dark
    lungs with vessels, heart, spine, ribs, clavicles."""
    render_size = row.shape[0]
    ap = view == "AP"
    spine_x = 0.5 + rng.uniform(-0.01, 0.01)
    torso_radius = ((np.abs(column - 0.5) / rng.uniform(0.41, 0.45)) ** 4 + (np.abs(row - 0.62) / 0.58) ** 4) ** 0.25
    neck = _soft_inside(np.abs(column - spine_x) / 0.08, 0.3) * (row < 0.12)
    body = np.maximum(_soft_inside(torso_radius, 0.05), neck)
    lungs = np.maximum(*lung_masks)
    lung_darkness = rng.uniform(55.0, 68.0) * (0.8 if ap else 1.0)  # AP: lower contrast
    picture = rng.uniform(8.0, 20.0) + body * rng.uniform(100.0, 120.0) - lungs * lung_darkness

    # Vessels: branching texture strongest near the hila, fading to the periphery.
    hilum_distance = np.abs(np.abs(column - spine_x) - 0.1) + 0.5 * np.abs(row - 0.48)
    vessels = np.maximum(_fractal_noise(rng, render_size, grids=(32, 64, 128)), 0.0)
    picture += vessels * lungs * np.clip(1.2 - 2.5 * hilum_distance, 0.25, 1.0) * rng.uniform(5.0, 8.0)

    heart_scale = rng.uniform(1.15, 1.3) if ap else 1.0  # AP magnifies the heart
    mediastinum = _soft_inside(np.abs(column - spine_x) / (0.06 * heart_scale), 0.4) \
        * _soft_inside(np.abs(row - 0.42) / 0.33, 0.2)
    heart_radius = np.sqrt(((column - spine_x - rng.uniform(0.03, 0.06)) / (rng.uniform(0.11, 0.14) * heart_scale)) ** 2
                           + ((row - rng.uniform(0.62, 0.67)) / (rng.uniform(0.10, 0.12) * heart_scale)) ** 2)
    picture += np.maximum(mediastinum, _soft_inside(heart_radius, 0.25)) * rng.uniform(45.0, 60.0)

    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * row / 0.045)
    picture += _soft_inside(np.abs(column - spine_x) / 0.032, 0.3) * vertebrae * body * rng.uniform(20.0, 30.0)

    # All ribs of both sides in one pass: a periodic profile along arcs that droop laterally.
    distance = np.abs(column - spine_x)
    phase = (row - rng.uniform(0.13, 0.16) - 0.9 * distance**2 + 0.1 * distance) / rng.uniform(0.062, 0.072)
    ribs = np.clip((0.5 + 0.5 * np.cos(2 * np.pi * phase) - 0.55) / 0.3, 0.0, 1.0)
    ribs *= (phase > -0.5) & (phase < 10.0) & (distance > 0.035) & (distance < 0.43)
    picture += ribs * (0.2 + 0.8 * lungs) * body * rng.uniform(14.0, 22.0)

    for side in (-1, 1):  # clavicles: bright bands from the spine up and out
        along = np.clip((column - spine_x) * side, 0.04, 0.3)
        level = 0.15 + (along - 0.04) / 0.26 * (rng.uniform(-0.07, -0.04))
        band = _soft_inside(np.abs(row - level) / 0.012, 0.6) * ((column - spine_x) * side > 0.04)
        picture += band * ((column - spine_x) * side < 0.3) * rng.uniform(18.0, 26.0)
    picture += _smooth_noise(rng, render_size, grid=6) * body * rng.uniform(4.0, 8.0)
    return picture.astype(np.float32)


def _fit_lungs(lungs: list[_Lung], frame: _Frame, boxes: np.ndarray) -> None:
    """Grow each lung to hold the centres of the boxes on its side (boxes: normalised x1, y1, x2, y2)."""
    for x1, y1, x2, y2 in boxes:
        x, y = frame.to_body((x1 + x2) / 2, (y1 + y2) / 2)
        lungs[0 if x < 0.5 else 1].reach(x, y)


def _draw_opacities(rng: np.random.Generator, boxes: np.ndarray, lung: np.ndarray, coordinates,
                    difficulty: Difficulty) -> list[np.ndarray]:
    """One [R, R] float32 0..1 map per box (normalised x1, y1, x2, y2; `coordinates` [R]: the pixel
    centres on the film): a patchy consolidation with a soft, irregular edge over the box, weaker
    where it crosses the lung outline; `difficulty` sets its edge and texture."""
    render_size = lung.shape[0]
    column, row = coordinates[None, :], coordinates[:, None]
    noise = _fractal_noise(rng, render_size, grids=(6, 12, 24, 48))
    patches = np.clip(difficulty.patch_mean + difficulty.patch_amplitude * noise, 0.1, 1.0)
    weight = OUTSIDE_LUNG_WEIGHT + (1.0 - OUTSIDE_LUNG_WEIGHT) * lung
    maps = []
    for x1, y1, x2, y2 in boxes:
        extent = rng.uniform(*OPACITY_EXTENT)
        half_width, half_height = (x2 - x1) / 2 * extent, (y2 - y1) / 2 * extent
        radius = ((np.abs(column - (x1 + x2) / 2) / half_width) ** 2.5
                  + (np.abs(row - (y1 + y2) / 2) / half_height) ** 2.5) ** 0.4
        radius = radius * (1.0 + 0.15 * _smooth_noise(rng, render_size, grid=8))  # irregular outline
        maps.append(_soft_inside(radius, difficulty.edge) * patches * weight)
    return maps


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
            picture += _soft_inside(radius, 0.5) * rng.uniform(25.0, 45.0)
        else:  # fluid at the lung base: a gradient, brightest at the bottom, climbing laterally
            bottom = lung.center_y + lung.half_height
            lateral = np.clip((column - lung.center_x) * np.sign(lung.center_x - 0.5) / lung.half_width, 0.0, 1.0)
            surface = lung.center_y + lung.half_height * rng.uniform(0.0, 0.4) - 0.06 * lateral
            ramp = np.clip((row - surface) / (bottom - surface), 0.0, 1.0) ** 1.5
            picture += ramp * lung_masks[index] * rng.uniform(35.0, 55.0)
    return picture


def _expose(picture: np.ndarray, gain: float, offset: float, gamma: float) -> np.ndarray:
    """Film response: exposure (gain, offset) then a gamma on the 0..255 scale."""
    exposed = np.clip(picture * gain + offset, 0.0, 255.0) / 255.0
    return (255.0 * exposed**gamma).astype(np.float32)


def render_chest_radiograph(rng: np.random.Generator, *, size: int, class_name: str, boxes=None,
                            view: str = "PA", age: int = 47, difficulty: str = "default") -> SyntheticRadiograph:
    """Draw one chest-like `size` x `size` film of the given RSNA class.

    boxes: for Lung Opacity, float [N >= 1, 4] `x, y, width, height` in 1024 px pixels (a real
    patient's box set); none for the other classes. view: "AP" or "PA"; age in years; difficulty:
    a name of `DIFFICULTIES`, how faint and vague the opacities are (the same random draws at
    every level: a patient's anatomy does not change with it).
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if class_name not in (LUNG_OPACITY, NOT_NORMAL, NORMAL):
        raise ValueError(f"unknown class {class_name!r}")
    if view not in ("AP", "PA"):
        raise ValueError(f"view must be 'AP' or 'PA', got {view!r}")
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)
    if (class_name == LUNG_OPACITY) != (len(boxes) > 0):
        raise ValueError(f"class {class_name!r} with {len(boxes)} boxes: only Lung Opacity has boxes")
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1) / REAL_SIZE

    render_size = min(size, RENDER_SIZE)
    coordinates = (np.arange(render_size, dtype=np.float32) + 0.5) / render_size
    frame = _sample_frame(rng, view, age)
    column, row = (np.asarray(values, np.float32)  # body coordinates [R, R]
                   for values in frame.to_body(coordinates[None, :], coordinates[:, None]))
    lungs = _sample_lungs(rng)
    _fit_lungs(lungs, frame, corners)
    lung_masks = [lung.soft_mask(column, row) for lung in lungs]
    lung = np.maximum(*lung_masks)
    picture = _draw_anatomy(rng, column, row, lung_masks, view)
    tube_probability = 0.5 if view == "AP" else 0.1  # bedside films often show lines and tubes
    if class_name == NOT_NORMAL:
        picture += _draw_distractors(rng, column, row, lungs, lung_masks)
    elif rng.random() < tube_probability:
        picture += _draw_tube(rng, render_size)

    in_lung = lung > 0.5
    lung_std = float(picture[in_lung].std()) if in_lung.any() else float(picture.std())
    opacity = np.zeros_like(picture)
    level = DIFFICULTIES[difficulty]
    for box_map in _draw_opacities(rng, corners, lung, coordinates, level):
        core = (box_map > 0.05) & in_lung
        wanted = rng.uniform(*level.contrast) * lung_std
        gain = wanted / max(float(box_map[core].mean()), 1e-3) if core.any() else 0.0
        opacity = np.maximum(opacity, box_map * np.float32(gain))
    exposure = (rng.uniform(0.85, 1.15), rng.uniform(-10.0, 10.0), rng.uniform(0.8, 1.25))
    without = _expose(picture, *exposure)
    picture = _expose(picture + opacity, *exposure)
    contrast = _measure_contrast(picture, without, corners, in_lung)

    if size != render_size:
        picture = cv2.resize(picture, (size, size), interpolation=cv2.INTER_LINEAR)
        in_lung = cv2.resize(in_lung.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    noise = rng.uniform(3.0, 6.0) if view == "AP" else rng.uniform(2.0, 4.0)
    picture += rng.standard_normal((size, size), dtype=np.float32) * np.float32(noise)
    image = np.clip(picture + 0.5, 0, 255).astype(np.uint8)

    # 1024 px boxes -> whole pixels of this size, as in the real labels.
    scaled = np.round(boxes * (size / REAL_SIZE))
    return SyntheticRadiograph(image=image, boxes=scaled, lung_mask=in_lung, contrast=contrast)


def _measure_contrast(picture, without, corners, in_lung) -> np.ndarray:
    """Per box: mean rise over its lung part / standard deviation of the lung without opacity."""
    render_size = picture.shape[0]
    lung_std = max(float(without[in_lung].std()), 1e-6) if in_lung.any() else 1.0
    values = []
    for x1, y1, x2, y2 in corners:
        box = np.zeros_like(in_lung)
        top, bottom = int(y1 * render_size), int(np.ceil(y2 * render_size))
        box[top:bottom, int(x1 * render_size):int(np.ceil(x2 * render_size))] = True
        region = box & in_lung if (box & in_lung).any() else box
        values.append(float((picture[region] - without[region]).mean()) / lung_std)
    return np.asarray(values, np.float64)
