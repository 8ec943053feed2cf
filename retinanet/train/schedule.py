"""The learning-rate schedule: linear warm-up, then cosine, step or constant decay."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then cosine, step or constant decay; a pure function of the step.

    The lengths are variables, so that `fit` can shorten a run (`training.time_budget_minutes`)
    without tracing the training step again.

    Args:
        base: the learning rate after the warm-up.
        total_steps: the steps of the run; the decay ends there.
        warmup_steps: steps of the linear warm-up from 0 to `base`.
        kind: "cosine", "step" or "constant".
        boundaries: "step": the fractions of `total_steps` at which the rate is multiplied by `factor`
            (none by default).
        factor: "step": the multiplier at each boundary (1: none).
    """

    def __init__(self, base: float, total_steps: int, warmup_steps: int, kind: str, *,
                 boundaries: tuple[float, ...] = (), factor: float = 1.0):
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
