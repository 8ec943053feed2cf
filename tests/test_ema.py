"""Tests for the moving average of the weights (`training.ema_decay`, retinanet/train/ema.py): the
average against a hand computation, validation and saved weights on it, and `--resume` keeping it."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config
from retinanet.config import TrainingConfig, config_from_dict
from retinanet.train.ema import averaged_weights, base_optimizer, uses_ema
from retinanet.builders import build_optimizer
from retinanet.train.trainer import build_trainer


def one_weight_model() -> keras.Model:
    return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])


def constant_sgd_config(**values) -> TrainingConfig:
    return TrainingConfig(optimizer="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0, warmup_steps=0,
                          schedule="constant", **values)


def sgd_steps(model, optimizer, steps: int) -> None:
    """`steps` plain SGD steps with gradient 1: the weight goes 1, 0.9, 0.8, ..."""
    optimizer.build(model.trainable_variables)
    for _ in range(steps):
        optimizer.apply_gradients([(tf.ones_like(model.trainable_variables[0]), model.trainable_variables[0])])


def test_moving_average_matches_a_hand_computation():
    model = one_weight_model()
    optimizer = build_optimizer(constant_sgd_config(ema_decay=0.9))
    assert uses_ema(optimizer) and optimizer.ema_momentum == 0.9
    sgd_steps(model, optimizer, 3)
    # Weights after each step 0.9, 0.8, 0.7; the average starts at the first: 0.9,
    # then 0.9 * 0.9 + 0.1 * 0.8 = 0.89, then 0.9 * 0.89 + 0.1 * 0.7 = 0.871.
    assert float(model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(0.7)
    with averaged_weights(model, optimizer):
        assert float(model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(0.871)
        assert float(model(np.ones((1, 1), np.float32))[0, 0]) == pytest.approx(0.871)
    assert float(model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(0.7)  # the live weight is back


def test_live_weights_come_back_after_an_error_inside():
    model = one_weight_model()
    optimizer = build_optimizer(constant_sgd_config(ema_decay=0.5))
    sgd_steps(model, optimizer, 2)
    with pytest.raises(RuntimeError), averaged_weights(model, optimizer):
        raise RuntimeError("validation failed")
    assert float(model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(0.8)


def test_without_ema_nothing_is_swapped_and_float16_wraps_the_averaging_optimizer():
    model = one_weight_model()
    optimizer = build_optimizer(constant_sgd_config())
    assert not uses_ema(optimizer)
    sgd_steps(model, optimizer, 2)
    with averaged_weights(model, optimizer):
        assert float(model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(0.8)
    scaled = build_optimizer(constant_sgd_config(ema_decay=0.99), precision="mixed_float16")
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer) and uses_ema(scaled)
    assert base_optimizer(scaled).ema_momentum == 0.99


def test_ema_decay_is_checked():
    from retinanet.config import ConfigError

    assert TrainingConfig().ema_decay == 0.0  # off by default
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="training.ema_decay"):
            config_from_dict({"training": {"ema_decay": bad}})


# --- in a run ---------------------------------------------------------------------------------

def ema_config(root, cache):
    return tiny_config(root, cache, training={"steps": 4, "validate_every": 2, "learning_rate": 1e-3,
                                              "ema_decay": 0.5})


def values(variables) -> list[np.ndarray]:
    return [np.array(variable.numpy()) for variable in variables]


def assert_all_close(first, second) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_a_run_validates_and_saves_the_averages_and_resume_keeps_them(small_rsna, tmp_path):
    config, run_dir = ema_config(small_rsna, tmp_path / "cache"), tmp_path / "run"
    trainer = build_trainer(config, run_dir, progress=False)
    averages = base_optimizer(trainer.task.optimizer)._model_variables_moving_average
    seen = []
    original_run = trainer.task.validator.run

    def recording_run():
        seen.append((values(trainer.task.model.trainable_variables), values(averages)))
        return original_run()

    trainer.task.validator.run = recording_run
    trainer.fit()
    assert len(seen) == 2  # steps 2 and 4
    for model_weights, average_weights in seen:
        assert_all_close(model_weights, average_weights)
    live = values(trainer.task.model.trainable_variables)
    final_averages = values(averages)
    assert max(np.abs(a - b).max() for a, b in zip(live, final_averages)) > 1e-6  # the two really differ
    saved = keras.models.clone_model(trainer.task.model)
    saved.load_weights(run_dir / "final.weights.h5")
    assert_all_close(values(saved.trainable_variables), final_averages)
    best_step = json.loads((run_dir / "best.json").read_text())["step"]
    saved.load_weights(run_dir / "best.weights.h5")
    assert_all_close(values(saved.trainable_variables), seen[best_step // 2 - 1][1])

    resumed = build_trainer(config, run_dir, resume=True, progress=False)
    assert resumed.step == 4
    assert_all_close(values(base_optimizer(resumed.task.optimizer)._model_variables_moving_average), final_averages)
    assert_all_close(values(resumed.task.model.trainable_variables), live)
