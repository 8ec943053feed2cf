"""What the training recipe's phases hand on (`retinanet.train.trainer`): the run, its inputs and
its task, and the checks and records they share with the loop (`retinanet.train.loop`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import keras
import tensorflow as tf

from retinanet.config import Config, save_config
from retinanet.data.pipeline import ImageSource
from retinanet.data.rsna import Record
from retinanet.detection.anchors import AnchorSet
from retinanet.errors import UserError
from retinanet.run_directory import CONFIG_FILE, SPLIT_FILE
from retinanet.train.run_state import last_finite_checkpoint, non_finite_variables

DIVERGED = "Lower training.learning_rate or check the data, and start a new run."


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, missing run directory to resume...)."""


@dataclass(frozen=True)
class Run:
    """One process's view of a run."""

    config: Config  # the run's config (a resumed run's saved one), runtime.mixed_precision resolved here
    source_dir: Path  # the run directory, which every worker reads
    write_dir: Path  # where this process writes: the run directory (chief), or its worker-<i>.tmp
    resume: bool
    started: float  # time.monotonic() when the time budget began
    strategy: tf.distribute.Strategy
    worker: int
    num_workers: int
    is_chief: bool
    device_line: str


@dataclass(frozen=True)
class Inputs:
    train_records: list[Record]  # the split's, readable or not
    train_source: ImageSource  # the readable ones, their images read once (the cache)
    validation_records: list[Record]
    anchor_set: AnchorSet  # of the network input: the targets, the loss and the postprocessor share it


@dataclass(frozen=True)
class Task:
    model: keras.Model
    loss: object  # RetinaNetLoss
    postprocessor: object  # Postprocessor
    schedule: object  # WarmupDecay, whose length the time budget may shorten
    optimizer: keras.optimizers.Optimizer
    epoch: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    validator: object | None  # Validator, on the chief alone


def save_run_config(config: Config, run_dir: Path) -> None:
    """The run's config, its split file pointing at the run's own split.csv."""
    split_file = str((run_dir / SPLIT_FILE).resolve())
    save_config(replace(config, data=replace(config.data, split_file=split_file)), run_dir / CONFIG_FILE)


def latest_good_checkpoint(task: Task) -> str:
    latest = last_finite_checkpoint(task.manager.checkpoints)
    return f"the latest good checkpoint is {latest}" if latest else "no checkpoint with finite weights was written"


def check_finite(task: Task, action: str) -> None:
    """TrainingError naming the latest good checkpoint if a weight or optimizer slot is NaN or infinite."""
    variables = [*task.model.weights, *task.optimizer.variables]
    bad = non_finite_variables(variables)
    if bad:
        raise TrainingError(f"non-finite weights at step {int(task.optimizer.iterations.numpy())} ({len(bad)} of "
                            f"{len(variables)} tensors, e.g. {bad[0]}), found before {action}; "
                            f"{latest_good_checkpoint(task)}. {DIVERGED}")
