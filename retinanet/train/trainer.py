"""Train a RetinaNet: the recipe, read top to bottom.

`train` builds a `Trainer` in four phases and runs the fifth, each a short function below:

1. `open_run`: the run directory (a new one, or the saved config of a resumed one), the machine
   (precision, threads), the distribution strategy and this worker's role;
2. `build_inputs`: the data: the labels, the split saved with the run, the image cache;
3. `build_task`: model, loss, optimizer, checkpoints and the validator (`retinanet.builders`
   maps the config onto each);
4. `restore`: the latest checkpoint of a resumed run;
5. `Trainer.fit` (`retinanet.train.loop`): steps, checkpoints, validation, the best weights.

What a run directory holds is `retinanet.run_directory`'s; what makes it recoverable,
`retinanet.train.run_state`'s. One directory holds one run: a new run into it is refused unless it
resumes or overwrites. Generating the demo's synthetic data is the commands' step, never this one's.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import tensorflow as tf

from retinanet.builders import (build_anchor_set, build_image_source, build_loss, build_model, build_optimizer,
                                build_postprocessor, build_schedule, build_validator)
from retinanet.config import Config, load_config
from retinanet.data.split import prepare_split
from retinanet.run_directory import CHECKPOINTS, CONFIG_FILE, SPLIT_FILE, TENSORBOARD, run_entries
from retinanet.runtime.hardware import dtype_policy, prepare_runtime
from retinanet.runtime.safe_writes import make_directory, write_bytes_atomically
from retinanet.train.distributed import barrier, make_strategy, remove_write_directory, worker_role, write_directory
from retinanet.train.loop import Trainer
from retinanet.train.parts import Inputs, Run, Task, TrainingError, check_finite, save_run_config
from retinanet.train.run_state import last_validated_step, remove_run, remove_stale_temporaries, trim_log
from retinanet.train.tensorboard_logging import trim_events


def train(config: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, started: float | None = None) -> dict:
    """Train (or resume) a run; returns the last validation results (no scalars on a worker other
    than the chief). `started` (time.monotonic()) is when the time budget began: default now."""
    trainer = build_trainer(config, run_dir, resume=resume, overwrite=overwrite, progress=progress, started=started)
    try:
        return trainer.fit()
    finally:
        remove_write_directory(trainer.run.write_dir, trainer.run.source_dir)


def build_trainer(config: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                  progress: bool = True, started: float | None = None):
    """The first four phases of the recipe; the fifth is the returned Trainer's `fit`."""
    run = open_run(config, run_dir, resume=resume, overwrite=overwrite, started=started)  # 1. the run directory
    inputs = build_inputs(run, progress)  # 2. the data
    task = build_task(run, inputs, progress)  # 3. model, loss, optimizer
    restore(task, run)  # 4. the latest checkpoint, when resuming
    return Trainer(run, inputs, task, progress)  # 5. the loop: Trainer.fit


# --- 1. The run directory -------------------------------------------------------------------------


def open_run(config: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
             started: float | None = None) -> Run:
    """The run directory ready to write: a resumed run's config, an earlier run removed (with
    `overwrite`), the runtime set up, the strategy made, this worker's role and directory."""
    source_dir = Path(run_dir)
    if resume and overwrite:
        raise TrainingError("--resume continues a run and --overwrite deletes it: give one of them")
    if resume:
        config = saved_config(source_dir)
    elif config.training.strategy != "multi_worker":
        start_fresh(source_dir, overwrite)  # a multi-worker run's chief does it once it knows its role
    started = time.monotonic() if started is None else started
    config, strategy, device_line = start_runtime(config)
    worker, num_workers, is_chief = worker_role(strategy)
    write_dir = source_dir
    if num_workers > 1:
        if is_chief and not resume:
            start_fresh(source_dir, overwrite)
        write_dir = write_directory(source_dir, worker, is_chief)
        print(f"Worker {worker} of {num_workers}" + ("" if is_chief else f"; writes to {write_dir} (removed at "
                                                                           "the end)"))
        if not is_chief:
            barrier(strategy)  # the chief first makes the run directory, writes the split, fills the cache
            remove_write_directory(write_dir, source_dir)  # what this worker left when killed
    make_directory(write_dir)
    for path in remove_stale_temporaries(write_dir):
        print(f"Removed {path}, left by an interrupted write")
    return Run(config, source_dir, write_dir, resume, started, strategy, worker, num_workers, is_chief, device_line)


