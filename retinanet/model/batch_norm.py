"""Batch normalisation on TensorFlow's fused kernel, a drop-in for Keras 3's layer.

Keras 3 normalises with separate element-wise ops (moments, then the affine transform) and,
under mixed precision, casts every activation to float32 and back. TensorFlow's
`FusedBatchNormV3` does the same maths in one kernel (oneDNN's on x86, cuDNN's on GPUs) and
takes bfloat16/float16 activations with float32 statistics directly: on a 2-core CPU it makes
a 512 px ResNet50-FPN training step 1.3-1.6x faster (`benchmarks/train_step.py`).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="retinanet")
class BatchNormalization(keras.layers.BatchNormalization):
    """Same variables, arguments and results as `keras.layers.BatchNormalization`, and the same
    class name, because Keras names a layer's entries in `.weights.h5` files after its class:
    weights saved with either layer load into the other.

    The fused kernel serves 4-D channels-last inputs without mask or renorm; anything else
    falls back to the Keras implementation. In training it normalises with the batch's biased
    variance and moves the averages by `momentum`, as Keras does.

    The constructor is Keras' own: it takes every argument of `keras.layers.BatchNormalization`
    (initializers, regularizers, constraints, renorm, synchronized, name, dtype...) with the same
    defaults. Those that matter here:

    Args:
        axis: The channels axis. The fused kernel serves 3 or -1 (channels last). Default -1.
        momentum: Weight of the old value in each update of the moving mean and variance
            (new = momentum * old + (1 - momentum) * batch), a fraction in [0, 1). Default 0.99
            (Keras'); `build_retinanet` sets the backbone's layers to its `batch_norm_momentum`
            (`backbone.configure_layers`).
        epsilon: Added to the variance before its square root, in squared activation units.
            Default 1e-3.
        center: Learn the offset beta; the fused kernel needs it. Default True.
        scale: Learn the factor gamma; the fused kernel needs it. Default True.
        renorm: Batch renormalisation; the fused kernel serves only False. Default False.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (mask is None and not self.renorm and self.scale and self.center and len(inputs.shape) == 4
                and self.axis in (3, -1))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        # The kernel wants float32 statistics whatever the activations' dtype.
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True)
            # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
            variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, is_training=False)
        return tf.cast(outputs, self.compute_dtype)


def fuse_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of a functional `model` whose BatchNormalization layers are fused ones (same
    names, configs and weights)."""

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    fused = keras.models.clone_model(model, clone_function=clone)
    for source, target in zip(model.layers, fused.layers):
        target.set_weights(source.get_weights())
    return fused
