"""The one place that maps the config onto the components.

The components (`retinanet.detection`, `retinanet.model`, the input pipeline of `retinanet.data`,
the optimizers, schedule and validator of `retinanet.train`) take plain keyword arguments and know
nothing of the config; each builder here reads the config's sections and passes them on. The
anchors of an input size are computed once, as an `AnchorSet`, and handed to the label encoder,
the loss, the postprocessor and the model. Inference needs only the model, anchor and
postprocessor builders, which import nothing of training.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from retinanet.config import AnchorConfig, Config, TrainingConfig
from retinanet.data import pipeline
from retinanet.data.augment import Augmenter
from retinanet.data.order import worker_positions
from retinanet.data.rsna import Record
from retinanet.data.split import prepare_split
from retinanet.data.views import view_positions_from_images
from retinanet.detection.anchors import AnchorSet, make_anchor_set
from retinanet.detection.losses import RetinaNetLoss
from retinanet.detection.postprocess import Postprocessor
from retinanet.detection.targets import LabelEncoder
from retinanet.model.retinanet import build_retinanet
from retinanet.runtime.hardware import workers

SPLITS = ("train", "validation")


# --- Anchors, model, loss, post-processing ------------------------------------------------------


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
                         label_smoothing=loss.label_smoothing, classification=loss.classification,
                         anchors=anchor_set.boxes)


def build_postprocessor(config: Config, anchor_set: AnchorSet) -> Postprocessor:
    post = config.postprocessing
    return Postprocessor(anchor_set.boxes, anchor_set.level_sizes, anchor_set.image_size,
                         num_classes=config.model.num_classes,
                         candidate_score_threshold=post.candidate_score_threshold,
                         pre_nms_top_k=post.pre_nms_top_k, nms_iou=post.nms_iou,
                         max_detections=post.max_detections, box_shrink=post.box_shrink,
                         box_voting_iou=post.box_voting_iou,
                         flip_tta=post.flip_tta, image_gating=post.image_gating,
                         image_gate_threshold=post.image_gate_threshold)


# --- Optimisation --------------------------------------------------------------------------------


def build_schedule(training: TrainingConfig):
    """The `training` section's learning-rate schedule (`retinanet.train.schedule.WarmupDecay`)."""
    from retinanet.train.schedule import WarmupDecay

    return WarmupDecay(training.learning_rate, training.steps, training.warmup_steps, training.schedule,
                       boundaries=training.step_boundaries, factor=training.step_factor)


def build_optimizer(training: TrainingConfig, schedule=None, *,
                    precision: str = "float32") -> keras.optimizers.Optimizer:
    """The `training` section's optimizer on `schedule` (default: `build_schedule`'s), with loss
    scaling under the `precision` policy mixed_float16."""
    from retinanet.train.optimizers import FusedAdamW, FusedSGD

    schedule = schedule or build_schedule(training)
    # Keras keeps the weights' moving average itself (retinanet/train/ema.py).
    ema = {"use_ema": True, "ema_momentum": training.ema_decay} if training.ema_decay else {}
    if training.optimizer == "sgd":
        optimizer = FusedSGD(schedule, momentum=training.momentum, weight_decay=training.weight_decay, **ema)
    else:
        optimizer = FusedAdamW(schedule, weight_decay=training.weight_decay, **ema)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


# --- Input pipeline --------------------------------------------------------------------------------


def build_augmenter(config: Config) -> Augmenter | None:
    """The `augmentation` section's augmenter at the network input size; None when it is disabled."""
    augmentation = dataclasses.asdict(config.augmentation)
    if not augmentation.pop("enabled"):
        return None
    return Augmenter(config.preprocessing.image_size, config.training.seed, **augmentation)


def build_image_source(config: Config, records: list[Record], *, progress: bool = True,
                       split: str = "train") -> pipeline.ImageSource:
    """`records`' images read once, as the `data` section says (cache, bad-file policy, readers, memory)."""
    data = config.data
    return pipeline.image_sources(records, config.preprocessing, use_cache=data.use_cache, cache_dir=data.cache_dir,
                                  policy=data.bad_file_policy, num_workers=workers(data.num_parallel_calls),
                                  memory_limit_mib=data.decode_memory_mib, progress=progress, split=split)


