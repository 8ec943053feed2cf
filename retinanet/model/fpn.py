"""Feature pyramid: C3, C4, C5 -> P3..P7 with a common channel count."""

from __future__ import annotations

import keras
from keras import layers

from retinanet.detection import defaults
from retinanet.detection.anchors import LEVELS


def build_fpn(features: list[keras.KerasTensor], channels: int = defaults.FPN_CHANNELS,
              levels: tuple[int, ...] = LEVELS) -> list[keras.KerasTensor]:
    """[C3, C4, C5] tensors -> list of pyramid tensors [B, ceil(H / 2**l), ceil(W / 2**l), channels]
    (H, W: the network input) for the levels l of `levels`, in that order.

    P5..P3 come top-down (1x1 laterals, nearest upsampling, 3x3 smoothing); P6 is a 3x3/2
    convolution of C5 and P7 a 3x3/2 convolution of ReLU(P6), as in the RetinaNet paper.

    Args:
        features: The backbone's [C3, C4, C5] (strides 8, 16, 32 input pixels), symbolic Keras
            tensors [B, h, w, c].
        channels: Channels of every pyramid level, a count. Default `defaults.FPN_CHANNELS` (256).
        levels: The levels to return, a subset of 3..7. Default `anchors.LEVELS` (3, 4, 5, 6, 7).
    """
    c3, c4, c5 = features
    lateral5 = layers.Conv2D(channels, 1, name="fpn_lateral5")(c5)
    lateral4 = layers.Conv2D(channels, 1, name="fpn_lateral4")(c4)
    lateral3 = layers.Conv2D(channels, 1, name="fpn_lateral3")(c3)
    merged4 = layers.Add(name="fpn_merge4")([lateral4, layers.UpSampling2D(2, name="fpn_up5")(lateral5)])
    merged3 = layers.Add(name="fpn_merge3")([lateral3, layers.UpSampling2D(2, name="fpn_up4")(merged4)])
    pyramid = {
        3: layers.Conv2D(channels, 3, padding="same", name="fpn_p3")(merged3),
        4: layers.Conv2D(channels, 3, padding="same", name="fpn_p4")(merged4),
        5: layers.Conv2D(channels, 3, padding="same", name="fpn_p5")(lateral5),
    }
    if 6 in levels or 7 in levels:
        pyramid[6] = layers.Conv2D(channels, 3, strides=2, padding="same", name="fpn_p6")(c5)
    if 7 in levels:
        # Computed in float32 under any policy: oneDNN's bfloat16 kernel gradient of a 3x3/2
        # convolution over a 1x1 input (P6 of inputs up to 128 px) is often garbage, NaN or
        # 1e28 (TensorFlow 2.21, AMX CPU), which sent 64-128 px bf16 runs to NaN. P7 costs
        # next to nothing at any size.
        pyramid[7] = layers.Conv2D(channels, 3, strides=2, padding="same", name="fpn_p7", dtype="float32")(
            layers.ReLU(name="fpn_p6_relu")(pyramid[6]))
    return [pyramid[level] for level in levels]
