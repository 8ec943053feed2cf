"""ResNet50 trunk from keras.applications returning C3, C4, C5."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from retinanet.detection import defaults
from retinanet.errors import UserError
from retinanet.model.batch_norm import fuse_batch_norms

FEATURE_LAYERS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")  # C3, C4, C5


class WeightsError(UserError, ValueError):
    """Backbone weights that cannot be had: no network, or a missing, unreadable or mismatched file."""


KERAS_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _download_imagenet(input_shape) -> keras.Model:
    try:
        return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as error:  # Keras' get_file raises a bare Exception for HTTP and URL errors
        raise WeightsError(
            f"model.weights: imagenet: could not download the ImageNet weights for ResNet50 ({error}). Offline, "
            f"download {KERAS_WEIGHTS_FILE} elsewhere and set model.weights to its local path, or use "
            "model.weights: none") from None


def _check_weights_path(path: str) -> None:
    """Before the network is built: a path that cannot be a weights file."""
    if not Path(path).is_file():
        raise WeightsError(f"model.weights: file not found: {path}")
    if not path.endswith(".h5"):
        raise WeightsError(f"model.weights: {path} is not a Keras weights file (.h5), such as {KERAS_WEIGHTS_FILE}")


def _load_weights_file(trunk: keras.Model, path: str) -> None:
    """`trunk.load_weights(path)`, its failures told apart: a file that cannot be read (not HDF5,
    truncated, no permission) and the weights of another network."""
    try:
        trunk.load_weights(path)
    except OSError as error:  # raised by h5py
        raise WeightsError(f"model.weights: cannot read {path}: corrupt, truncated or not readable ({error}); "
                           "download it again") from None
    except ValueError as error:  # raised by Keras for a layer count or a shape that differs
        summary = str(error).strip().splitlines()[0]
        raise WeightsError(f"model.weights: {path} holds weights of another network, not a ResNet50 without its "
                           f"top ({summary}); expected Keras' {KERAS_WEIGHTS_FILE}") from None


def _resnet50(input_shape, weights: str) -> keras.Model:
    if weights == "imagenet":
        return _download_imagenet(input_shape)
    trunk = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    if weights != "none":
        _load_weights_file(trunk, weights)
    return trunk


def build_backbone(input_shape: tuple[int, int, int], weights: str = defaults.WEIGHTS) -> keras.Model:
    """ResNet50 without its top -> model with outputs [C3, C4, C5] (strides 8, 16, 32; 512, 1024 and
    2048 channels), its batch normalisation on the fused kernel (`retinanet.model.batch_norm`).

    With pretrained weights and one input channel, the first convolution's kernel is summed over
    its three input channels, which gives the same response to a grey image.

    Args:
        input_shape: The network input (height, width, channels) in pixels, 1 or 3 channels.
        weights: "none" (random initialisation), "imagenet" (Keras' ImageNet weights, downloaded)
            or a path to a Keras ResNet50 no-top weights file (`KERAS_WEIGHTS_FILE`, .h5).
            Default `defaults.WEIGHTS` ("none").

    Raises:
        WeightsError: The ImageNet weights cannot be downloaded, or the file is missing,
            unreadable or holds the weights of another network.
    """
    if weights not in ("none", "imagenet"):
        _check_weights_path(weights)
    channels = input_shape[-1]
    if weights != "none" and channels == 1:
        pretrained = _resnet50((*input_shape[:2], 3), weights)
        trunk = _resnet50(input_shape, "none")
        for source, target in zip(pretrained.layers, trunk.layers):
            values = source.get_weights()
            if source.name == "conv1_conv":
                values[0] = np.sum(values[0], axis=2, keepdims=True)
            target.set_weights(values)
    else:
        trunk = _resnet50(input_shape, weights)
    outputs = [trunk.get_layer(name).output for name in FEATURE_LAYERS]
    return fuse_batch_norms(keras.Model(trunk.inputs, outputs, name="resnet50"))


def configure_layers(backbone: keras.Model, *, freeze_batch_norm: bool, freeze_up_to_stage: int,
                     batch_norm_momentum: float) -> None:
    """Freeze batch-norm layers and/or every layer of stages conv1..conv<N>; set the BN momentum.

    Args:
        backbone: The `build_backbone` model, changed in place.
        freeze_batch_norm: Make every batch-norm layer untrainable.
        freeze_up_to_stage: N, 0..5: make every layer of the stages conv1..conv<N> untrainable;
            0 freezes none.
        batch_norm_momentum: Momentum of every batch-norm layer's moving averages, a fraction in [0, 1).
    """
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = batch_norm_momentum
        stage = layer.name.split("_")[0]
        if stage.startswith("conv") and stage[4:].isdigit() and int(stage[4:]) <= freeze_up_to_stage:
            layer.trainable = False
        if freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
