"""Build everything from a config and train: custom loop, checkpoints, validation, TensorBoard.

What a run directory holds, and what makes it recoverable, is described in retinanet/train/runs.py;
`best.weights.h5` and `final.weights.h5` hold the moving average of the weights with
`training.ema_decay`, which validation judges.
One directory holds one run: a new run into it is refused unless it resumes or overwrites.
Every validation step is also a checkpoint step, so a resumed run never replays a validation.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retinanet.errors import UserError
from retinanet.train.budget import CALIBRATION_MARGIN, CALIBRATION_STEPS, Timing, fit_schedule
from retinanet.config import Config, TrainingConfig, load_config, save_config
from retinanet.data.pipeline import build_dataset, prepare_split, source_dataset
from retinanet.data.rsna import Record
from retinanet.train.distributed import barrier, make_strategy, remove_write_directory, worker_role, write_directory
from retinanet.train.ema import averaged_weights
from retinanet.train.optimizers import FusedAdamW, FusedSGD
from retinanet.runtime.hardware import dtype_policy, prepare_runtime
from retinanet.builders import build_anchor_set, build_loss, build_model, build_postprocessor
from retinanet.detection.losses import image_loss
from retinanet.train import runs
from retinanet.train.runs import (last_finite_checkpoint, last_validated_step, non_finite_variables,
                                  record_validated_step, record_validation_due, remove_run, remove_stale_temporaries,
                                  run_entries, trim_log, validation_due_step, write_json_atomically,
                                  write_validation_threshold)
from retinanet.train.tensorboard_logging import SummaryWriters, log_run_start, log_validation_details, trim_events
from retinanet.train.validation import NonFiniteOutputError, Validator, validation_picture
from retinanet.runtime.safe_writes import (append_line, make_directory, save_checkpoint, save_weights_atomically,
                                           write_bytes_atomically)
from retinanet.visualize import save_rgb


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, missing run directory to resume...)."""


