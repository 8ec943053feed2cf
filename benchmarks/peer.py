"""The peer that `benchmarks/train_step.py` measures the training step against: the keras-io
RetinaNet example ("Object Detection with RetinaNet", keras.io), rebuilt from its published
description for a like-for-like comparison.

Its network is the project's: ResNet50 -> C3..C5 -> FPN P3..P7 (256 channels; P6 a 3x3/2
convolution of C5, P7 one of ReLU(P6)), two shared heads of 4 x (3x3 conv 256 + ReLU) and an
output convolution, N(0, 0.01) kernels, the classification bias at the 0.01 prior, 9 anchors per
location, outputs `[B, A, 4 + K]`. Its loss is focal (alpha 0.25, gamma 2) plus smooth L1
(delta 1), each divided by the image's positive anchors; its optimizer SGD with momentum 0.9;
it trains through `compile` and `train_on_batch`. It differs where the example does: Keras'
stock batch normalisation, no image-level head, no gradient clipping.

`keras_module` is `keras` (Keras 3) or `tf_keras` (Keras 2, the `peers` extra), on which the
example was first published.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _set_policy(keras_module, name):
    """Set the global dtype policy of Keras 3 or tf_keras; returns the previous one."""
    if hasattr(keras_module, "config") and hasattr(keras_module.config, "set_dtype_policy"):
        previous = keras_module.config.dtype_policy()
        keras_module.config.set_dtype_policy(name)
    else:
        previous = keras_module.mixed_precision.global_policy()
        keras_module.mixed_precision.set_global_policy(name)
    return previous


def build_peer_model(keras_module, input_shape: tuple[int, int, int], num_classes: int = 1,
                     precision: str = "float32"):
    """The example's RetinaNet (random weights), built under the dtype policy `precision`."""
    layers = keras_module.layers
    previous = _set_policy(keras_module, precision)
    try:
        backbone = keras_module.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
        c3, c4, c5 = (backbone.get_layer(name).output
                      for name in ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"))
        lateral3, lateral4, lateral5 = (layers.Conv2D(256, 1)(c) for c in (c3, c4, c5))
        lateral4 = lateral4 + layers.UpSampling2D(2)(lateral5)
        lateral3 = lateral3 + layers.UpSampling2D(2)(lateral4)
        p3, p4, p5 = (layers.Conv2D(256, 3, padding="same")(x) for x in (lateral3, lateral4, lateral5))
        p6 = layers.Conv2D(256, 3, strides=2, padding="same")(c5)
        p7 = layers.Conv2D(256, 3, strides=2, padding="same")(layers.ReLU()(p6))

        def head(outputs: int, bias: float):
            normal = keras_module.initializers.RandomNormal(0.0, 0.01)
            stack = [keras_module.Input((None, None, 256))]
            for _ in range(4):
                stack += [layers.Conv2D(256, 3, padding="same", kernel_initializer=normal), layers.ReLU()]
            stack.append(layers.Conv2D(outputs, 3, padding="same", kernel_initializer=normal,
                                       bias_initializer=keras_module.initializers.Constant(bias)))
            return keras_module.Sequential(stack)

        box_head = head(9 * 4, 0.0)
        class_head = head(9 * num_classes, -math.log((1 - 0.01) / 0.01))
        boxes = layers.Concatenate(axis=1)([layers.Reshape((-1, 4))(box_head(p)) for p in (p3, p4, p5, p6, p7)])
        classes = layers.Concatenate(axis=1)([layers.Reshape((-1, num_classes))(class_head(p))
                                              for p in (p3, p4, p5, p6, p7)])
        outputs = layers.Concatenate(axis=-1)([boxes, classes])
        return keras_module.Model(backbone.inputs, outputs, name="keras_io_retinanet")
    finally:
        _set_policy(keras_module, previous)


def peer_loss(num_classes: int = 1, alpha: float = 0.25, gamma: float = 2.0, delta: float = 1.0):
    """The example's loss: y_true [B, A, 5] (deltas, class id / -1 negative / -2 ignored) -> [B]."""

    def loss(y_true, y_pred):
        y_true, y_pred = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
        states = y_true[..., 4]
        labels = tf.one_hot(tf.cast(states, tf.int32), num_classes)
        positive = tf.cast(states > -1.0, tf.float32)
        ignored = tf.cast(tf.equal(states, -2.0), tf.float32)
        logits = y_pred[..., 4:]
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        probabilities = tf.sigmoid(logits)
        p_t = labels * probabilities + (1 - labels) * (1 - probabilities)
        alpha_t = labels * alpha + (1 - labels) * (1 - alpha)
        classification = tf.reduce_sum(alpha_t * tf.pow(1.0 - p_t, gamma) * cross_entropy, axis=-1)
        difference = y_true[..., :4] - y_pred[..., :4]
        absolute = tf.abs(difference)
        box = tf.reduce_sum(tf.where(absolute < delta, 0.5 * difference ** 2, absolute - 0.5), axis=-1)
        classification = tf.where(ignored > 0, 0.0, classification)
        box = tf.where(positive > 0, box, 0.0)
        normaliser = tf.reduce_sum(positive, axis=-1)
        return (tf.math.divide_no_nan(tf.reduce_sum(classification, axis=-1), normaliser)
                + tf.math.divide_no_nan(tf.reduce_sum(box, axis=-1), normaliser))

    return loss


def peer_train_step(keras_module, input_shape: tuple[int, int, int], precision: str = "float32"):
    """A function (images, targets) -> loss running one of the example's training steps."""
    model = build_peer_model(keras_module, input_shape, precision=precision)
    model.compile(optimizer=keras_module.optimizers.SGD(learning_rate=0.000625, momentum=0.9), loss=peer_loss())
    return lambda images, targets: model.train_on_batch(images, targets)