def saved_config(run_dir: Path) -> Config:
    """A resumed run's config; TrainingError when `run_dir` holds no run or no checkpoint to resume."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise TrainingError(f"--resume: {run_dir} holds no {CONFIG_FILE}; is it a run directory?")
    if tf.train.latest_checkpoint(str(run_dir / CHECKPOINTS)) is None:
        raise TrainingError(stopped_before_first_checkpoint(run_dir))
    return load_config(run_dir / CONFIG_FILE)


def start_runtime(config: Config) -> tuple[Config, tf.distribute.Strategy, str]:
    """Precision and threads for this machine, the strategy (made before TensorFlow runs an op, as
    multi-worker collectives need) and the seeds: (config with the precision resolved, strategy,
    the device line, printed)."""
    runtime = config.runtime
    precision, device_line = prepare_runtime(runtime.mixed_precision, runtime.intra_op_threads,
                                             runtime.inter_op_threads)
    print(device_line)
    try:
        strategy = make_strategy(config.training.strategy)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if precision.warning:
        print(f"warning: {precision.warning}", file=sys.stderr)
    config = replace(config, runtime=replace(runtime, mixed_precision=precision.policy))
    keras.utils.set_random_seed(config.training.seed)
    if config.training.deterministic:
        tf.config.experimental.enable_op_determinism()
    return config, strategy, device_line


def start_fresh(run_dir: Path, overwrite: bool) -> None:
    """A new run needs a directory without an earlier run in it, or `overwrite` to delete that run."""
    found = run_entries(run_dir)
    if found and not overwrite:
        raise TrainingError(f"{run_dir} already holds a run ({', '.join(found)}); continue it with --resume, "
                            "choose another --run-dir, or start it afresh with --overwrite")
    if found:
        remove_run(run_dir)
        print(f"Removed the earlier run in {run_dir} ({', '.join(found)})")


def stopped_before_first_checkpoint(run_dir: Path) -> str:
    """What to say when `--resume` finds a run that never wrote a checkpoint: there is nothing to
    continue, but its config and split are there to start it again from step 0."""
    return (f"--resume: the run in {run_dir} was stopped before its first checkpoint (none in "
            f"{run_dir / CHECKPOINTS}), so there is nothing to resume; start it again from step 0 with: "
            f"retinanet train --config {run_dir / CONFIG_FILE} --run-dir {run_dir} --overwrite")


def default_run_dir(config: Config, config_path: str | Path | None) -> Path:
    name = Path(config_path).stem if config_path else "run"
    return Path(config.training.run_root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- 2. The data ----------------------------------------------------------------------------------


def build_inputs(run: Run, progress: bool = True) -> Inputs:
    """The run's records (its split.csv when it has one; the chief saves the split and the config
    with the run) and the training images read once into the cache, by the chief first on a
    multi-worker run (the others wait for it in `open_run`)."""
    config = run.config
    split_path = run.source_dir / SPLIT_FILE
    prepared = prepare_split(config, split_path if split_path.is_file() else None, progress=progress)
    if run.is_chief:
        if not split_path.is_file():
            write_bytes_atomically(split_path, prepared.split_file.read_bytes())
        save_run_config(config, run.write_dir)
    if not prepared.train or not prepared.validation:
        raise TrainingError(f"empty split: {len(prepared.train)} training and {len(prepared.validation)} "
                            "validation patients")
    train_source = build_image_source(config, prepared.train, progress=progress, split="train")
    if run.is_chief and run.num_workers > 1:
        if config.data.use_cache:  # filled once, by the chief, before the others read it
            build_image_source(config, prepared.validation, progress=progress, split="validation")
        barrier(run.strategy)
    replicas = run.strategy.num_replicas_in_sync
    if config.training.batch_size % replicas:
        raise TrainingError(f"training.batch_size {config.training.batch_size} is not divisible by {replicas} "
                            "replicas")
    return Inputs(prepared.train, train_source, prepared.validation, build_anchor_set(config))


# --- 3. Model, loss, optimizer --------------------------------------------------------------------


def build_task(run: Run, inputs: Inputs, progress: bool = True) -> Task:
    """The model and optimizer under the strategy and precision, the loss, the postprocessor, the
    checkpoints (in this worker's directory) and, on the chief, the validator."""
    config = run.config
    with run.strategy.scope(), dtype_policy(config.runtime.mixed_precision):
        model = build_model(config)
        schedule = build_schedule(config.training)
        optimizer = build_optimizer(config.training, schedule, precision=config.runtime.mixed_precision)
        optimizer.build(model.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    loss = build_loss(config, inputs.anchor_set)
    postprocessor = build_postprocessor(config, inputs.anchor_set)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, run.write_dir / CHECKPOINTS,
                                         max_to_keep=config.training.keep_checkpoints)
    validator = build_validator(config, model, postprocessor, loss, inputs.validation_records, inputs.anchor_set,
                                progress=progress) if run.is_chief else None
    return Task(model, loss, postprocessor, schedule, optimizer, epoch, checkpoint, manager, validator)


# --- 4. Restore -----------------------------------------------------------------------------------


def restore(task: Task, run: Run) -> None:
    """A resumed run's latest checkpoint (the chief's, on every worker), checked finite; the log and
    the TensorBoard events cut back to what it has seen."""
    if not run.resume:
        return
    latest = tf.train.latest_checkpoint(str(run.source_dir / CHECKPOINTS))
    if latest is None:
        raise TrainingError(f"--resume: no checkpoint in {run.source_dir / CHECKPOINTS}")
    task.checkpoint.restore(latest).assert_existing_objects_matched()
    check_finite(task, f"resuming from {latest}")
    step = int(task.optimizer.iterations.numpy())
    trim_log(run.write_dir, step, last_validated_step(run.write_dir))
    trim_events(run.write_dir / TENSORBOARD, step, last_validated_step(run.write_dir))
    print(f"Resumed from {latest} at step {step}")
