"""A run directory: its layout, and the readers and writers of the files that training, evaluation
and inference share.

A run directory belongs to one run. Training writes `config.yaml` (the resolved config),
`split.csv` (the folds it used), `checkpoints/` (latest, atomic, with optimizer state and
step), `best.weights.h5` and `best.json` (best validation RSNA metric), `final.weights.h5`,
`log.jsonl`, `validation.json`, `budget.json` (with `training.time_budget_minutes`),
`tensorboard/`, `validation_predictions.png` and `threshold.json`: the score threshold chosen on
the validation that chose `best.weights.h5`, rewritten with them (`retinanet evaluate
--write-threshold` replaces it with the evaluation's choice). `RUN_ENTRIES` lists them all.
Evaluation, inference and export find a run's config, weights and threshold through
`resolve_source`, and its held-out patients through `held_out_records`; the threshold is theirs by
default (`read_threshold` says where it came from). What training alone keeps there to be
recoverable is `retinanet.train.run_state`'s.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from retinanet.config import Config, ConfigError, load_config
from retinanet.config.paths import absolute_path
from retinanet.data.split import prepare_split
from retinanet.data.rsna import Record
from retinanet.errors import UserError
from retinanet.runtime.safe_writes import write_json_atomically

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "best.weights.h5"
BEST_RECORD = "best.json"
FINAL_WEIGHTS = "final.weights.h5"
LOG = "log.jsonl"
TENSORBOARD = "tensorboard"
VALIDATION_PICTURE = "validation_predictions.png"
VALIDATION_STATE = "validation.json"
BUDGET_FILE = "budget.json"
THRESHOLD_FILE = "threshold.json"
RUN_ENTRIES = (CONFIG_FILE, SPLIT_FILE, CHECKPOINTS, BEST_WEIGHTS, BEST_RECORD, FINAL_WEIGHTS, LOG, TENSORBOARD,
               VALIDATION_PICTURE, VALIDATION_STATE, BUDGET_FILE, THRESHOLD_FILE)
WEIGHTS_SUFFIX = ".weights.h5"
RUN_WEIGHTS = (BEST_WEIGHTS, FINAL_WEIGHTS)  # in order of preference
# A cross-validation directory holds one run directory per fold: fold_<k>/.
FOLD_DIRECTORY = re.compile(r"fold_(\d+)")


class ModelLoadError(UserError, ValueError):
    """A run directory, checkpoint, config or threshold file that cannot be used; names the path."""


class HeldOutError(UserError, ValueError):
    """A run's held-out patients cannot be found (no split file, an empty validation fold)."""


def fold_dir(parent: Path, fold: int) -> Path:
    """Fold `fold`'s run directory in the cross-validation directory `parent`."""
    return Path(parent) / f"fold_{fold}"


def run_entries(run_dir: Path) -> list[str]:
    """The names of `RUN_ENTRIES` present in `run_dir` (empty: no run there yet)."""
    return [name for name in RUN_ENTRIES if (Path(run_dir) / name).exists()]


def record_path(path, record_dir) -> str:
    """How a record (a JSON file written beside a run's files, e.g. metrics.json, threshold.json)
    stores `path`: relative to `record_dir`, the directory the record is written in, when `path`
    lies inside it or inside its parent, absolute otherwise.

    An evaluation written into its run directory (`<run>/evaluation/metrics.json`) thus names the
    run's files `../config.yaml`, and a run directory moved or copied with its records keeps them
    valid; a data set or a run elsewhere is written absolute, which moving the run does not break.
    Relative paths in `path` mean the working directory; both sides are compared as real paths.
    """
    absolute = Path(os.path.realpath(path))
    directory = Path(os.path.realpath(record_dir))
    if absolute.is_relative_to(directory):
        return str(absolute.relative_to(directory))
    if absolute.is_relative_to(directory.parent):
        return str(Path("..") / absolute.relative_to(directory.parent))
    return str(absolute)


