"""Exponential moving average (EMA) of the weights, for validation and the saved weights.

`training.ema_decay > 0` turns on the Keras optimizer's own EMA (`use_ema`, `ema_momentum`):
after every update `average = decay * average + (1 - decay) * weight`, starting from the
weights after the first step. The averages are optimizer variables, so every checkpoint holds
them and `--resume` continues them exactly. Keras averages the trainable weights only:
BatchNorm's moving statistics stay those of the live weights.

Training always steps the live weights; `averaged_weights` swaps the averages in for as long
as validation runs or weights are saved, and the live weights back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager

import keras


def base_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that holds the averages (inside a LossScaleOptimizer for float16)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def uses_ema(optimizer: keras.optimizers.Optimizer) -> bool:
    return bool(base_optimizer(optimizer).use_ema)


@contextmanager
def averaged_weights(model: keras.Model, optimizer: keras.optimizers.Optimizer):
    """Inside: the model's trainable weights are the optimizer's moving averages (nothing changes
    without EMA). `optimizer` must have been built on `model.trainable_variables`, in that order."""
    inner = base_optimizer(optimizer)
    if not inner.use_ema:
        yield
        return
    variables = model.trainable_variables
    live = [variable.numpy() for variable in variables]
    inner.finalize_variable_values(variables)  # Keras' public "overwrite with the averages"
    try:
        yield
    finally:
        for variable, value in zip(variables, live):
            variable.assign(value)
