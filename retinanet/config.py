"""Experiment configuration: YAML -> frozen, typed dataclasses.

`load_config(path, overrides=())` is the one entry point. Every key is checked against the
schema below: an unknown key, a wrong type or an impossible value raises `ConfigError` naming
the dotted key and the file. Overrides are `section.key=value` strings whose value is parsed
as YAML and typed by the schema (`training.steps=100`, `preprocessing.image_size=[256,256]`).
Numbers follow YAML 1.2 (`1e-3` and `1e6` are numbers, not strings as in YAML 1.1); NaN and
infinities are refused for every number key.

Paths (`retinanet.config_paths.PATH_KEYS`): a relative path written in a config file is relative to the file's
directory, a relative path in an override to the working directory; `load_config` returns
them absolute, so that no command depends on where it runs. `save_config` writes the paths
inside the file's directory relative to it (a run's `split.csv`) and the others absolute,
so that a run directory can be moved or copied and used from anywhere.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from retinanet.config_paths import absolute_path, is_path, map_paths, portable_path


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponents without a dot (`1e-3`, `1e6`) as floats, as YAML 1.2
    does: YAML 1.1 makes them strings, and `learning_rate: 1e-3` would be refused as text."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


@dataclass(frozen=True)
class SyntheticConfig:
    """How to generate the synthetic RSNA-format data set when `data.root` is missing."""

    num_train: int = 400
    num_test: int = 40
    size: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/rsna"
    labels_csv: str = "stage_2_train_labels.csv"
    class_info_csv: str = "stage_2_detailed_class_info.csv"
    train_images: str = "stage_2_train_images"
    test_images: str = "stage_2_test_images"
    # Generate synthetic data into `root` on first use; null for real data.
    synthetic: SyntheticConfig | None = None
    original_size: int = 1024  # declared image size, used to validate label boxes
    num_folds: int = 5
    validation_fold: int = 0
    split_seed: int = 42
    split_file: str = ""  # default: <root>/splits/folds<K>_seed<S>.csv
    cache_dir: str = "data/cache"
    use_cache: bool = True
    bad_file_policy: str = "error"  # "error" or "skip" (counted, listed in a file); infer.py follows it too
    num_parallel_calls: int = 0  # image readers and augmenters at once; 0 = one per available core
    max_images: int = 0  # 0 = all; otherwise the first N patients of each split


@dataclass(frozen=True)
class PreprocessingConfig:
    image_size: tuple[int, int] = (512, 512)  # network input (height, width)
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    channels: int = 3


@dataclass(frozen=True)
class AugmentationConfig:
    enabled: bool = True
    horizontal_flip: float = 0.5  # probability
    scale_range: tuple[float, float] = (0.9, 1.1)
    translate_fraction: float = 0.05
    rotation_degrees: float = 5.0
    brightness: float = 0.1  # +- fraction of the range
    contrast_range: tuple[float, float] = (0.85, 1.15)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02  # in units of the full intensity range
    min_visible_fraction: float = 0.4  # a box keeping less of its area is dropped


@dataclass(frozen=True)
class AnchorConfig:
    levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    positive_iou: float = 0.5
    negative_iou: float = 0.4


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 1
    weights: str = "none"  # "none", "imagenet" or a path to a weights file
    fpn_channels: int = 256
    head_convs: int = 4
    head_group_norm: bool = False
    prior_probability: float = 0.01
    freeze_batch_norm: bool = False
    # Keras' ResNet50 uses 0.99; from scratch the weights move fast and 0.99 leaves the
    # inference-mode statistics far behind them for hundreds of steps.
    batch_norm_momentum: float = 0.99
    freeze_backbone_stages: int = 0  # 0 = train all; 1..5 freezes conv1..conv<N>
    image_head: bool = True  # global "pneumonia present" logit on C5


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.25
    gamma: float = 2.0
    smooth_l1_delta: float = 1.0 / 9.0
    box_loss: str = "smooth_l1"  # "smooth_l1", "giou" or "ciou"
    box_weight: float = 1.0
    label_smoothing: float = 0.0
    image_weight: float = 0.1


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 8
    steps: int = 20000
    optimizer: str = "sgd"  # "sgd" or "adamw"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    schedule: str = "cosine"  # "cosine", "step" or "constant"
    step_boundaries: tuple[float, ...] = (0.67, 0.89)  # fractions of `steps`
    step_factor: float = 0.1
    gradient_clip_norm: float = 10.0
    # "auto" (bfloat16 where the CPU/GPU computes it natively, float16 on GPUs of compute
    # capability 7.x, else float32), "float32", "mixed_bfloat16" or "mixed_float16".
    mixed_precision: str = "auto"
    intra_op_threads: int = 0  # threads inside one op; 0 = one per available core
    inter_op_threads: int = 0  # ops run at once; 0 = min(2, cores)
    # > 0: time the first steps and one validation, then fit `steps` (the maximum), the warm-up,
    # validation and checkpoint intervals so that the whole command ends within this budget.
    time_budget_minutes: float = 0.0
    jit_compile: bool = False
    # "default" (one device), "mirrored" (this machine's devices) or "multi_worker" (a cluster
    # described by TF_CONFIG; see scripts/launch_workers.py).
    strategy: str = "default"
    seed: int = 0
    deterministic: bool = False
    # Retired: training reads a full permutation of the records per epoch (retinanet/data/order.py).
    # Still read, so that the configs of earlier runs load; it changes nothing.
    shuffle_buffer: int = 512
    # Share of training images with boxes; 0 = as they come (22.5 % in RSNA). Boxes are learned
    # from positive images only, while negatives are learned fast (see the README's demo notes).
    positive_fraction: float = 0.0
    validate_every: int = 1000  # steps
    log_every: int = 50  # steps
    checkpoint_every: int = 500  # steps
    keep_checkpoints: int = 2  # latest checkpoints kept (weights + optimizer state); 1 saves the space of one
    num_summary_images: int = 4
    weight_histograms: bool = False  # TensorBoard histograms of every weight at each validation
    run_root: str = "runs"


@dataclass(frozen=True)
class PostprocessingConfig:
    score_threshold: float = 0.05
    pre_nms_top_k: int = 1000  # per pyramid level
    nms_iou: float = 0.5
    max_detections: int = 100
    box_shrink: float = 1.0  # 0.83-0.875 helped in the competition
    flip_tta: bool = False
    image_gating: str = "none"  # "none", "gate" or "multiply"
    image_gate_threshold: float = 0.5


@dataclass(frozen=True)
class EvaluationConfig:
    score_threshold: float = 0.3  # boxes kept in the RSNA metric and the submission
    sweep: tuple[float, float, float] = (0.05, 0.95, 0.05)  # start, stop, step
    batch_size: int = 8
    num_overlays: int = 6


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    postprocessing: PostprocessingConfig = field(default_factory=PostprocessingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


CHOICES = {
    "data.bad_file_policy": ("error", "skip"),
    "loss.box_loss": ("smooth_l1", "giou", "ciou"),
    "training.optimizer": ("sgd", "adamw"),
    "training.schedule": ("cosine", "step", "constant"),
    "training.mixed_precision": ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "training.strategy": ("default", "mirrored", "multi_worker"),
    "postprocessing.image_gating": ("none", "gate", "multiply"),
}


def _convert(value, annotation, key: str):
    """Check `value` against a type annotation; return it typed (lists become tuples)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(value, inner, key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(item, arg, f"{key}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation} for {key}")


def _build(cls, mapping: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {', '.join(sorted(names))})")
    values = {}
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _convert(value, hints[name], key)
    return cls(**values)


def _check(config: Config) -> None:
    """Cross-field rules: raise ConfigError naming the key for an impossible value."""

    def require(condition: bool, key: str, message: str) -> None:
        if not condition:
            raise ConfigError(f"{key}: {message}")

    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        require(value in allowed, key, f"{value!r} is not one of {', '.join(allowed)}")

    data, pre, aug, anchors = config.data, config.preprocessing, config.augmentation, config.anchors
    require(data.num_folds >= 2, "data.num_folds", "must be at least 2")
    require(0 <= data.validation_fold < data.num_folds, "data.validation_fold", "must be in [0, num_folds)")
    require(data.original_size > 0, "data.original_size", "must be positive")
    require(data.num_parallel_calls >= 0, "data.num_parallel_calls", "must be >= 0 (0 = one per core)")
    require(data.max_images >= 0, "data.max_images", "must be >= 0")
    if data.synthetic is not None:
        s = data.synthetic
        require(s.num_train >= 10, "data.synthetic.num_train", "must be at least 10")
        require(s.num_test >= 0, "data.synthetic.num_test", "must be >= 0")
        require(s.size >= 64, "data.synthetic.size", "must be at least 64")
    require(all(v >= 32 and v % 32 == 0 for v in pre.image_size), "preprocessing.image_size",
            "both sides must be positive multiples of 32 (the stride of C5)")
    require(pre.channels in (1, 3), "preprocessing.channels", "must be 1 or 3")
    require(pre.clahe_clip_limit > 0, "preprocessing.clahe_clip_limit", "must be positive")
    require(pre.clahe_tile_grid >= 1, "preprocessing.clahe_tile_grid", "must be at least 1")
    require(0 <= aug.horizontal_flip <= 1, "augmentation.horizontal_flip", "is a probability in [0, 1]")
    for name in ("scale_range", "contrast_range", "gamma_range"):
        low, high = getattr(aug, name)
        require(0 < low <= high, f"augmentation.{name}", "needs 0 < low <= high")
    require(0 <= aug.translate_fraction < 0.5, "augmentation.translate_fraction", "must be in [0, 0.5)")
    require(0 <= aug.rotation_degrees <= 45, "augmentation.rotation_degrees", "must be in [0, 45]")
    require(aug.brightness >= 0, "augmentation.brightness", "must be >= 0")
    require(aug.noise_std >= 0, "augmentation.noise_std", "must be >= 0")
    require(0 < aug.min_visible_fraction <= 1, "augmentation.min_visible_fraction", "must be in (0, 1]")
    require(len(anchors.levels) == len(anchors.sizes), "anchors.sizes", "needs one size per level")
    require(all(3 <= level <= 7 for level in anchors.levels), "anchors.levels", "must be within 3..7")
    require(list(anchors.levels) == sorted(set(anchors.levels)), "anchors.levels", "must be increasing")
    for name in ("sizes", "aspect_ratios", "scales"):
        require(all(v > 0 for v in getattr(anchors, name)), f"anchors.{name}", "must be positive")
    require(0 < anchors.negative_iou <= anchors.positive_iou <= 1, "anchors.negative_iou",
            "needs 0 < negative_iou <= positive_iou <= 1")
    model, loss, training = config.model, config.loss, config.training
    require(model.num_classes >= 1, "model.num_classes", "must be at least 1")
    require(0 < model.prior_probability < 1, "model.prior_probability", "must be in (0, 1)")
    require(0 <= model.batch_norm_momentum < 1, "model.batch_norm_momentum", "must be in [0, 1)")
    require(0 <= model.freeze_backbone_stages <= 5, "model.freeze_backbone_stages", "must be in 0..5")
    require(model.head_convs >= 0, "model.head_convs", "must be >= 0")
    require(model.fpn_channels > 0, "model.fpn_channels", "must be positive")
    require(0 <= loss.alpha <= 1, "loss.alpha", "must be in [0, 1]")
    require(loss.gamma >= 0, "loss.gamma", "must be >= 0")
    require(loss.smooth_l1_delta > 0, "loss.smooth_l1_delta", "must be positive")
    require(0 <= loss.label_smoothing < 1, "loss.label_smoothing", "must be in [0, 1)")
    require(loss.box_weight >= 0, "loss.box_weight", "must be >= 0")
    require(loss.image_weight >= 0, "loss.image_weight", "must be >= 0")
    require(training.batch_size >= 1, "training.batch_size", "must be at least 1")
    require(training.steps >= 1, "training.steps", "must be at least 1")
    require(training.learning_rate > 0, "training.learning_rate", "must be positive")
    require(0 <= training.warmup_steps < training.steps, "training.warmup_steps", "must be in [0, steps)")
    require(list(training.step_boundaries) == sorted(training.step_boundaries)
            and all(0 < b < 1 for b in training.step_boundaries),
            "training.step_boundaries", "must be increasing fractions in (0, 1)")
    for name in ("intra_op_threads", "inter_op_threads"):
        require(getattr(training, name) >= 0, f"training.{name}", "must be >= 0 (0 = auto)")
    require(0 <= training.positive_fraction < 1, "training.positive_fraction", "must be in [0, 1) (0 = as they come)")
    require(training.time_budget_minutes >= 0, "training.time_budget_minutes", "must be >= 0 (0 = no budget)")
    require(not (training.strategy == "multi_worker" and training.time_budget_minutes), "training.time_budget_minutes",
            "must be 0 with training.strategy: multi_worker (each worker would time itself; set training.steps)")
    require(training.gradient_clip_norm >= 0, "training.gradient_clip_norm", "must be >= 0 (0 = off)")
    for name in ("validate_every", "log_every", "checkpoint_every", "keep_checkpoints"):
        require(getattr(training, name) >= 1, f"training.{name}", "must be at least 1")
    post, evaluation = config.postprocessing, config.evaluation
    for key, value in (("postprocessing.score_threshold", post.score_threshold),
                       ("postprocessing.nms_iou", post.nms_iou),
                       ("evaluation.score_threshold", evaluation.score_threshold)):
        require(0 <= value <= 1, key, "must be in [0, 1]")
    require(post.max_detections >= 1, "postprocessing.max_detections", "must be at least 1")
    require(post.pre_nms_top_k >= 1, "postprocessing.pre_nms_top_k", "must be at least 1")
    require(0 < post.box_shrink <= 1, "postprocessing.box_shrink", "must be in (0, 1]")
    start, stop, step = evaluation.sweep
    require(0 <= start < stop <= 1 and step > 0, "evaluation.sweep", "needs 0 <= start < stop <= 1, step > 0")


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), _parse_yaml(raw)


