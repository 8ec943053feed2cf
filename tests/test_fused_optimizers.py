"""The fused optimizers against Keras' own: the same weights and slots, step by step, and the same checkpoints."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinanet.train.optimizers import FusedAdamW, FusedSGD

SHAPES = [(3, 3, 4, 8), (8,), (257,)]
PAIRS = [(keras.optimizers.AdamW, FusedAdamW, {}),
         (keras.optimizers.AdamW, FusedAdamW, {"amsgrad": True}),
         (keras.optimizers.AdamW, FusedAdamW, {"beta_1": 0.8, "epsilon": 1e-3}),
         (keras.optimizers.SGD, FusedSGD, {"momentum": 0.9}),
         (keras.optimizers.SGD, FusedSGD, {"momentum": 0.9, "nesterov": True}),
         (keras.optimizers.SGD, FusedSGD, {"momentum": 0.0})]
FUSED_KERNEL = {FusedAdamW: "ResourceApplyAdam", FusedSGD: "ResourceApplyKerasMomentum"}


def schedule(steps: int):
    return keras.optimizers.schedules.PolynomialDecay(1e-2, steps, 1e-3)


def train(optimizer_class, steps: int = 6, **options):
    """Weights and optimizer after `steps` updates from fixed weights and gradients (weight
    decay on, the second weight excluded from it as a bias would be)."""
    rng = np.random.default_rng(0)
    weights = [keras.Variable(rng.normal(size=shape).astype("float32"), name=f"w{i}") for i, shape in enumerate(SHAPES)]
    optimizer = optimizer_class(schedule(steps), weight_decay=0.05, **options)
    optimizer.exclude_from_weight_decay(var_names=["w1"])

    @tf.function
    def step(gradients):
        optimizer.apply_gradients(zip(gradients, weights))

    for _ in range(steps):
        step([tf.constant(rng.normal(size=shape).astype("float32")) for shape in SHAPES])
    return weights, optimizer


@pytest.mark.parametrize("keras_class, fused_class, options", PAIRS)
def test_same_weights_and_slots_as_keras(keras_class, fused_class, options):
    expected_weights, expected = train(keras_class, **options)
    weights, fused = train(fused_class, **options)
    for want, got in zip(expected_weights, weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert len(fused.variables) == len(expected.variables)
    for want, got in zip(expected.variables, fused.variables):
        assert got.path.split("/")[1:] == want.path.split("/")[1:]  # adam_w/w0_momentum, fused_adam_w/w0_momentum
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fused_class, options", [(FusedAdamW, {}), (FusedSGD, {"momentum": 0.9})])
def test_the_update_is_one_fused_kernel_per_weight(fused_class, options):
    weights = [keras.Variable(np.ones(shape, "float32")) for shape in SHAPES]
    optimizer = fused_class(1e-3, weight_decay=0.05, **options)
    step = tf.function(lambda gradients: optimizer.apply_gradients(zip(gradients, weights)))
    graph = step.get_concrete_function([tf.TensorSpec(shape) for shape in SHAPES]).graph
    graphs = [graph, *(function.graph for function in graph._functions.values() if hasattr(function, "graph"))]
    operations = [operation.type for each in graphs for operation in each.get_operations()]
    assert operations.count(FUSED_KERNEL[fused_class]) == len(weights)


@pytest.mark.parametrize("keras_class, fused_class, options", [PAIRS[0], PAIRS[3]])
def test_a_checkpoint_of_the_keras_optimizer_restores_into_the_fused_one(keras_class, fused_class, options, tmp_path):
    weights, keras_optimizer = train(keras_class, steps=3, **options)
    path = tf.train.Checkpoint(optimizer=keras_optimizer, weights=weights).save(str(tmp_path / "ckpt"))
    rng = np.random.default_rng(1)
    fresh = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    fused = fused_class(schedule(3), weight_decay=0.05, **options)
    fused.build(fresh)
    tf.train.Checkpoint(optimizer=fused, weights=fresh).restore(path).assert_existing_objects_matched()
    for want, got in zip([*keras_optimizer.variables, *weights], [*fused.variables, *fresh]):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
