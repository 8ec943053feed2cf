"""Boxes drawn on X-rays: ground truth in green, predictions in red with their scores."""

from __future__ import annotations

import cv2
import numpy as np

GROUND_TRUTH_COLOR = (0, 200, 0)  # RGB
PREDICTION_COLOR = (230, 40, 40)


def draw_boxes(image: np.ndarray, ground_truth=None, predictions=None, scores=None, *, title: str = "") -> np.ndarray:
    """Grey uint8 [H, W] and `x1, y1, x2, y2` boxes in its pixels -> RGB uint8 [H, W, 3]."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 256))
    font_scale = max(0.4, max(image.shape[:2]) / 1024)
    for box in np.asarray(ground_truth if ground_truth is not None else np.zeros((0, 4))).reshape(-1, 4):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), GROUND_TRUTH_COLOR, thickness)
    predictions = np.asarray(predictions if predictions is not None else np.zeros((0, 4))).reshape(-1, 4)
    scores = np.asarray(scores if scores is not None else np.ones(len(predictions)))
    for box, score in zip(predictions, scores):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), PREDICTION_COLOR, thickness)
        cv2.putText(canvas, f"{score:.2f}", (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    PREDICTION_COLOR, thickness, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (8, int(24 * font_scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 0), thickness, cv2.LINE_AA)
    return canvas


def save_rgb(path, image: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def grid(images: list[np.ndarray], columns: int = 3) -> np.ndarray:
    """Equal-size RGB images -> one RGB mosaic, `columns` wide (blank cells fill the last row)."""
    rows = -(-len(images) // columns)
    height, width = images[0].shape[:2]
    mosaic = np.zeros((rows * height, min(columns, len(images)) * width, 3), np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        mosaic[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return mosaic
