"""Fit a run to a wall-clock budget (`training.time_budget_minutes`).

The trainer times its first steps, one checkpoint and one validation, then asks
`fit_schedule` for the longest run (at most the configured `steps`) that ends within the
budget. The whole schedule is compressed by the same ratio, so a fitted run keeps the shape of
the configured one: its warm-up, learning-rate decay, validations and checkpoints fall at the
same fractions of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from retinanet.config import TrainingConfig

CALIBRATION_STEPS = 10  # timed steps, after the first one (which traces the graph)
# The budget plans with the calibration steps' median times this: later steps ran up to 11 %
# slower than that median on a 2-core Zen 4 (the page cache, Python's collector, the validations'
# aftermath), and a run must end within its budget.
CALIBRATION_MARGIN = 1.1


@dataclass(frozen=True)
class Timing:
    """Seconds measured so far: since the command started, and per step, validation, checkpoint."""

    elapsed: float
    step: float
    validation: float
    checkpoint: float


def events_between(done: int, total: int, every: int) -> int:
    """Steps in (done, total] at which an every-`every`-steps event fires; the last step always does."""
    if total <= done:
        return 0
    return total // every - done // every + (1 if total % every else 0)


def compress(training: TrainingConfig, steps: int) -> TrainingConfig:
    """`training` shortened to `steps`, warm-up and intervals scaled by the same ratio."""
    ratio = steps / training.steps
    return replace(training, steps=steps, warmup_steps=min(steps - 1, round(training.warmup_steps * ratio)),
                   validate_every=max(1, round(training.validate_every * ratio)),
                   checkpoint_every=max(1, round(training.checkpoint_every * ratio)), time_budget_minutes=0.0)


def remaining_cost(training: TrainingConfig, done: int, timing: Timing) -> float:
    """Seconds from step `done` to the end of `training`."""
    return ((training.steps - done) * timing.step
            + events_between(done, training.steps, training.validate_every) * timing.validation
            + events_between(done, training.steps, training.checkpoint_every) * timing.checkpoint)


def fit_schedule(training: TrainingConfig, done: int, timing: Timing, budget_seconds: float) -> TrainingConfig:
    """The longest compression of `training` that ends within `budget_seconds`; at least one step
    more than `done` even when the budget is already spent. `time_budget_minutes` becomes 0, so
    that the fitted config, saved with the run, is final."""
    for steps in range(training.steps, done, -1):
        fitted = compress(training, steps)
        if timing.elapsed + remaining_cost(fitted, done, timing) <= budget_seconds:
            return fitted
    return compress(training, done + 1)