def resolve_record_path(value: str, record_dir) -> str:
    """A path read from a record in `record_dir` -> absolute (the inverse of `record_path`).

    Records written before paths were stored that way hold absolute paths (kept as they are) or
    paths relative to the working directory they were written from: such a path is taken as it is
    when it exists and the path relative to the record does not.
    """
    resolved = absolute_path(value, Path(os.path.realpath(record_dir)))
    if not os.path.isabs(value) and not os.path.exists(resolved) and os.path.exists(value):
        return os.path.abspath(value)
    return resolved


# --- Where a trained model's pieces come from ---------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where a Detector's pieces come from.

    weights: a `.weights.h5` file or a tf.train.Checkpoint prefix; run_dir: the directory that
    holds (or would hold) `threshold.json`.
    """

    config: Config
    config_path: Path
    weights: Path
    run_dir: Path


def load_run_config(path: Path) -> Config:
    """The config at `path`; ModelLoadError naming the file when it is missing or invalid."""
    if not path.is_file():
        raise ModelLoadError(f"config file not found: {path}")
    try:
        return load_config(path)
    except ConfigError as error:
        raise ModelLoadError(f"cannot use config {path}: {error}") from None


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest tf.train checkpoint prefix in `directory` (a run's `checkpoints/`), or None."""
    latest = tf.train.latest_checkpoint(str(directory))
    return Path(latest) if latest else None


