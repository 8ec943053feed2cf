"""Boxes drawn on X-rays for people to read: ground truth in green, predictions in red with
their scores, TP/FP/FN marks where the truth is known, and a header band above the image
(never over it) with the legend, the score threshold and the image-level probability."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from retinanet.runtime.safe_writes import FileWriteError, write_bytes_atomically

GROUND_TRUTH_COLOR = (0, 200, 0)  # RGB
PREDICTION_COLOR = (230, 40, 40)
TEXT_COLOR = (255, 255, 255)
HEADER_COLOR = (32, 32, 32)
MATCH_IOU = 0.5  # a prediction is a true positive at IoU >= 0.5 with an unmatched truth (as AP50)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def match_predictions(ground_truth, predictions, scores, iou_threshold: float = MATCH_IOU):
    """Greedy matching in descending score -> (prediction is TP bool [P], truth was found bool [G])."""
    from retinanet.detection.metrics import pairwise_iou

    ground_truth = np.asarray(ground_truth, np.float64).reshape(-1, 4)
    predictions = np.asarray(predictions, np.float64).reshape(-1, 4)
    is_true_positive = np.zeros(len(predictions), bool)
    found = np.zeros(len(ground_truth), bool)
    if len(ground_truth) == 0 or len(predictions) == 0:
        return is_true_positive, found
    iou = pairwise_iou(predictions, ground_truth)
    for index in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        candidates = np.where(found, -1.0, iou[index])
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            found[best] = is_true_positive[index] = True
    return is_true_positive, found


SWATCH = "#"  # a piece of this text is drawn as a filled square of its colour
MIN_FONT_SCALE = 0.35  # below it OpenCV's font is not legible: long lines are cut instead


def _header(lines: list[list[tuple[str, tuple]]], width: int, base_scale: float) -> np.ndarray:
    """Lines of (text, colour) pieces -> an RGB band `width` wide; the font shrinks to fit."""
    widths = [sum(cv2.getTextSize(text, FONT, 1.0, 1)[0][0] for text, _ in line) for line in lines]
    scale = max(MIN_FONT_SCALE, min(base_scale, 0.96 * width / max(max(widths), 1)))
    thickness = max(1, round(scale * 1.5))
    text_height = cv2.getTextSize("Ag", FONT, scale, thickness)[0][1]
    # The band's height depends on the image size and line count only, not on the text, so that
    # the pictures of one image size stack (TensorBoard's image summaries).
    line_height = int(cv2.getTextSize("Ag", FONT, base_scale, max(1, round(base_scale * 1.5)))[0][1] * 1.9) + 2
    band = np.full((line_height * len(lines) + line_height // 3, width, 3), HEADER_COLOR, np.uint8)
    for row, line in enumerate(lines):
        x, y = max(2, int(0.02 * width)), line_height * (row + 1)
        for text, colour in line:
            if text == SWATCH:
                cv2.rectangle(band, (x, y - text_height), (x + text_height, y), colour, cv2.FILLED)
                x += text_height + max(2, text_height // 3)
                continue
            cv2.putText(band, text, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)
            x += cv2.getTextSize(text, FONT, scale, thickness)[0][0]
    return band


def draw_boxes(image: np.ndarray, ground_truth=None, predictions=None, scores=None, *, title: str = "",
               threshold: float | None = None, image_probability: float | None = None,
               legend: bool = True) -> np.ndarray:
    """Grey uint8 [H, W] (or RGB) and `x1, y1, x2, y2` boxes in its pixels -> RGB uint8 [H + band, W, 3].

    With both ground truth and predictions given, each prediction is marked TP or FP and each
    missed truth FN (greedy matching at IoU >= MATCH_IOU). The band above the image holds the
    legend, the counts, the threshold and p(pneumonia) when given, and the title; `legend=False`
    leaves the band out (the result is then [H, W, 3]).
    """
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 256))
    font_scale = max(0.4, max(image.shape[:2]) / 1024)
    judged = ground_truth is not None and predictions is not None  # before None becomes "no boxes"
    truth = np.asarray(ground_truth if ground_truth is not None else np.zeros((0, 4))).reshape(-1, 4)
    predictions = np.asarray(predictions if predictions is not None else np.zeros((0, 4))).reshape(-1, 4)
    scores = np.asarray(scores if scores is not None else np.ones(len(predictions)))
    is_true_positive, found = match_predictions(truth, predictions, scores)
    for box, was_found in zip(truth, found):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), GROUND_TRUTH_COLOR, thickness)
        if judged and not was_found:
            cv2.putText(canvas, "FN", (x1 + 2, min(canvas.shape[0] - 4, y2 - 4)), FONT, font_scale,
                        GROUND_TRUTH_COLOR, thickness, cv2.LINE_AA)
    for box, score, hit in zip(predictions, scores, is_true_positive):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), PREDICTION_COLOR, thickness)
        label = f"{'TP' if hit else 'FP'} {score:.2f}" if judged else f"{score:.2f}"
        cv2.putText(canvas, label, (x1 + 2, max(12, y1 - 4)), FONT, font_scale, PREDICTION_COLOR, thickness,
                    cv2.LINE_AA)
    if not legend:
        return canvas
    lines = [[(SWATCH, GROUND_TRUTH_COLOR), ("truth   ", TEXT_COLOR), (SWATCH, PREDICTION_COLOR),
              ("prediction", TEXT_COLOR)]]
    if judged:
        lines.append([(f"TP {int(is_true_positive.sum())}  FP {int((~is_true_positive).sum())}  "
                       f"FN {int((~found).sum())}  (IoU >= {MATCH_IOU:g})", TEXT_COLOR)])
    facts = []
    if threshold is not None:
        facts.append(f"threshold {threshold:.2f}")
    if image_probability is not None and np.isfinite(image_probability):
        facts.append(f"p(pneumonia) {image_probability:.2f}")
    if facts:
        lines.append([("  ".join(facts), TEXT_COLOR)])
    if title:
        lines.append([(title, TEXT_COLOR)])
    return np.concatenate([_header(lines, canvas.shape[1], font_scale), canvas], axis=0)


def save_rgb(path, image: np.ndarray) -> None:
    """Write an RGB uint8 image in the format of `path`'s suffix (.png, .jpg), whole or not at all.
    Encoded here and written by retinanet/runtime/safe_writes.py, because cv2.imwrite answers a failed
    write with False, not an error; an unwritable `path` is a FileWriteError naming it."""
    path = Path(path)
    encoded, data = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not encoded:
        raise FileWriteError(f"cannot write {path}: OpenCV cannot encode the image as {path.suffix}")
    write_bytes_atomically(path, data.tobytes())


def fit_tile(image: np.ndarray, boxes_list, side: int) -> tuple[np.ndarray, list]:
    """Grey image and box arrays -> (the image letterboxed into side x side, boxes scaled with it)."""
    scale = side / max(image.shape[:2])
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                         interpolation=interpolation)
    tile = np.zeros((side, side) + image.shape[2:], np.uint8)
    tile[:resized.shape[0], :resized.shape[1]] = resized
    return tile, [np.asarray(boxes, np.float64).reshape(-1, 4) * scale for boxes in boxes_list]


def grid(images: list[np.ndarray], columns: int = 3) -> np.ndarray:
    """RGB images -> one RGB mosaic, `columns` wide; cells take the largest height and width
    (smaller images sit top-left, blank cells fill the last row)."""
    rows = -(-len(images) // columns)
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    mosaic = np.zeros((rows * height, min(columns, len(images)) * width, 3), np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        mosaic[row * height:row * height + image.shape[0], column * width:column * width + image.shape[1]] = image
    return mosaic