def _clamp_warmup(config: Config, source: str) -> Config:
    """A warm-up as long as the run is clamped (with a note), so that a smoke run
    `--set training.steps=1` works with any config's warm-up."""
    training = config.training
    if training.warmup_steps < training.steps:
        return config
    clamped = training.steps - 1
    print(f"note: {source}: training.warmup_steps {training.warmup_steps} >= training.steps {training.steps}; "
          f"warm-up clamped to {clamped} step(s)", file=sys.stderr)
    return dataclasses.replace(config, training=dataclasses.replace(training, warmup_steps=clamped))


def config_from_dict(mapping: dict, source: str = "<dict>") -> Config:
    try:
        config = _build(Config, mapping, "")
        if config.training.steps >= 1:
            config = _clamp_warmup(config, source)
        _check(config)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return config


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, validate, return a Config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        mapping = _parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for override in overrides:
        keys, value = _parse_override(override)
        if is_path(".".join(keys), value):
            value = absolute_path(value, Path.cwd())
        node = mapping
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: override {override!r}: {part} is not a section")
        node[keys[-1]] = value
    config = config_from_dict(mapping, str(path))
    directory = path.absolute().parent
    return map_paths(config, lambda key, value: absolute_path(value, directory))


def to_dict(config) -> dict:
    """Plain, YAML-ready dict (tuples become lists)."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: str | Path) -> None:
    """Write `config` as YAML; paths as `portable_path` makes them (see the module docstring)."""
    path = Path(path)
    directory = Path(os.path.realpath(path.parent))
    config = map_paths(config, lambda key, value: portable_path(value, directory))
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