def latest_run(root: Path) -> Path | None:
    """The most recently modified run directory (one holding a config.yaml) directly under `root`."""
    found = sorted((path.parent for path in Path(root).glob(f"*/{CONFIG_FILE}")), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def source_from_run_dir(run_dir: str | Path) -> ModelSource:
    """The config, best available weights and threshold location of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelLoadError(f"run directory not found: {run_dir}")
    config_path = run_dir / CONFIG_FILE
    config = load_run_config(config_path)
    for name in RUN_WEIGHTS:
        if (run_dir / name).is_file():
            return ModelSource(config, config_path, run_dir / name, run_dir)
    latest = latest_checkpoint(run_dir / CHECKPOINTS)
    if latest is None:
        raise ModelLoadError(f"no weights in run directory {run_dir} (expected {' or '.join(RUN_WEIGHTS)} "
                             f"or a checkpoint in {CHECKPOINTS}/)")
    return ModelSource(config, config_path, latest, run_dir)


def source_from_checkpoint(checkpoint: str | Path, config_path: str | Path | None = None) -> ModelSource:
    """A `.weights.h5` file, a tf.train.Checkpoint prefix or a `checkpoints/` directory.

    Without `config_path` the config is the `config.yaml` beside the checkpoint or in its parent.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        latest = latest_checkpoint(checkpoint)
        if latest is None:
            raise ModelLoadError(f"no checkpoint in directory {checkpoint} (for a run directory use --run-dir)")
        checkpoint = latest
    elif not (checkpoint.is_file() or Path(f"{checkpoint}.index").is_file()):
        raise ModelLoadError(f"checkpoint not found: {checkpoint}")
    elif checkpoint.is_file() and not checkpoint.name.endswith(WEIGHTS_SUFFIX):
        raise ModelLoadError(f"{checkpoint}: not a {WEIGHTS_SUFFIX} file or a tf.train.Checkpoint prefix")
    folders = [checkpoint.parent, checkpoint.parent.parent]
    if config_path is None:
        found = [folder / CONFIG_FILE for folder in folders if (folder / CONFIG_FILE).is_file()]
        if not found:
            raise ModelLoadError(f"no {CONFIG_FILE} beside {checkpoint} or in its parent directory; "
                                 "pass the config explicitly (--config)")
        config_path = found[0]
        run_dir = config_path.parent
    else:
        config_path = Path(config_path)
        run_dir = next((folder for folder in folders if (folder / THRESHOLD_FILE).is_file()), checkpoint.parent)
    return ModelSource(load_run_config(config_path), config_path, checkpoint, run_dir)


def resolve_source(*, checkpoint=None, run_dir=None, config_path=None) -> ModelSource:
    """Exactly one of `checkpoint` and `run_dir`; `config_path` only with a checkpoint."""
    if (checkpoint is None) == (run_dir is None):
        raise ModelLoadError("give either a checkpoint or a run directory")
    if run_dir is not None:
        if config_path is not None:
            raise ModelLoadError("a run directory brings its own config; --config goes with --checkpoint")
        return source_from_run_dir(run_dir)
    return source_from_checkpoint(checkpoint, config_path)


def held_out_records(config: Config, split_file: str | Path, progress: bool = True) -> list[Record]:
    """The validation-fold records of `split_file` (a run's split.csv, or the config's split) with
    the labels and images of `config`'s data: the patients a run trained without. The file must
    exist: making a new split could hold out patients the run trained on."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise HeldOutError(f"split file not found: {split_file}")
    records = prepare_split(config, split_file, progress=progress).validation
    if not records:
        raise HeldOutError(f"{split_file}: no patients in validation fold {config.data.validation_fold}")
    return records


# --- The small JSON files ------------------------------------------------------------------------


def read_threshold(run_dir: Path, default: float) -> tuple[float, str]:
    """(score threshold, where it came from): `<run_dir>/threshold.json` if present, else `default`
    (the config's evaluation.score_threshold)."""
    path = Path(run_dir) / THRESHOLD_FILE
    if not path.is_file():
        return float(default), "config evaluation.score_threshold"
    try:
        document = json.loads(path.read_text())
        threshold = document["score_threshold"]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path}: expected JSON with a score_threshold ({error})") from None
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ModelLoadError(f"{path}: score_threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold), threshold_origin(document, path)


def threshold_line(threshold: float, origin: str) -> str:
    """What the commands print about the threshold they use, e.g. "score threshold 0.55 (chosen on
    validation at step 375, runs/x/threshold.json)" or "score threshold 0.3 (--threshold)"."""
    return f"score threshold {threshold:g} ({origin})"


def threshold_origin(document: dict, path: Path) -> str:
    """Where the threshold of the threshold.json `document` at `path` was chosen, e.g. "chosen on
    validation at step 375, runs/x/threshold.json". A file written before `chosen_on` existed
    names its metrics file, if any."""
    chosen_on, metrics = document.get("chosen_on"), document.get("metrics")
    if metrics is not None:
        metrics = resolve_record_path(metrics, path.parent)
    if chosen_on == "validation":
        step = document.get("step")
        return f"chosen on validation{'' if step is None else f' at step {step}'}, {path}"
    if chosen_on in ("evaluation", "out-of-fold predictions"):
        return f"chosen on {chosen_on}{'' if metrics is None else f' ({metrics})'}, {path}"
    return f"from {metrics}, {path}" if metrics else str(path)


def write_threshold(run_dir: Path, threshold: float, rsna_metric, chosen_on: str, *, step: int | None = None,
                    metrics_file: Path | None = None) -> Path:
    """`<run_dir>/threshold.json`, the default threshold of evaluation, inference and export:
    the threshold, its RSNA metric and where it was chosen (`chosen_on`: "validation" by training,
    at `step`; "evaluation" by `retinanet evaluate --write-threshold`, or "out-of-fold predictions"
    by cross-validation, both in `metrics_file`, stored as `record_path` writes it). Written
    atomically; returns the path."""
    document = {"score_threshold": float(threshold), "rsna_metric": rsna_metric, "chosen_on": chosen_on}
    if step is not None:
        document["step"] = int(step)
    if metrics_file is not None:
        document["metrics"] = record_path(metrics_file, run_dir)
    path = Path(run_dir) / THRESHOLD_FILE
    write_json_atomically(path, document)
    return path


def read_log(run_dir: Path) -> list[dict]:
    """The entries of a run's log.jsonl ({"split", "step", "elapsed_seconds", scalars...}), without a
    last line cut short by a kill."""
    path = Path(run_dir) / LOG
    entries = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def read_best_record(run_dir: Path) -> dict:
    """`best.json`: the step and validation scalars of `best.weights.h5`."""
    return json.loads((Path(run_dir) / BEST_RECORD).read_text())
