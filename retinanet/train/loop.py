"""The training loop, the recipe's fifth phase (`retinanet.train.trainer`): steps, logs,
checkpoints, validation and the best weights.

`best.weights.h5` and `final.weights.h5` hold the moving average of the weights with
`training.ema_decay`, which validation judges. Every validation step is also a checkpoint step, so
a resumed run never replays a validation (`retinanet.train.run_state`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import replace

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from retinanet.builders import build_training_dataset
from retinanet.run_directory import (BEST_RECORD, BEST_WEIGHTS, BUDGET_FILE, FINAL_WEIGHTS, LOG, TENSORBOARD,
                                     VALIDATION_PICTURE)
from retinanet.runtime.safe_writes import (append_line, make_directory, save_checkpoint, save_weights_atomically,
                                           write_json_atomically)
from retinanet.train.budget import CALIBRATION_MARGIN, CALIBRATION_STEPS, Timing, fit_schedule
from retinanet.train.ema import averaged_weights
from retinanet.train.parts import (DIVERGED, Inputs, Run, Task, TrainingError, check_finite, latest_good_checkpoint,
                                   save_run_config)
from retinanet.train.run_state import (last_validated_step, record_validated_step, record_validation_due,
                                       validation_due_step, write_validation_threshold)
from retinanet.train.step import build_train_step
from retinanet.train.tensorboard_logging import SummaryWriters, log_run_start, log_validation_details
from retinanet.train.validation import NonFiniteOutputError, validation_picture
from retinanet.visualize import save_rgb

def selection_metric(scalars: dict) -> float:
    """What picks the best weights: the RSNA metric at the score threshold that is best on
    validation (the one evaluation then chooses). It is NaN when no image is scored (no
    positives, no boxes): rank that lowest."""
    metric = scalars.get("best_rsna_metric", scalars["rsna_metric"])
    return metric if math.isfinite(metric) else -1.0


class Trainer:
    """The loop over one run's steps: `fit()` trains to `training.steps` (fitted to the time budget
    on the way), checkpointing and validating as the config says; see the module docstring."""

    def __init__(self, run: Run, inputs: Inputs, task: Task, progress: bool = True):
        self.run, self.inputs, self.task, self.progress = run, inputs, task, progress
        self.config = run.config  # the time budget shortens its training section
        tensorboard = make_directory(run.write_dir / TENSORBOARD)  # a directory that cannot be made: a named error
        self.writers = SummaryWriters(tensorboard)  # "train" and "validation"
        log_run_start(tensorboard, self.config, run.write_dir.name)
        best_path = run.write_dir / BEST_RECORD
        self.best_metric = selection_metric(json.loads(best_path.read_text())) if best_path.is_file() else -math.inf
        if not run.resume:
            record_validated_step(run.write_dir, 0)  # from now on this record, not the log, tells

    @property
    def step(self) -> int:
        return int(self.task.optimizer.iterations.numpy())

    # --- The loop ---------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train from the current step to `training.steps`; returns the last validation's results."""
        train_step = build_train_step(self.config, self.run.strategy, self.task.model, self.task.optimizer,
                                      self.task.loss)
        batches = iter(self.run.strategy.distribute_datasets_from_function(self._training_input))
        self.window = (time.perf_counter(), 0)  # when the logged window began, and its images
        self.calibration = Calibration.starting_at(self.step, self.config.training)
        bar = tqdm(total=self.config.training.steps, initial=self.step, desc="training", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        results = None
        if validation_due_step(self.run.write_dir) == self.step and last_validated_step(self.run.write_dir) < self.step:
            results = self.validate()  # the run was stopped during the validation of its checkpoint
        while self.step < self.config.training.steps:
            results = self._after_step(train_step(next(batches)), bar) or results
        bar.close()
        return self._finish(results)

    def _training_input(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        """This worker's share of every global batch from the current step on (the data position is
        the step), in batches of one replica's share."""
        batch_size = context.get_per_replica_batch_size(self.config.training.batch_size)
        return build_training_dataset(self.config, self.inputs.train_source, self.inputs.anchor_set,
                                      start_step=self.step, worker=context.input_pipeline_id,
                                      num_workers=context.num_input_pipelines, batch_size=batch_size)

    def _after_step(self, scalars: dict, bar: tqdm) -> dict | None:
        """Check, count, log; then fit the budget, checkpoint or validate where due. Returns the
        results of a validation run here, else None."""
        step, training = self.step, self.config.training
        total = float(scalars["loss/total"])  # waits for the step
        self.calibration.record(step)
        if not math.isfinite(total):
            raise TrainingError(f"non-finite loss ({total}) at step {step}; {latest_good_checkpoint(self.task)}. "
                                f"{DIVERGED}")
        if step % max(1, len(self.inputs.train_records) // training.batch_size) == 0:
            self.task.epoch.assign_add(1)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}", cls=f"{float(scalars['loss/classification']):.3f}",
                        box=f"{float(scalars['loss/box']):.3f}")
        self._log_step(step, scalars)
        if step == self.calibration.end:
            return self._write_below(bar, step, self._fit_to_budget(self.calibration.step_seconds()),
                                     total=self.config.training.steps)
        validation_step = self._is_validation_step(step)
        if step % training.checkpoint_every == 0 or validation_step:  # a resumed run never replays a validation
            self._save_latest(validation_follows=validation_step)
        return self._write_below(bar, step, self.validate()) if validation_step else None

    def _log_step(self, step: int, scalars: dict) -> None:
        """The step's scalars, the learning rate and the images per second since the last log, every log_every steps."""
        window_start, window_images = self.window
        window_images += self.config.training.batch_size
        self.window = (window_start, window_images)
        if step % self.config.training.log_every and step != self.config.training.steps:
            return
        elapsed = time.perf_counter() - window_start
        self._log("train", step, {**{key: float(value) for key, value in scalars.items()},
                                  "learning_rate": float(self.task.optimizer.learning_rate),
                                  "images_per_second": window_images / max(elapsed, 1e-9),
                                  "epoch": int(self.task.epoch.numpy())})
        self.window = (time.perf_counter(), 0)

    @staticmethod
    def _write_below(bar: tqdm, step: int, results: dict, total: int | None = None) -> dict:
        bar.clear()
        bar.write(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in results["scalars"].items()))
        if total is not None:
            bar.total = total
            bar.refresh()
        return results

    def _finish(self, results: dict | None) -> dict:
        """The final weights; on the chief, the last validation's picture."""
        with averaged_weights(self.task.model, self.task.optimizer):
            save_weights_atomically(self.task.model, self.run.write_dir / FINAL_WEIGHTS)
            if not self.run.is_chief:
                return {"step": self.step, "scalars": {}, "overlays": []}
            if results is None:  # resumed a finished run: its last validation is already recorded
                results = {**self.task.validator.run(), "step": self.step}
        save_rgb(self.run.write_dir / VALIDATION_PICTURE,
                 validation_picture(self.task.validator.records, results, len(results["overlays"]),
                                    memory_limit_mib=self.config.data.decode_memory_mib))
        self.writers.flush()
        return results

    # --- Logs, checkpoints, the budget --------------------------------------------------------------

    def _log(self, name: str, step: int, scalars: dict) -> None:
        with self.writers[name].as_default(step=step):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)
        elapsed = round(time.monotonic() - self.run.started, 1)  # since the budget began: time to quality
        append_line(self.run.write_dir / LOG, json.dumps({"split": name, "step": step, "elapsed_seconds": elapsed,
                                                          **{k: float(v) for k, v in scalars.items()}}))

    def _save_latest(self, validation_follows: bool = False) -> None:
        """Write a checkpoint of finite weights. `validation_follows`: recorded first, so that a run
        killed before that validation completes runs it again when resumed from this checkpoint."""
        check_finite(self.task, "writing a checkpoint")
        if validation_follows:
            record_validation_due(self.run.write_dir, self.step)
        save_checkpoint(self.task.manager, self.step)

    def _is_validation_step(self, step: int) -> bool:
        return step > 0 and (step % self.config.training.validate_every == 0 or step == self.config.training.steps)

    def _fit_to_budget(self, step_seconds: float) -> dict:
        """Time a checkpoint and a validation, shorten the run to `training.time_budget_minutes`,
        and save the fitted schedule with the run (its config and `budget.json`), so that
        `--resume` and evaluation see it. Returns the validation results."""
        training = self.config.training
        started = time.perf_counter()
        self._save_latest(validation_follows=True)
        checkpoint_seconds = time.perf_counter() - started
        self.task.validator.warm_up()  # tracing is a one-off: keep it out of the time per validation
        started = time.perf_counter()
        results = self.validate()
        timing = Timing(elapsed=time.monotonic() - self.run.started, step=step_seconds,
                        validation=time.perf_counter() - started, checkpoint=checkpoint_seconds)
        fitted = fit_schedule(training, self.step, timing, training.time_budget_minutes * 60)
        self.task.schedule.fit(fitted.steps, fitted.warmup_steps)
        self.config = replace(self.config, training=fitted)
        save_run_config(self.config, self.run.write_dir)
        record = {"time_budget_minutes": training.time_budget_minutes, "configured_steps": training.steps,
                  "fitted_steps": fitted.steps, "warmup_steps": fitted.warmup_steps,
                  "validate_every": fitted.validate_every, "checkpoint_every": fitted.checkpoint_every,
                  "fitted_at_step": self.step, **{f"seconds_{key}": value for key, value in vars(timing).items()},
                  "device": self.run.device_line}
        write_json_atomically(self.run.write_dir / BUDGET_FILE, record)
        print(f"Time budget {training.time_budget_minutes:g} min: {fitted.steps} of {training.steps} steps fit "
              f"({timing.step:.2f} s/step, {timing.validation:.1f} s per validation, {timing.checkpoint:.1f} s per "
              f"checkpoint, {timing.elapsed:.0f} s spent); warm-up {fitted.warmup_steps}, validation every "
              f"{fitted.validate_every}, checkpoint every {fitted.checkpoint_every} steps", flush=True)
        return results

    # --- Validation ---------------------------------------------------------------------------------

    def validate(self) -> dict:
        """`_validate` on the moving average of the weights with `training.ema_decay` (on the weights otherwise)."""
        with averaged_weights(self.task.model, self.task.optimizer):
            return self._validate()

    def _validate(self) -> dict:
        """Validate, log, keep the best weights with their threshold (threshold.json), then record
        the step as validated (in this order, so that a run killed before the record re-runs this
        validation on resume). The chief alone validates: the other workers' results hold the step only."""
        step = self.step
        if not self.run.is_chief:
            return {"step": step, "scalars": {}, "overlays": []}
        try:
            results = {**self.task.validator.run(), "step": step}
        except NonFiniteOutputError as error:
            raise TrainingError(f"validation at step {step}: {error}: training has diverged. {DIVERGED}") from None
        self._log("validation", step, results["scalars"])
        with self.writers["validation"].as_default(step=step):
            tf.summary.image("predictions", np.stack(results["overlays"]) / 255.0, max_outputs=len(results["overlays"]))
        log_validation_details(self.writers["validation"], step, self.task.validator.records, results,
                               self.task.model if self.config.training.weight_histograms else None)
        metric = selection_metric(results["scalars"])
        if metric > self.best_metric:
            check_finite(self.task, f"writing {BEST_WEIGHTS}")
            self.best_metric = metric
            save_weights_atomically(self.task.model, self.run.write_dir / BEST_WEIGHTS)
            # The threshold goes with the weights, before best.json: a run killed in between has
            # the old best.json, so this validation, re-run on resume, writes both again.
            write_validation_threshold(self.run.write_dir, step, results["scalars"])
            write_json_atomically(self.run.write_dir / BEST_RECORD, {"step": step, **results["scalars"]})
        record_validated_step(self.run.write_dir, step)
        return results


class Calibration:
    """The steps the time budget is fitted on: the `CALIBRATION_STEPS` after the first (which traces
    the graph) of a run with `training.time_budget_minutes`; `end` is None without a budget."""

    def __init__(self, end: int | None):
        self.end = end
        self.step_ends: list[float] = []  # when each step up to `end` finished

    @classmethod
    def starting_at(cls, step: int, training) -> "Calibration":
        end = step + 1 + CALIBRATION_STEPS
        return cls(end if training.time_budget_minutes and end < training.steps else None)

    def record(self, step: int) -> None:
        if self.end is not None and step <= self.end:
            self.step_ends.append(time.perf_counter())

    def step_seconds(self) -> float:
        """The median step, with the budget's margin: the first steps after tracing include stalls
        (cold caches, the input pipeline filling) that would make the budget fit too few steps."""
        return statistics.median(np.diff(self.step_ends[-CALIBRATION_STEPS - 1:])) * CALIBRATION_MARGIN
