"""Classification and box subnets, shared across pyramid levels."""

from __future__ import annotations

import math

import keras
from keras import layers

from retinanet.detection import defaults


def build_head(output_channels: int, *, channels: int = defaults.FPN_CHANNELS, num_convs: int = defaults.HEAD_CONVS,
               group_norm: bool = defaults.HEAD_GROUP_NORM, bias_init: float = 0.0, name: str) -> keras.Sequential:
    """num_convs x (3x3 conv + [GroupNorm] + ReLU), then a 3x3 conv to `output_channels`: a model
    mapping one pyramid level [B, h, w, channels] to [B, h, w, output_channels], shared by all levels.

    Kernels start from N(0, 0.01), biases from 0 except the last one (`bias_init`).

    Args:
        output_channels: Channels of the output, a count: anchor shapes per cell x 4 box deltas,
            or x K class logits.
        channels: Channels of the input and of the hidden convolutions, a count. Default
            `defaults.FPN_CHANNELS` (256).
        num_convs: Hidden 3x3 convolutions, a count. Default `defaults.HEAD_CONVS` (4).
        group_norm: Group normalisation (32 groups) after each hidden convolution. Default
            `defaults.HEAD_GROUP_NORM` (False).
        bias_init: Initial value of the output convolution's biases, in logits for a class head
            (`prior_bias`). Default 0.0.
        name: The model's name, and the prefix of its layers' names. Required.
    """
    normal = keras.initializers.RandomNormal(stddev=0.01)
    stack = [keras.Input((None, None, channels))]
    for i in range(num_convs):
        stack.append(layers.Conv2D(channels, 3, padding="same", kernel_initializer=normal, name=f"{name}_conv{i}"))
        if group_norm:
            stack.append(layers.GroupNormalization(groups=32, name=f"{name}_gn{i}"))
        stack.append(layers.ReLU(name=f"{name}_relu{i}"))
    stack.append(layers.Conv2D(output_channels, 3, padding="same", kernel_initializer=normal,
                               bias_initializer=keras.initializers.Constant(bias_init), name=f"{name}_output"))
    return keras.Sequential(stack, name=name)


def prior_bias(prior_probability: float) -> float:
    """Classification bias so that every anchor starts at `prior_probability`: -log((1 - p) / p)."""
    return -math.log((1.0 - prior_probability) / prior_probability)
