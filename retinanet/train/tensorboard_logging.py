"""TensorBoard records beyond the training scalars: the resolved config as text, HParams (so
that runs compare by hyperparameter), precision-recall curves of the validation detections
and of the image-level probability, and optional weight histograms.

Layout under `<run_dir>/tensorboard/`: the config text and the HParams session in the folder
itself; scalars, images, PR curves and histograms in `train/` and `validation/`. The HParams
metrics are the validation scalars `best_rsna_metric`, `rsna_metric` and `ap50`.

A resumed run logs again the steps after its checkpoint: `trim_events` first drops them from
the event files written before the stop, as `runs.trim_log` does for the log, so that
TensorBoard shows each step once. Event files are created only when something is logged
(`SummaryWriters`, `log_run_start`), so that resuming a finished run adds none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.pr_curve import metadata as pr_curve_metadata

from retinanet.config import Config, to_dict
from retinanet.detection.metrics import detection_matches
from retinanet.runtime.safe_writes import make_directory, replace_atomically

# (validation scalar tag, what the HParams table calls it)
HPARAM_METRICS = (("best_rsna_metric", "validation RSNA metric at its best threshold"),
                  ("rsna_metric", "validation RSNA metric at the configured threshold"), ("ap50", "validation AP50"))
PR_CURVE_THRESHOLDS = 101  # 0.00, 0.01, ..., 1.00
BOX_PR_CURVE = "pr_curve/boxes_iou_0.5"
IMAGE_PR_CURVE = "pr_curve/image_level"


def flatten_config(config: Config) -> dict:
    """{"section.key": bool | int | float | str}: lists and null become their YAML text, which
    HParams can hold and compare."""
    flat = {}

    def visit(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        elif value is None:
            flat[prefix] = "null"
        else:
            flat[prefix] = yaml.safe_dump(value, default_flow_style=True).strip()

    visit("", to_dict(config))
    return flat


def config_markdown(config: Config) -> str:
    """The config as YAML in a Markdown code block (TensorBoard's text dashboard renders Markdown)."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    return "\n".join("    " + line for line in text.splitlines())


def event_files(directory) -> list[Path]:
    """The event files directly in `directory` (the names TensorBoard reads), in name order."""
    directory = Path(directory)
    return sorted(path for path in directory.glob("*tfevents*") if path.is_file()) if directory.is_dir() else []


def log_run_start(log_dir, config: Config, run_name: str) -> None:
    """Write the config text and the HParams session of a run into `log_dir` (step 0), unless it
    holds them already (an event file there: a resumed run, whose start wrote them)."""
    if event_files(log_dir):
        return
    flat = flatten_config(config)
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hparams_api.hparams_config(
            hparams=[hparams_api.HParam(key) for key in flat],
            metrics=[hparams_api.Metric(tag, group="validation", display_name=name) for tag, name in HPARAM_METRICS])
        hparams_api.hparams(flat, trial_id=run_name)
        tf.summary.text("config", config_markdown(config), step=0)
    writer.close()


def counts_at_thresholds(scores, is_positive, num_positive: int, num_negative: int | None = None,
                         num_thresholds: int = PR_CURVE_THRESHOLDS) -> np.ndarray:
    """The PR-curve plugin's float32 [6, T] rows (true positives, false positives, true negatives,
    false negatives, precision, recall) at thresholds 0, 1 / (T - 1), ..., 1.

    scores [N] and is_positive [N]: each detection (true positive or not) or each image (positive
    or not); an item counts at a threshold when its score is at least the threshold. num_positive:
    all positives, found or not (ground-truth boxes, positive images); num_negative: all
    negatives (images), or None for detections, where true negatives do not exist (0).
    Precision is 0 where nothing is kept, as in TensorBoard's own PR-curve summaries.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_positive = np.asarray(is_positive, bool).reshape(-1)
    thresholds = np.round(np.linspace(0.0, 1.0, num_thresholds), 10)  # 0.3 is 0.3, not 0.30000000000000004
    kept = scores[None, :] >= thresholds[:, None]
    true_positives = (kept & is_positive).sum(axis=1).astype(np.float64)
    false_positives = (kept & ~is_positive).sum(axis=1).astype(np.float64)
    true_negatives = (num_negative - false_positives) if num_negative is not None else np.zeros(num_thresholds)
    false_negatives = num_positive - true_positives
    precision = true_positives / np.maximum(true_positives + false_positives, 1.0)
    recall = true_positives / max(num_positive, 1)
    return np.stack([true_positives, false_positives, true_negatives, false_negatives, precision, recall]).astype(
        np.float32)


def write_pr_curve(tag: str, counts: np.ndarray, step: int, description: str) -> None:
    """One PR-curve summary (the default writer) from `counts_at_thresholds` rows."""
    metadata = pr_curve_metadata.create_summary_metadata(display_name=tag, description=description,
                                                         num_thresholds=counts.shape[1])
    tf.summary.write(tag, tf.constant(counts), step=step, metadata=metadata.SerializeToString())


def log_validation_details(writer, step: int, records, results: dict, model=None) -> None:
    """PR curves and the localization report of a validation pass (`Validator.run` results for
    `records`), and weight histograms of `model` when given."""
    ground_truth = {record.patient_id: record.boxes for record in records}
    scores, is_true_positive, num_boxes = detection_matches(ground_truth, results["detections"], 0.5)
    with writer.as_default(step=step):
        write_pr_curve(BOX_PR_CURVE, counts_at_thresholds(scores, is_true_positive, num_boxes), step,
                       "Boxes of all validation images pooled, matched at IoU 0.5 (as AP50); x: score threshold.")
        if results.get("probabilities") is not None:
            labels = np.array([record.target for record in records], bool)
            counts = counts_at_thresholds(results["probabilities"], labels, int(labels.sum()), int((~labels).sum()))
            write_pr_curve(IMAGE_PR_CURVE, counts, step, "Image-level 'pneumonia present' probability.")
        if results.get("localization") is not None:
            write_localization(results["localization"])
        if model is not None:
            for variable in model.weights:
                tf.summary.histogram(f"weights/{variable.path}", variable)
    writer.flush()


def write_localization(report: dict) -> None:
    """The localization report (`retinanet.detection.localization`) as scalars of the default writer:
    the hit rate at each IoU threshold, the medians of the matched boxes' IoU, size ratios and
    centre offsets, and the RSNA metric by view and by number of true boxes."""
    for row in report["per_iou_threshold"]:
        if row["hit_rate"] is not None:
            tf.summary.scalar(f"localization/hit_rate_iou_{row['iou']:.2f}", row["hit_rate"])
    for key in ("matched_iou", "width_ratio", "height_ratio", "centre_offset_x", "centre_offset_y"):
        if report[key] is not None:
            tf.summary.scalar(f"localization/{key}_median", report[key][1])
    for key, title in (("by_view", "view"), ("by_true_boxes", "true_boxes")):
        for group, values in report.get(key, {}).items():
            if values["rsna_metric"] is not None:
                tf.summary.scalar(f"localization/rsna_metric_{title}_{group}", values["rsna_metric"])


class SummaryWriters:
    """The summary writers of `<log_dir>/<name>/`, each created on its first use: creating a
    writer creates its event file, and a run that logs nothing should leave none."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def __getitem__(self, name: str) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            # The directory made first: one that cannot be made is a named error, not TensorFlow's OpError.
            self._writers[name] = tf.summary.create_file_writer(str(make_directory(self.log_dir / name)))
        return self._writers[name]

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()


RECORD_FRAMING = 16  # bytes around each TFRecord: its length (8), the length's CRC (4), the data's CRC (4)


def _records(path: Path) -> tuple[list[bytes], bool]:
    """The complete records of an event file, and whether anything follows them (a record cut
    short by a kill, which TFRecordDataset reports, or ignores when the cut is in its length)."""
    records = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            records.append(record.numpy())
    except tf.errors.DataLossError:
        return records, True
    return records, path.stat().st_size != sum(len(record) + RECORD_FRAMING for record in records)


def _write_records(path: Path, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def trim_events(log_dir, step: int, validated_step: int) -> int:
    """Keep the events of what a run resumed at `step` has seen; returns how many were dropped.

    The limits are `runs.trim_log`'s: events after `step` in `<log_dir>/train/`, and after
    min(step, validated_step) in `<log_dir>/validation/`, are logged again by the resumed run.
    A record cut short by a kill is dropped too. Each changed file is rewritten atomically.
    """
    dropped = 0
    for name, limit in (("train", step), ("validation", min(step, validated_step))):
        for path in event_files(Path(log_dir) / name):
            records, cut_short = _records(path)
            kept = [record for record in records if event_pb2.Event.FromString(record).step <= limit]
            if len(kept) != len(records) or cut_short:
                replace_atomically(path, lambda temporary, kept=kept: _write_records(temporary, kept))
                dropped += len(records) - len(kept) + cut_short
    return dropped
