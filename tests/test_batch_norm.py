"""The fused batch normalisation against Keras' own layer: outputs, moving statistics, gradients,
mixed precision and weight files."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import needs_bf16_kernels
from retinanet.runtime.hardware import dtype_policy
from retinanet.model import batch_norm
from retinanet.model.backbone import build_backbone


def conv_bn(seed: int = 0) -> keras.Model:
    inputs = keras.Input((12, 10, 3))
    features = keras.layers.Conv2D(8, 3, padding="same", name="conv",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    normalised = keras.layers.BatchNormalization(momentum=0.9, epsilon=1.001e-5, name="bn")(features)
    return keras.Model(inputs, keras.layers.ReLU()(normalised))


def randomise_statistics(model: keras.Model) -> None:
    rng = np.random.default_rng(3)
    layer = model.get_layer("bn")
    layer.set_weights([rng.uniform(0.5, 2.0, 8), rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 2.0, 8)])


@pytest.fixture
def pair():
    reference = conv_bn()
    randomise_statistics(reference)
    return reference, batch_norm.fuse_batch_norms(reference)


def test_fused_copy_has_fused_layers_with_the_same_names_and_weights(pair):
    reference, fused = pair
    assert type(fused.get_layer("bn")) is batch_norm.BatchNormalization
    assert type(reference.get_layer("bn")) is keras.layers.BatchNormalization
    for expected, actual in zip(reference.get_layer("bn").get_weights(), fused.get_layer("bn").get_weights()):
        np.testing.assert_array_equal(expected, actual)


@pytest.mark.parametrize("training", [False, True])
def test_outputs_statistics_and_gradients_match_keras(pair, training):
    reference, fused = pair
    before = [value.numpy() for value in reference.get_layer("bn").non_trainable_weights]
    images = tf.constant(np.random.default_rng(0).normal(1.0, 2.0, (4, 12, 10, 3)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        expected = reference(images, training=training)
        actual = fused(images, training=training)
        weights = tf.linspace(0.0, 1.0, tf.size(expected))
        expected_loss, actual_loss = (tf.reduce_sum(tf.reshape(output, [-1]) * weights)
                                      for output in (expected, actual))
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    # Moving statistics move (in training only) with the biased batch variance, as in Keras.
    for old, expected_value, actual_value in zip(before, reference.get_layer("bn").non_trainable_weights,
                                                 fused.get_layer("bn").non_trainable_weights):
        assert np.allclose(old, expected_value.numpy()) != training
        np.testing.assert_allclose(actual_value.numpy(), expected_value.numpy(), rtol=1e-5, atol=1e-6)
    expected_gradients = tape.gradient(expected_loss, reference.trainable_variables)
    actual_gradients = tape.gradient(actual_loss, fused.trainable_variables)
    for expected_gradient, actual_gradient, variable in zip(expected_gradients, actual_gradients,
                                                            reference.trainable_variables):
        if variable.path == "conv/bias" and training:
            continue  # a bias before batch norm has a zero gradient: both are rounding noise
        scale = np.abs(expected_gradient.numpy()).max()
        np.testing.assert_allclose(actual_gradient.numpy(), expected_gradient.numpy(), atol=1e-4 * scale)


@needs_bf16_kernels
def test_bfloat16_activations_keep_float32_statistics_and_match_float32():
    reference = conv_bn()
    randomise_statistics(reference)
    with dtype_policy("mixed_bfloat16"):
        mixed = batch_norm.fuse_batch_norms(conv_bn())
    mixed.set_weights(reference.get_weights())
    images = np.random.default_rng(1).normal(size=(4, 12, 10, 3)).astype(np.float32)
    layer = mixed.get_layer("bn")
    assert layer.compute_dtype == "bfloat16" and layer.moving_mean.dtype == "float32"
    for training in (False, True):
        output = mixed(images, training=training)
        assert output.dtype == tf.bfloat16
        np.testing.assert_allclose(tf.cast(output, tf.float32).numpy(), reference(images, training=training).numpy(),
                                   rtol=0.05, atol=0.05)


def test_weight_files_load_both_ways(pair, tmp_path):
    reference, fused = pair
    reference.save_weights(tmp_path / "keras.weights.h5")
    fresh_fused = batch_norm.fuse_batch_norms(conv_bn(seed=7))
    fresh_fused.load_weights(tmp_path / "keras.weights.h5")
    images = np.random.default_rng(2).normal(size=(2, 12, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(fresh_fused(images).numpy(), reference(images).numpy(), rtol=1e-5, atol=1e-5)
    fused.save_weights(tmp_path / "fused.weights.h5")
    fresh_keras = conv_bn(seed=7)
    fresh_keras.load_weights(tmp_path / "fused.weights.h5")
    np.testing.assert_allclose(fresh_keras(images).numpy(), reference(images).numpy(), rtol=1e-5, atol=1e-5)


def test_other_shapes_fall_back_to_keras():
    layer = batch_norm.BatchNormalization()
    values = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
    expected = keras.layers.BatchNormalization()
    np.testing.assert_allclose(layer(values, training=True).numpy(), expected(values, training=True).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_the_backbone_normalises_with_the_fused_layer():
    backbone = build_backbone((64, 64, 3))
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53 and all(type(layer) is batch_norm.BatchNormalization for layer in norms)