class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then cosine, step or constant decay; a pure function of the step.

    The lengths are variables, so that `fit` can shorten a run (`training.time_budget_minutes`)
    without tracing the training step again.
    """

    def __init__(self, base: float, total_steps: int, warmup_steps: int, kind: str,
                 boundaries: tuple[float, ...] = (), factor: float = 0.1):
        self.base, self.kind, self.boundaries, self.factor = base, kind, tuple(boundaries), factor
        self.total_steps = tf.Variable(float(total_steps), trainable=False, name="schedule_steps")
        self.warmup_steps = tf.Variable(float(warmup_steps), trainable=False, name="schedule_warmup")

    def fit(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps.assign(float(total_steps))
        self.warmup_steps.assign(float(warmup_steps))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        total, warmup_steps = tf.convert_to_tensor(self.total_steps), tf.convert_to_tensor(self.warmup_steps)
        warmup = self.base * tf.minimum(1.0, (step + 1.0) / tf.maximum(1.0, warmup_steps))
        progress = tf.clip_by_value((step - warmup_steps) / tf.maximum(1.0, total - warmup_steps), 0.0, 1.0)
        if self.kind == "cosine":
            decayed = self.base * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "step":
            passed = tf.add_n([tf.cast(step >= b * total, tf.float32) for b in self.boundaries] + [0.0])
            decayed = self.base * tf.pow(self.factor, passed)
        else:
            decayed = tf.constant(self.base, tf.float32)
        return tf.where(step < warmup_steps, warmup, decayed)

    def get_config(self):
        return {"base": self.base, "total_steps": int(self.total_steps.numpy()),
                "warmup_steps": int(self.warmup_steps.numpy()), "kind": self.kind, "boundaries": self.boundaries,
                "factor": self.factor}


def schedule_from_config(training: TrainingConfig) -> WarmupDecay:
    return WarmupDecay(training.learning_rate, training.steps, training.warmup_steps, training.schedule,
                       training.step_boundaries, training.step_factor)


def build_optimizer(training: TrainingConfig, schedule: WarmupDecay | None = None, *,
                    precision: str = "float32") -> keras.optimizers.Optimizer:
    """The training section's optimizer; loss scaling under the `precision` policy mixed_float16."""
    schedule = schedule or schedule_from_config(training)
    # Keras keeps the weights' moving average itself (retinanet/train/ema.py).
    ema = {"use_ema": True, "ema_momentum": training.ema_decay} if training.ema_decay else {}
    if training.optimizer == "sgd":
        optimizer = FusedSGD(schedule, momentum=training.momentum, weight_decay=training.weight_decay, **ema)
    else:
        optimizer = FusedAdamW(schedule, weight_decay=training.weight_decay, **ema)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def set_seeds(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def default_run_dir(config: Config, config_path: str | Path | None) -> Path:
    name = Path(config_path).stem if config_path else "run"
    return Path(config.training.run_root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _selection_metric(scalars: dict) -> float:
    """What picks the best weights: the RSNA metric at the score threshold that is best on
    validation (the one evaluation then chooses). It is NaN when no image is scored (no
    positives, no boxes): rank that lowest."""
    metric = scalars.get("best_rsna_metric", scalars["rsna_metric"])
    return metric if math.isfinite(metric) else -1.0


def build_train_step(config: Config, strategy: tf.distribute.Strategy, model: keras.Model,
                     optimizer: keras.optimizers.Optimizer, loss):
    """A tf.function: one global batch (distributed dataset element) -> dict of scalar metrics."""
    replicas = strategy.num_replicas_in_sync
    global_batch = config.training.batch_size
    image_weight = config.loss.image_weight if config.model.image_head else 0.0
    clip_norm = config.training.gradient_clip_norm
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(batch):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            outputs = model(batch["images"], training=True)
            sums = loss.components(batch["targets"], outputs["predictions"])
            # The normaliser is the positive count of the whole global batch, not this replica's.
            num_positive = context.all_reduce("sum", sums["num_positive"])
            terms = loss.normalize(sums, num_positive)
            image_term = 0.0
            if image_weight:
                image_term = tf.reduce_sum(image_loss(batch["image_labels"], outputs["image_logits"])) / global_batch
            total = terms["total"] + image_weight * image_term
            total_for_gradient = optimizer.scale_loss(total) if scaled else total
        gradients = tape.gradient(total_for_gradient, model.trainable_variables)
        gradients = context.all_reduce("sum", gradients)
        if scaled:
            gradients = [g / optimizer.dynamic_scale for g in gradients]
        norm = tf.linalg.global_norm(gradients)
        # The optimizer sums gradients over replicas again: hand each replica its share, and clip
        # as tf.clip_by_global_norm does (NaN for a non-finite norm), in one pass over the gradients.
        factor = (optimizer.dynamic_scale if scaled else 1.0) / replicas
        if clip_norm:
            factor = factor * clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
        if clip_norm or scaled or replicas > 1:
            gradients = [g * tf.cast(factor, g.dtype) for g in gradients]
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return {"loss/total": total, "loss/classification": terms["classification"], "loss/box": terms["box"],
                "loss/image": image_term, "gradient_norm": norm, "positive_anchors": num_positive}

    def step(batch):
        results = strategy.run(replica_step, args=(batch,))
        # Each replica's loss terms are its share of the global loss: sum them. The norm and
        # the positive count are already global, identical on every replica.
        return {key: strategy.reduce("sum", value, axis=None) / (replicas if key in
                ("gradient_norm", "positive_anchors") else 1.0) for key, value in results.items()}

    return tf.function(step, jit_compile=config.training.jit_compile or None, reduce_retracing=True)


class Trainer:
    """Owns the model, optimizer, data and logs of one run directory."""

    def __init__(self, config: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True):
        # The run directory is read by every worker and written by the chief (`self.run_dir`);
        # the other workers of a multi-worker run write to a temporary directory instead.
        self.source_dir = self.run_dir = Path(run_dir)
        self.progress = progress
        if resume and overwrite:
            raise TrainingError("--resume continues a run and --overwrite deletes it: give one of them")
        if resume:
            if not (self.source_dir / runs.CONFIG_FILE).is_file():
                raise TrainingError(f"--resume: {self.source_dir} holds no {runs.CONFIG_FILE}; is it a run directory?")
            if tf.train.latest_checkpoint(str(self.source_dir / runs.CHECKPOINTS)) is None:
                raise TrainingError(stopped_before_first_checkpoint(self.source_dir))
            config = load_config(self.source_dir / runs.CONFIG_FILE)
        elif config.training.strategy != "multi_worker":
            start_fresh(self.run_dir, overwrite)  # a multi-worker run's chief checks once it knows its role
        self.started = time.monotonic()  # the time budget counts from here
        training = config.training
        runtime = config.runtime
        precision, device_line = prepare_runtime(runtime.mixed_precision, runtime.intra_op_threads,
                                                 runtime.inter_op_threads)
        print(device_line)
        try:
            # Multi-worker collectives must be set up before TensorFlow runs its first op.
            self.strategy = make_strategy(training.strategy)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        self.worker, self.num_workers, self.is_chief = worker_role(self.strategy)
        if self.num_workers > 1:
            if self.is_chief and not resume:
                start_fresh(self.run_dir, overwrite)
            self.run_dir = write_directory(self.source_dir, self.worker, self.is_chief)
            print(f"Worker {self.worker} of {self.num_workers}" + ("" if self.is_chief else
                                                                   f"; writes to {self.run_dir} (removed at the end)"))
        if precision.warning:
            print(f"warning: {precision.warning}", file=sys.stderr)
        self.config = config = replace(config, runtime=replace(runtime, mixed_precision=precision.policy))
        training = config.training
        self.device_line = device_line
        set_seeds(training.seed, training.deterministic)
        if not self.is_chief:
            barrier(self.strategy)  # the chief first makes the run directory, writes the split, fills the cache
            remove_write_directory(self.run_dir, self.source_dir)  # what this worker left when killed
        make_directory(self.run_dir)
        for path in remove_stale_temporaries(self.run_dir):
            print(f"Removed {path}, left by an interrupted write")
        split_path = self.source_dir / runs.SPLIT_FILE
        prepared = prepare_split(config, split_path if split_path.is_file() else None, progress=progress)
        if self.is_chief:
            if not split_path.is_file():
                write_bytes_atomically(split_path, prepared.split_file.read_bytes())
            self._save_config()
        self.train_records, self.validation_records = prepared.train, prepared.validation
        if not self.train_records or not self.validation_records:
            raise TrainingError(f"empty split: {len(self.train_records)} training and "
                                f"{len(self.validation_records)} validation patients")
        if self.is_chief and self.num_workers > 1:
            if config.data.use_cache:  # filled once, by the chief, before the others read it
                for split, records in (("train", self.train_records), ("validation", self.validation_records)):
                    source_dataset(config, records, progress, split)
            barrier(self.strategy)

        replicas = self.strategy.num_replicas_in_sync
        if training.batch_size % replicas:
            raise TrainingError(f"training.batch_size {training.batch_size} is not divisible by {replicas} replicas")
        self.anchor_set = build_anchor_set(config)
        with self.strategy.scope(), dtype_policy(config.runtime.mixed_precision):
            self.model = build_model(config)
            self.schedule = schedule_from_config(training)
            self.optimizer = build_optimizer(training, self.schedule, precision=config.runtime.mixed_precision)
            self.optimizer.build(self.model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.loss = build_loss(config, self.anchor_set)
        self.postprocessor = build_postprocessor(config, self.anchor_set)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.run_dir / runs.CHECKPOINTS,
                                                  max_to_keep=training.keep_checkpoints)
        if resume:
            latest = tf.train.latest_checkpoint(str(self.source_dir / runs.CHECKPOINTS))  # the chief's, on every worker
            if latest is None:
                raise TrainingError(f"--resume: no checkpoint in {self.source_dir / 'checkpoints'}")
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self._check_finite(f"resuming from {latest}")
            trim_log(self.run_dir, self.step, last_validated_step(self.run_dir))
            trim_events(self.run_dir / runs.TENSORBOARD, self.step, last_validated_step(self.run_dir))
            print(f"Resumed from {latest} at step {self.step}")
        # The data position is the step: the stream starts where the restored run stopped.
        self.train_dataset = self.strategy.distribute_datasets_from_function(self._training_input)
        self.validator = Validator(config, self.model, self.postprocessor, self.loss, self.validation_records,
                                   progress=progress, anchor_set=self.anchor_set) if self.is_chief else None
        # Made first: a directory that cannot be made is then a named error, not TensorFlow's OpError.
        tensorboard = self.run_dir / runs.TENSORBOARD
        self.writers = SummaryWriters(make_directory(tensorboard))  # "train" and "validation"
        log_run_start(tensorboard, config, self.run_dir.name)
        best_path = self.run_dir / runs.BEST_RECORD
        self.best_metric = _selection_metric(json.loads(best_path.read_text())) if best_path.is_file() else -math.inf
        if not resume:
            record_validated_step(self.run_dir, 0)  # from now on this record, not the log, tells

    def _training_input(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        """This worker's share of every global batch, in batches of one replica's share."""
        batch_size = context.get_per_replica_batch_size(self.config.training.batch_size)
        return build_dataset(self.config, "train", records=self.train_records, progress=self.progress,
                             start_step=self.step, worker=context.input_pipeline_id,
                             num_workers=context.num_input_pipelines, batch_size=batch_size,
                             anchor_set=self.anchor_set)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def _log(self, name: str, step: int, scalars: dict) -> None:
        with self.writers[name].as_default(step=step):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)
        elapsed = round(time.monotonic() - self.started, 1)  # since this process started: time to quality
        append_line(self.run_dir / runs.LOG, json.dumps({"split": name, "step": step, "elapsed_seconds": elapsed,
                                                         **{k: float(v) for k, v in scalars.items()}}))

    def _save_config(self) -> None:
        split_file = str((self.run_dir / runs.SPLIT_FILE).resolve())
        save_config(replace(self.config, data=replace(self.config.data, split_file=split_file)),
                    self.run_dir / runs.CONFIG_FILE)

    def _fit_to_budget(self, step_seconds: float) -> dict:
        """Time a checkpoint and a validation, shorten the run to `training.time_budget_minutes`,
        and save the fitted schedule with the run (its config and `budget.json`), so that
        `--resume` and evaluation see it. Returns the validation results."""
        training = self.config.training
        started = time.perf_counter()
        self._save_latest(validation_follows=True)
        checkpoint_seconds = time.perf_counter() - started
        self.validator.warm_up()  # tracing is a one-off: keep it out of the time per validation
        started = time.perf_counter()
        results = self.validate()
        timing = Timing(elapsed=time.monotonic() - self.started, step=step_seconds,
                        validation=time.perf_counter() - started, checkpoint=checkpoint_seconds)
        fitted = fit_schedule(training, self.step, timing, training.time_budget_minutes * 60)
        self.schedule.fit(fitted.steps, fitted.warmup_steps)
        self.config = replace(self.config, training=fitted)
        self._save_config()
        record = {"time_budget_minutes": training.time_budget_minutes, "configured_steps": training.steps,
                  "fitted_steps": fitted.steps, "warmup_steps": fitted.warmup_steps,
                  "validate_every": fitted.validate_every, "checkpoint_every": fitted.checkpoint_every,
                  "fitted_at_step": self.step, **{f"seconds_{key}": value for key, value in vars(timing).items()},
                  "device": self.device_line}
        write_json_atomically(self.run_dir / runs.BUDGET_FILE, record)
        print(f"Time budget {training.time_budget_minutes:g} min: {fitted.steps} of {training.steps} steps fit "
              f"({timing.step:.2f} s/step, {timing.validation:.1f} s per validation, {timing.checkpoint:.1f} s per "
              f"checkpoint, {timing.elapsed:.0f} s spent); warm-up {fitted.warmup_steps}, validation every "
              f"{fitted.validate_every}, checkpoint every {fitted.checkpoint_every} steps", flush=True)
        return results

    def _latest_good_checkpoint(self) -> str:
        latest = last_finite_checkpoint(self.manager.checkpoints)
        return f"the latest good checkpoint is {latest}" if latest else "no checkpoint with finite weights was written"

    def _check_finite(self, action: str) -> None:
        """TrainingError naming the latest good checkpoint if a weight or optimizer slot is NaN or infinite."""
        variables = [*self.model.weights, *self.optimizer.variables]
        bad = non_finite_variables(variables)
        if bad:
            raise TrainingError(f"non-finite weights at step {self.step} ({len(bad)} of {len(variables)} tensors, "
                                f"e.g. {bad[0]}), found before {action}; {self._latest_good_checkpoint()}. "
                                "Lower training.learning_rate or check the data, and start a new run.")

    def _save_latest(self, validation_follows: bool = False) -> None:
        """Write a checkpoint of finite weights. `validation_follows`: recorded first, so that a run
        killed before that validation completes runs it again when resumed from this checkpoint."""
        self._check_finite("writing a checkpoint")
        if validation_follows:
            record_validation_due(self.run_dir, self.step)
        save_checkpoint(self.manager, self.step)

    def _is_validation_step(self, step: int) -> bool:
        return step > 0 and (step % self.config.training.validate_every == 0 or step == self.config.training.steps)

    def validate(self) -> dict:
        """`_validate` on the moving average of the weights with `training.ema_decay` (on the weights otherwise)."""
        with averaged_weights(self.model, self.optimizer):
            return self._validate()

    def _validate(self) -> dict:
        """Validate, log, keep the best weights with their threshold (threshold.json), then record
        the step as validated (in this order, so that a run killed before the record re-runs this
        validation on resume). The chief alone validates: the other workers' results hold the step only."""
        step = self.step
        if not self.is_chief:
            return {"step": step, "scalars": {}, "overlays": []}
        try:
            results = {**self.validator.run(), "step": step}
        except NonFiniteOutputError as error:
            raise TrainingError(f"validation at step {step}: {error}: training has diverged. Lower "
                                "training.learning_rate or check the data, and start a new run.") from None
        self._log("validation", step, results["scalars"])
        with self.writers["validation"].as_default(step=step):
            tf.summary.image("predictions", np.stack(results["overlays"]) / 255.0, max_outputs=len(results["overlays"]))
        log_validation_details(self.writers["validation"], step, self.validator.records, results,
                               self.model if self.config.training.weight_histograms else None)
        metric = _selection_metric(results["scalars"])
        if metric > self.best_metric:
            self._check_finite(f"writing {runs.BEST_WEIGHTS}")
            self.best_metric = metric
            save_weights_atomically(self.model, self.run_dir / runs.BEST_WEIGHTS)
            # The threshold goes with the weights, before best.json: a run killed in between has
            # the old best.json, so this validation, re-run on resume, writes both again.
            write_validation_threshold(self.run_dir, step, results["scalars"])
            write_json_atomically(self.run_dir / runs.BEST_RECORD, {"step": step, **results["scalars"]})
        record_validated_step(self.run_dir, step)
        return results

    def fit(self) -> dict:
        training = self.config.training
        train_step = build_train_step(self.config, self.strategy, self.model, self.optimizer, self.loss)
        iterator = iter(self.train_dataset)
        steps_per_epoch = max(1, len(self.train_records) // training.batch_size)
        start = self.step
        # The first step traces the graph: the budget is fitted on the steps after it.
        calibration_end = start + 1 + CALIBRATION_STEPS
        if not training.time_budget_minutes or calibration_end >= training.steps:
            calibration_end = None
        bar = tqdm(total=training.steps, initial=start, desc="training", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        window_start, window_images = time.perf_counter(), 0
        step_ends: list[float] = []  # when each step up to calibration_end finished
        results = None
        if validation_due_step(self.run_dir) == start and last_validated_step(self.run_dir) < start:
            results = self.validate()  # the run was stopped during the validation of its checkpoint
        while self.step < self.config.training.steps:
            training = self.config.training
            scalars = train_step(next(iterator))
            step = self.step
            window_images += training.batch_size
            total = float(scalars["loss/total"])  # waits for the step
            if calibration_end is not None and step <= calibration_end:
                step_ends.append(time.perf_counter())
            if not math.isfinite(total):
                raise TrainingError(f"non-finite loss ({total}) at step {step}; {self._latest_good_checkpoint()}. "
                                    "Lower training.learning_rate or check the data, and start a new run.")
            if step % steps_per_epoch == 0:
                self.epoch.assign_add(1)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}", cls=f"{float(scalars['loss/classification']):.3f}",
                            box=f"{float(scalars['loss/box']):.3f}")
            if step % training.log_every == 0 or step == training.steps:
                elapsed = time.perf_counter() - window_start
                scalars = {**{k: float(v) for k, v in scalars.items()},
                           "learning_rate": float(self.optimizer.learning_rate),
                           "images_per_second": window_images / max(elapsed, 1e-9), "epoch": int(self.epoch.numpy())}
                self._log("train", step, scalars)
                window_start, window_images = time.perf_counter(), 0
            if step == calibration_end:
                bar.clear()
                # The median step: the first steps after tracing include stalls (cold caches, the
                # input pipeline filling) that would make the budget fit too few steps.
                step_seconds = statistics.median(np.diff(step_ends[-CALIBRATION_STEPS - 1:]))
                results = self._fit_to_budget(step_seconds * CALIBRATION_MARGIN)
                bar.write(_validation_line(step, results))
                bar.total = self.config.training.steps
                bar.refresh()
                continue
            # Validation steps are checkpointed too: a resumed run never replays a validation.
            if step % training.checkpoint_every == 0 or self._is_validation_step(step):
                self._save_latest(validation_follows=self._is_validation_step(step))
            if self._is_validation_step(step):
                bar.clear()
                results = self.validate()
                bar.write(_validation_line(step, results))
        bar.close()
        with averaged_weights(self.model, self.optimizer):
            save_weights_atomically(self.model, self.run_dir / runs.FINAL_WEIGHTS)
            if not self.is_chief:
                return {"step": self.step, "scalars": {}, "overlays": []}
            if results is None:  # resumed a finished run: its last validation is already recorded
                results = {**self.validator.run(), "step": self.step}
        save_rgb(self.run_dir / runs.VALIDATION_PICTURE,
                 validation_picture(self.validator.records, results, len(results["overlays"]),
                                    memory_limit_mib=self.config.data.decode_memory_mib))
        self.writers.flush()
        return results


def _validation_line(step: int, results: dict) -> str:
    return f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in results["scalars"].items())


def train(config: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict:
    """Train (or resume) a run; returns the last validation results (no scalars on a worker other than the chief)."""
    trainer = Trainer(config, run_dir, resume=resume, overwrite=overwrite, progress=progress)
    try:
        return trainer.fit()
    finally:
        remove_write_directory(trainer.run_dir, trainer.source_dir)


def stopped_before_first_checkpoint(run_dir: Path) -> str:
    """What to say when `--resume` finds a run that never wrote a checkpoint: there is nothing to
    continue, but its config and split are there to start it again from step 0."""
    return (f"--resume: the run in {run_dir} was stopped before its first checkpoint (none in "
            f"{run_dir / runs.CHECKPOINTS}), so there is nothing to resume; start it again from step 0 with: "
            f"retinanet train --config {run_dir / runs.CONFIG_FILE} --run-dir {run_dir} --overwrite")


def start_fresh(run_dir: Path, overwrite: bool) -> None:
    """A new run needs a directory without an earlier run in it, or `overwrite` to delete that run."""
    found = run_entries(run_dir)
    if found and not overwrite:
        raise TrainingError(f"{run_dir} already holds a run ({', '.join(found)}); continue it with --resume, "
                            "choose another --run-dir, or start it afresh with --overwrite")
    if found:
        remove_run(run_dir)
        print(f"Removed the earlier run in {run_dir} ({', '.join(found)})")


def split_records_of_run(run_dir: str | Path) -> tuple[Config, list[Record]]:
    """A run's config and its held-out records, from the split file saved with it."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / runs.CONFIG_FILE)
    prepared = prepare_split(config, run_dir / runs.SPLIT_FILE, progress=False)
    return config, prepared.validation
