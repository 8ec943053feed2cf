"""Keras' SGD and AdamW with their updates on TensorFlow's fused training kernels.

Keras 3 writes each update as element-wise TensorFlow ops, one pass over memory each: for
momentum SGD a product, a difference and two assignments, for Adam a dozen (each moment's
difference, product and sum, the square root, the quotient), and for the decoupled weight decay
two products and a subtraction. On a CPU, for the 37 M weights of ResNet50-FPN, these passes are
a noticeable share of a training step. TensorFlow's kernels (those of Keras 2's optimizers) do
the same update in one pass with the same formulas:

    ResourceApplyKerasMomentum:  m = momentum m - lr g;  w += m  (nesterov: w += momentum m - lr g)
    ResourceApplyAdam:           m += (g - m)(1 - beta_1);  v += (g^2 - v)(1 - beta_2)
                                 w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon)

and the weight decay `w -= lr * weight_decay * w` becomes one product and one subtraction.
Arguments, variables, checkpoints and results are Keras' own (to float rounding).
"""

from __future__ import annotations

import keras
import tensorflow as tf


class _FusedWeightDecay:
    """Keras' decoupled weight decay, with lr * weight_decay multiplied once as a scalar."""

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return

        def apply(distribution, variables):
            rate = self.learning_rate * self.weight_decay  # once per step, not once per weight

            def decay(variable):
                if self._use_weight_decay(variable):
                    variable.assign_sub(variable * tf.cast(rate, variable.dtype))

            for variable in variables:
                variable = variable.value if isinstance(variable, keras.Variable) else variable  # the tf.Variable
                distribution.extended.update(variable, decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(apply, self._distribution_strategy, variables)


class FusedSGD(_FusedWeightDecay, keras.optimizers.SGD):
    """`keras.optimizers.SGD` (same arguments and variables) on the fused momentum kernel;
    without momentum, Keras' own update (a single product already)."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=self.momentums[self._get_variable_index(variable)].value.handle,
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype),
            use_nesterov=self.nesterov)


class FusedAdamW(_FusedWeightDecay, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` (same arguments and variables) on the fused Adam kernel; with
    `amsgrad`, Keras' own update."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))
