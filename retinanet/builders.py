"""The one place that maps the config onto the components.

The components (`retinanet.detection`, `retinanet.model`) take plain keyword arguments and
know nothing of the config; each builder here reads the config's sections and passes them on.
The anchors of an input size are computed once, as an `AnchorSet`, and handed to the label
encoder, the loss, the postprocessor and the model.
"""

from __future__ import annotations

import keras

from retinanet.config import AnchorConfig, Config
from retinanet.detection.anchors import AnchorSet, make_anchor_set
from retinanet.detection.losses import RetinaNetLoss
from retinanet.detection.postprocess import Postprocessor
from retinanet.detection.targets import LabelEncoder
from retinanet.model.retinanet import build_retinanet


def anchor_set_for(anchors: AnchorConfig, image_size: tuple[int, int]) -> AnchorSet:
    """The anchors of the `anchors` config section for an input (height, width)."""
    return make_anchor_set(image_size, levels=anchors.levels, sizes=anchors.sizes,
                           aspect_ratios=anchors.aspect_ratios, scales=anchors.scales)


def build_anchor_set(config: Config) -> AnchorSet:
    """The anchors of the network input, `preprocessing.image_size`."""
    return anchor_set_for(config.anchors, config.preprocessing.image_size)


def build_label_encoder(anchors: AnchorConfig, anchor_set: AnchorSet) -> LabelEncoder:
    return LabelEncoder(anchor_set.boxes, positive_iou=anchors.positive_iou, negative_iou=anchors.negative_iou,
                        allow_low_quality_matches=anchors.allow_low_quality_matches)


def build_model(config: Config) -> keras.Model:
    """`build_retinanet` with the config's input, anchors and model section."""
    model = config.model
    height, width = config.preprocessing.image_size
    anchors = config.anchors
    return build_retinanet((height, width, config.preprocessing.channels), num_classes=model.num_classes,
                           weights=model.weights, levels=anchors.levels,
                           anchors_per_location=len(anchors.aspect_ratios) * len(anchors.scales),
                           fpn_channels=model.fpn_channels, head_convs=model.head_convs,
                           head_group_norm=model.head_group_norm, prior_probability=model.prior_probability,
                           freeze_batch_norm=model.freeze_batch_norm,
                           freeze_backbone_stages=model.freeze_backbone_stages,
                           batch_norm_momentum=model.batch_norm_momentum, image_head=model.image_head)


def build_loss(config: Config, anchor_set: AnchorSet) -> RetinaNetLoss:
    loss = config.loss
    return RetinaNetLoss(config.model.num_classes, alpha=loss.alpha, gamma=loss.gamma,
                         smooth_l1_delta=loss.smooth_l1_delta, box_loss=loss.box_loss, box_weight=loss.box_weight,
                         label_smoothing=loss.label_smoothing, anchors=anchor_set.boxes)


def build_postprocessor(config: Config, anchor_set: AnchorSet) -> Postprocessor:
    post = config.postprocessing
    return Postprocessor(anchor_set.boxes, anchor_set.level_sizes, anchor_set.image_size,
                         num_classes=config.model.num_classes,
                         candidate_score_threshold=post.candidate_score_threshold,
                         pre_nms_top_k=post.pre_nms_top_k, nms_iou=post.nms_iou,
                         max_detections=post.max_detections, box_shrink=post.box_shrink,
                         flip_tta=post.flip_tta, image_gating=post.image_gating,
                         image_gate_threshold=post.image_gate_threshold)
