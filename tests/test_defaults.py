"""Each default is written once: a component built without a config behaves as one built from the
default config. The schema's field defaults and the components' keyword defaults both read
`retinanet.detection.defaults` (and the anchor shapes of `retinanet.detection.anchors`); these
tests compare them through `inspect.signature`, so that a value written a second time, or a
builder that maps a key onto another keyword, shows."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest

from retinanet import builders
from retinanet.config import Config
from retinanet.detection.anchors import make_anchor_set
from retinanet.detection.losses import RetinaNetLoss, focal_loss, smooth_l1
from retinanet.detection.postprocess import Postprocessor
from retinanet.detection.targets import LabelEncoder
from retinanet.model.backbone import build_backbone
from retinanet.model.fpn import build_fpn
from retinanet.model.heads import build_head
from retinanet.model.retinanet import build_retinanet

ANCHORS_PER_LOCATION = "len(anchors.aspect_ratios) * len(anchors.scales)"

# Component -> {keyword: the config value retinanet/builders.py passes to it}.
MAPPED = {
    make_anchor_set: {"levels": "anchors.levels", "sizes": "anchors.sizes", "aspect_ratios": "anchors.aspect_ratios",
                      "scales": "anchors.scales"},
    LabelEncoder: {"positive_iou": "anchors.positive_iou", "negative_iou": "anchors.negative_iou",
                   "allow_low_quality_matches": "anchors.allow_low_quality_matches"},
    RetinaNetLoss: {"num_classes": "model.num_classes", "alpha": "loss.alpha", "gamma": "loss.gamma",
                    "smooth_l1_delta": "loss.smooth_l1_delta", "box_loss": "loss.box_loss",
                    "box_weight": "loss.box_weight", "label_smoothing": "loss.label_smoothing",
                    "classification": "loss.classification"},
    Postprocessor: {"num_classes": "model.num_classes",
                    "candidate_score_threshold": "postprocessing.candidate_score_threshold",
                    "pre_nms_top_k": "postprocessing.pre_nms_top_k", "nms_iou": "postprocessing.nms_iou",
                    "max_detections": "postprocessing.max_detections", "box_shrink": "postprocessing.box_shrink",
                    "box_voting_iou": "postprocessing.box_voting_iou",
                    "flip_tta": "postprocessing.flip_tta", "image_gating": "postprocessing.image_gating",
                    "image_gate_threshold": "postprocessing.image_gate_threshold"},
    build_retinanet: {"num_classes": "model.num_classes", "weights": "model.weights", "levels": "anchors.levels",
                      "anchors_per_location": ANCHORS_PER_LOCATION, "fpn_channels": "model.fpn_channels",
                      "head_convs": "model.head_convs", "head_group_norm": "model.head_group_norm",
                      "prior_probability": "model.prior_probability", "freeze_batch_norm": "model.freeze_batch_norm",
                      "freeze_backbone_stages": "model.freeze_backbone_stages",
                      "batch_norm_momentum": "model.batch_norm_momentum", "image_head": "model.image_head"},
}

# The parts that build_retinanet and RetinaNetLoss call with those values: their own defaults agree too.
INNER = {
    build_backbone: {"weights": "model.weights"},
    build_fpn: {"channels": "model.fpn_channels", "levels": "anchors.levels"},
    build_head: {"channels": "model.fpn_channels", "num_convs": "model.head_convs",
                 "group_norm": "model.head_group_norm"},
    focal_loss: {"alpha": "loss.alpha", "gamma": "loss.gamma"},
    smooth_l1: {"delta": "loss.smooth_l1_delta"},
}

# Keywords the builders fill from the AnchorSet, not from a config key.
FROM_THE_ANCHOR_SET = {(RetinaNetLoss, "anchors")}


def _schema_default(source: str):
    config = Config()
    if source == ANCHORS_PER_LOCATION:
        return len(config.anchors.aspect_ratios) * len(config.anchors.scales)
    section, key = source.split(".")
    return getattr(getattr(config, section), key)


def _cases(table: dict) -> list:
    return [pytest.param(component, keyword, source, id=f"{component.__name__}.{keyword}")
            for component, keywords in table.items() for keyword, source in keywords.items()]


@pytest.mark.parametrize("component, keyword, source", _cases(MAPPED) + _cases(INNER))
def test_a_components_default_is_the_schema_default_it_is_mapped_from(component, keyword, source):
    default = inspect.signature(component).parameters[keyword].default
    assert default is not inspect.Parameter.empty, f"{component.__name__}({keyword}) has no default"
    assert default == _schema_default(source), f"{component.__name__}({keyword}) and {source} differ"
    assert type(default) is type(_schema_default(source))


def test_the_builders_map_exactly_the_keywords_of_the_table_and_pass_their_defaults(monkeypatch):
    """The builders run on the default config with every component replaced by a recorder: each
    keyword with a default that they pass is in MAPPED and gets that default."""
    calls = {}

    def recorder(component):
        def record(*args, **kwargs):
            calls[component] = inspect.signature(component).bind(*args, **kwargs).arguments
            return SimpleNamespace(boxes=np.zeros((1, 4), np.float32), level_sizes=(1,), image_size=(64, 64))
        return record

    for component in MAPPED:
        monkeypatch.setattr(builders, component.__name__, recorder(component))
    config = Config()
    anchor_set = builders.build_anchor_set(config)
    builders.build_label_encoder(config.anchors, anchor_set)
    builders.build_loss(config, anchor_set)
    builders.build_postprocessor(config, anchor_set)
    builders.build_model(config)

    assert set(calls) == set(MAPPED)
    for component, arguments in calls.items():
        parameters = inspect.signature(component).parameters
        with_defaults = {name for name in arguments if parameters[name].default is not inspect.Parameter.empty
                         and (component, name) not in FROM_THE_ANCHOR_SET}
        assert with_defaults == set(MAPPED[component]), component.__name__
        for name in with_defaults:
            assert arguments[name] == parameters[name].default, f"{component.__name__}({name})"
