"""RetinaNet: ResNet50 -> FPN -> shared heads -> `[B, A, 4 + K]` (box deltas, class logits)."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import tensorflow as tf
from keras import layers

from retinanet.detection import defaults
from retinanet.detection.anchors import ASPECT_RATIOS, LEVELS, SCALES
from retinanet.model.backbone import build_backbone, configure_layers
from retinanet.model.fpn import build_fpn
from retinanet.model.heads import build_head, prior_bias


def build_retinanet(input_shape: tuple[int, int, int], *, num_classes: int = defaults.NUM_CLASSES,
                    weights: str = defaults.WEIGHTS, levels: tuple[int, ...] = LEVELS,
                    anchors_per_location: int = len(ASPECT_RATIOS) * len(SCALES),
                    fpn_channels: int = defaults.FPN_CHANNELS, head_convs: int = defaults.HEAD_CONVS,
                    head_group_norm: bool = defaults.HEAD_GROUP_NORM,
                    prior_probability: float = defaults.PRIOR_PROBABILITY,
                    freeze_batch_norm: bool = defaults.FREEZE_BATCH_NORM,
                    freeze_backbone_stages: int = defaults.FREEZE_BACKBONE_STAGES,
                    batch_norm_momentum: float = defaults.BATCH_NORM_MOMENTUM,
                    image_head: bool = defaults.IMAGE_HEAD) -> keras.Model:
    """A Keras model mapping images [B, H, W, C] to a dict:

    - "predictions": float32 [B, A, 4 + num_classes], A = `num_anchors(H, W)`, level-major
      `levels` like `generate_anchors_numpy`, `anchors_per_location` shapes per cell (an
      `AnchorSet`'s levels and per_location);
    - "image_logits": float32 [B, 1], "pneumonia present" (only with `image_head`).

    Args:
        input_shape: The network input (height, width, channels): pixels, height and width
            multiples of 32 (the stride of C5; otherwise the pyramid's levels may not line up),
            1 or 3 channels.
        num_classes: K, the number of object classes (class logits per anchor), a count. Default
            `defaults.NUM_CLASSES` (1).
        weights: The backbone's initial weights: "none" (random), "imagenet" (downloaded) or a
            path to a Keras ResNet50 no-top `.h5` file (`build_backbone`). Default
            `defaults.WEIGHTS` ("none").
        levels: Pyramid levels to predict on, a subset of 3..7, increasing. Default
            `anchors.LEVELS` (3, 4, 5, 6, 7).
        anchors_per_location: Anchor shapes per feature-map cell, a count (aspect ratios x
            scales). Default 9, `len(anchors.ASPECT_RATIOS) * len(anchors.SCALES)`.
        fpn_channels: Channels of every pyramid level and of the heads' convolutions, a count.
            Default `defaults.FPN_CHANNELS` (256).
        head_convs: 3x3 convolutions in each head before its output convolution, a count.
            Default `defaults.HEAD_CONVS` (4).
        head_group_norm: Group normalisation (32 groups) after each head convolution. Default
            `defaults.HEAD_GROUP_NORM` (False).
        prior_probability: Every anchor's class probability at initialisation, in (0, 1), set
            through the class head's output bias. Default `defaults.PRIOR_PROBABILITY` (0.01).
        freeze_batch_norm: Make the backbone's batch-norm layers untrainable. Default
            `defaults.FREEZE_BATCH_NORM` (False).
        freeze_backbone_stages: Make every layer of the backbone stages conv1..conv<N>
            untrainable, N in 0..5; 0 trains them all. Default `defaults.FREEZE_BACKBONE_STAGES` (0).
        batch_norm_momentum: Momentum of the backbone batch-norm layers' moving averages, a
            fraction in [0, 1). Default `defaults.BATCH_NORM_MOMENTUM` (0.99).
        image_head: Add the "image_logits" output: global average pooling of C5 and a dense
            layer. Default `defaults.IMAGE_HEAD` (True).
    """
    backbone = build_backbone(input_shape, weights)
    configure_layers(backbone, freeze_batch_norm=freeze_batch_norm, freeze_up_to_stage=freeze_backbone_stages,
                     batch_norm_momentum=batch_norm_momentum)
    images = keras.Input(input_shape, name="images")
    c3, c4, c5 = backbone(images)
    pyramid = build_fpn([c3, c4, c5], fpn_channels, tuple(levels))
    shapes = anchors_per_location
    box_head = build_head(shapes * 4, channels=fpn_channels, num_convs=head_convs, group_norm=head_group_norm,
                          name="box_head")
    class_head = build_head(shapes * num_classes, channels=fpn_channels, num_convs=head_convs,
                            group_norm=head_group_norm, bias_init=prior_bias(prior_probability), name="class_head")
    box_outputs, class_outputs = [], []
    for level, feature in zip(levels, pyramid):
        box_outputs.append(layers.Reshape((-1, 4), name=f"box_p{level}")(box_head(feature)))
        class_outputs.append(layers.Reshape((-1, num_classes), name=f"class_p{level}")(class_head(feature)))
    predictions = layers.Concatenate(axis=-1, name="predictions", dtype="float32")([
        layers.Concatenate(axis=1, name="box_deltas", dtype="float32")(box_outputs),
        layers.Concatenate(axis=1, name="class_logits", dtype="float32")(class_outputs)])
    outputs = {"predictions": predictions}
    if image_head:
        pooled = layers.GlobalAveragePooling2D(name="image_pool")(c5)
        outputs["image_logits"] = layers.Dense(1, name="image_logits", dtype="float32")(pooled)
    return keras.Model(images, outputs, name="retinanet")


def stored_weight_shapes(weights: str | Path) -> list[tuple[int, ...]]:
    """The shapes of the weights in a `.weights.h5` file or a tf.train.Checkpoint prefix (with a
    training checkpoint, the optimizer's too)."""
    weights = Path(weights)
    if weights.name.endswith(".weights.h5"):
        shapes = []
        with h5py.File(weights, "r") as file:
            file.visititems(lambda name, item: shapes.append(item.shape) if isinstance(item, h5py.Dataset) else None)
        return shapes
    # A training checkpoint also holds the optimizer, and files each trainable weight under the
    # optimizer's shorter path (`optimizer/_trainable_variables/N`), not under `model/`: every
    # variable counts; the optimizer's own state has the shapes of the model's weights.
    stored = tf.train.load_checkpoint(str(weights)).get_variable_to_shape_map()
    return [tuple(shape) for name, shape in stored.items() if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def stored_weights_have_image_head(weights: str | Path) -> bool:
    """Whether saved weights include the image-level head: its kernel [C5 channels, 1] is the
    model's only 2-D weight (the others are convolution kernels and vectors)."""
    return any(len(shape) == 2 for shape in stored_weight_shapes(weights))