def build_training_dataset(config: Config, source: pipeline.ImageSource, anchor_set: AnchorSet, *,
                           start_step: int = 0, worker: int = 0, num_workers: int = 1,
                           batch_size: int | None = None, deterministic: bool | None = None) -> tf.data.Dataset:
    """Endless augmented batches of `source` from the stream position of `start_step` on: worker
    `worker`'s share of every global batch of `training.batch_size`, in batches of `batch_size`
    (default: that share)."""
    training = config.training
    positions = worker_positions(start_step, training.batch_size, worker, num_workers)
    stream = pipeline.training_stream(source, seed=training.seed, positive_fraction=training.positive_fraction,
                                      positions=positions)
    return pipeline.batches(stream, source, encoder=build_label_encoder(config.anchors, anchor_set),
                            augmenter=build_augmenter(config), channels=config.preprocessing.channels,
                            seed=training.seed, batch_size=batch_size or training.batch_size // num_workers,
                            drop_remainder=True, parallel=workers(config.data.num_parallel_calls),
                            deterministic=training.deterministic if deterministic is None else deterministic)


def build_evaluation_dataset(config: Config, source: pipeline.ImageSource, anchor_set: AnchorSet, *,
                             batch_size: int | None = None, deterministic: bool | None = None) -> tf.data.Dataset:
    """The batches of `source`'s records once, in order, without augmentation (evaluation.batch_size)."""
    return pipeline.batches(pipeline.evaluation_stream(source), source,
                            encoder=build_label_encoder(config.anchors, anchor_set), augmenter=None,
                            channels=config.preprocessing.channels, seed=config.training.seed,
                            batch_size=batch_size or config.evaluation.batch_size, drop_remainder=False,
                            parallel=workers(config.data.num_parallel_calls),
                            deterministic=config.training.deterministic if deterministic is None else deterministic)


def build_dataset_and_records(config: Config, split: str, *, records: list[Record] | None = None,
                              training: bool | None = None, deterministic: bool | None = None,
                              progress: bool = True, start_step: int = 0, worker: int = 0, num_workers: int = 1,
                              batch_size: int | None = None,
                              anchor_set: AnchorSet | None = None) -> tuple[tf.data.Dataset, list[Record]]:
    """The batches of a split (`records`, default the config's split) and the records in their order
    (without those skipped as unreadable): training batches (`training`, default for "train"), else
    evaluation batches; the targets are those of `anchor_set` (default: the config's anchors)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if records is None:
        prepared = prepare_split(config, progress=progress)
        records = prepared.train if split == "train" else prepared.validation
    source = build_image_source(config, records, progress=progress, split=split)
    anchor_set = anchor_set or build_anchor_set(config)
    if split == "train" if training is None else training:
        dataset = build_training_dataset(config, source, anchor_set, start_step=start_step, worker=worker,
                                         num_workers=num_workers, batch_size=batch_size, deterministic=deterministic)
    else:
        dataset = build_evaluation_dataset(config, source, anchor_set, batch_size=batch_size,
                                           deterministic=deterministic)
    return dataset, source.records


def build_dataset(config: Config, split: str, **options) -> tf.data.Dataset:
    """`build_dataset_and_records`' batches alone."""
    return build_dataset_and_records(config, split, **options)[0]


# --- Validation ----------------------------------------------------------------------------------


def build_validator(config: Config, model: keras.Model, postprocessor: Postprocessor, loss: RetinaNetLoss,
                    records: list[Record], anchor_set: AnchorSet, *, progress: bool = True):
    """The held-out `records`' validator (`retinanet.train.validation.Validator`): the first
    training.num_summary_images of them, half positive where possible, drawn at each validation."""
    from retinanet.train.validation import Validator, overlays_first

    records = overlays_first(records, config.training.num_summary_images)
    dataset, records = build_dataset_and_records(config, "validation", records=records, training=False,
                                                 progress=progress, anchor_set=anchor_set)
    views, _ = view_positions_from_images(records)  # a header that gives none: the "unknown" group
    return Validator(model, postprocessor, loss, dataset, records, score_threshold=config.evaluation.score_threshold,
                     sweep=config.evaluation.sweep, num_overlays=config.training.num_summary_images,
                     channels=config.preprocessing.channels, views=views, progress=progress)
