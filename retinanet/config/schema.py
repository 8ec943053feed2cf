"""Experiment configuration: YAML -> frozen, typed dataclasses.

`load_config(path, overrides=())` is the one entry point. Every key is checked against the
schema below: an unknown key, a wrong type or an impossible value raises `ConfigError` naming
the dotted key and the file, or the `--set` override that caused it. Each field declares its
allowed values beside its default (`setting(default, rule, ...)`, see `retinanet.config.rules`);
the few rules that relate several keys are CROSS_FIELD_RULES. A retired key (RETIRED_KEYS) is
dropped with a note and a renamed one (RENAMED_KEYS) moved to its new name with a note, so that
the config.yaml of an older run still loads. Overrides are `section.key=value` strings whose value is parsed
as YAML and typed by the schema (`training.steps=100`, `preprocessing.image_size=[256,256]`).
Numbers follow YAML 1.2 (`1e-3` and `1e6` are numbers, not strings as in YAML 1.1); NaN and
infinities are refused for every number key.

Paths (`retinanet.config.paths.PATH_KEYS`): a relative path written in a config file is relative to the file's
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

from retinanet.detection import anchors as anchor_defaults
from retinanet.detection import defaults
from retinanet.config.paths import absolute_path, is_path, map_paths, portable_path
from retinanet.config.rules import (CrossFieldRule, Rule, TableChoice, at_least, each, increasing, not_empty, one_of,
                                    ordered_pair, positive, setting, violations, within)
from retinanet.errors import UserError
from retinanet.runtime.safe_writes import write_text_atomically


class ConfigError(UserError, ValueError):
    """A configuration file or override that does not fit the schema."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponents without a dot (`1e-3`, `1e6`) as floats, as YAML 1.2
    does: YAML 1.1 makes them strings, and `learning_rate: 1e-3` would be refused as text."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


class _NestedTooDeeply(yaml.YAMLError):
    """PyYAML builds nested lists and mappings by recursion: `[[[[...` exhausts Python's stack."""


def _parse_yaml(text: str):
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except RecursionError:
        raise _NestedTooDeeply("nested too deeply (lists or mappings inside one another beyond what "
                               "the YAML reader can follow)") from None


# Allowed words of the choice keys. The components own the tables of theirs (loss.box_loss:
# `retinanet.detection.losses.BOX_LOSSES`, postprocessing.image_gating:
# `retinanet.detection.postprocess.IMAGE_GATINGS`); the rest are read from here, so that the
# config and the code cannot disagree.
BAD_FILE_POLICIES = ("error", "skip")
BOX_LOSSES = TableChoice("retinanet.detection.losses", "BOX_LOSSES")
CLASSIFICATION_LOSSES = TableChoice("retinanet.detection.losses", "CLASSIFICATION_LOSSES")
IMAGE_GATINGS = TableChoice("retinanet.detection.postprocess", "IMAGE_GATINGS")
# The synthetic opacities' levels; retinanet.synthetic.phantom.DIFFICULTIES defines each (a test keeps
# the two equal: the config must not import the generator).
DIFFICULTIES = ("default", "faint", "very_faint", "varied")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker")

# Keys that earlier versions had and nothing reads any more: a file that still has them (the
# config.yaml of an older run) loads with a note instead of an unknown-key error.
RETIRED_KEYS = {
    "data.test_images": "the test images are given to `retinanet infer --input`",
    "training.shuffle_buffer": "each epoch reads a full permutation of the records instead",
}

# Keys that earlier versions named otherwise: a file with the old name (the config.yaml of an
# older run) loads with a note, its value carried over to the new key.
RENAMED_KEYS = {
    "postprocessing.score_threshold": "postprocessing.candidate_score_threshold",
    "training.mixed_precision": "runtime.mixed_precision",
    "training.intra_op_threads": "runtime.intra_op_threads",
    "training.inter_op_threads": "runtime.inter_op_threads",
}


@dataclass(frozen=True)
class SyntheticConfig:
    """How to generate the synthetic RSNA-format data set when `data.root` is missing."""

    num_train: int = setting(400, at_least(10))
    num_test: int = setting(40, at_least(0))
    size: int = setting(1024, at_least(64))
    seed: int = setting(0, at_least(0))
    # How faint and vague the opacities are: default, faint, very_faint or varied (docs/data.md).
    difficulty: str = setting("default", one_of(DIFFICULTIES))


@dataclass(frozen=True)
class DataConfig:
    root: str = setting("data/rsna", not_empty())
    labels_csv: str = setting("stage_2_train_labels.csv", not_empty())  # compressed too (.csv.zip, .csv.gz)
    # "" or absent: positives are "Lung Opacity", the negatives' class is unknown.
    class_info_csv: str = "stage_2_detailed_class_info.csv"
    # A table of DICOM headers (patientId or PatientID, ViewPosition) for a split stratified by
    # view position too; "": the DICOMs' own headers when the images are there.
    headers_csv: str = ""
    train_images: str = setting("stage_2_train_images", not_empty())
    # Generate synthetic data into `root` on first use; null for real data.
    synthetic: SyntheticConfig | None = None
    original_size: int = setting(1024, positive())  # declared image size, used to validate label boxes
    num_folds: int = setting(5, at_least(2))
    validation_fold: int = setting(0, at_least(0))  # and below num_folds
    split_seed: int = setting(42, at_least(0))
    split_file: str = ""  # default: <root>/splits/folds<K>_seed<S>.csv
    cache_dir: str = setting("data/cache", not_empty())
    use_cache: bool = True
    # "skip": unreadable files are counted and listed in a file; infer.py follows it too.
    bad_file_policy: str = setting("error", one_of(BAD_FILE_POLICIES))
    num_parallel_calls: int = setting(0, at_least(0))  # image readers and augmenters at once; 0 = one per core
    # Memory one image's decoding may take, judged before decoding from the sizes the file declares
    # (retinanet/data/decode_checks.py); larger images are unreadable. 1024 MiB reads up to about
    # 33 megapixels, and two readers at once fit a 2-core, 24 GB machine beside training.
    decode_memory_mib: int = setting(1024, at_least(16))
    max_images: int = setting(0, at_least(0))  # 0 = all; otherwise the first N patients of each split


@dataclass(frozen=True)
class PreprocessingConfig:
    image_size: tuple[int, int] = setting(  # network input (height, width)
        (512, 512), each(Rule(lambda side: side >= 32 and side % 32 == 0,
                              "must be a positive multiple of 32 (the stride of C5)")))
    clahe: bool = True
    clahe_clip_limit: float = setting(2.0, positive())
    clahe_tile_grid: int = setting(8, at_least(1))
    channels: int = setting(3, Rule(lambda channels: channels in (1, 3), "must be 1 or 3"))


@dataclass(frozen=True)
class AugmentationConfig:
    enabled: bool = True
    horizontal_flip: float = setting(0.5, within(0, 1))  # probability
    scale_range: tuple[float, float] = setting((0.9, 1.1), ordered_pair())
    translate_fraction: float = setting(0.05, within(0, 0.5, high_open=True))
    rotation_degrees: float = setting(5.0, within(0, 45))
    brightness: float = setting(0.1, at_least(0))  # +- fraction of the range
    contrast_range: tuple[float, float] = setting((0.85, 1.15), ordered_pair())
    gamma_range: tuple[float, float] = setting((0.8, 1.25), ordered_pair())
    noise_std: float = setting(0.02, at_least(0))  # in units of the full intensity range
    min_visible_fraction: float = setting(0.4, within(0, 1, low_open=True))  # a box keeping less is dropped


@dataclass(frozen=True)
class AnchorConfig:
    levels: tuple[int, ...] = setting(anchor_defaults.LEVELS, each(within(3, 7)), increasing())
    sizes: tuple[float, ...] = setting(anchor_defaults.SIZES, each(positive()))  # one per level
    aspect_ratios: tuple[float, ...] = setting(anchor_defaults.ASPECT_RATIOS, each(positive()))  # height / width
    scales: tuple[float, ...] = setting(anchor_defaults.SCALES, each(positive()))
    positive_iou: float = setting(defaults.POSITIVE_IOU, within(0, 1, low_open=True))
    negative_iou: float = setting(defaults.NEGATIVE_IOU, within(0, 1, low_open=True))  # and at most positive_iou
    # Each box's best anchors become positive even below positive_iou (retinanet/detection/targets.py).
    allow_low_quality_matches: bool = defaults.ALLOW_LOW_QUALITY_MATCHES


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = setting(defaults.NUM_CLASSES, at_least(1))
    weights: str = setting(defaults.WEIGHTS, not_empty())  # "none", "imagenet" or a path to a weights file
    fpn_channels: int = setting(defaults.FPN_CHANNELS, positive())
    head_convs: int = setting(defaults.HEAD_CONVS, at_least(0))
    head_group_norm: bool = defaults.HEAD_GROUP_NORM
    prior_probability: float = setting(defaults.PRIOR_PROBABILITY, within(0, 1, low_open=True, high_open=True))
    freeze_batch_norm: bool = defaults.FREEZE_BATCH_NORM
    # Keras' ResNet50 uses 0.99; from scratch the weights move fast and 0.99 leaves the
    # inference-mode statistics far behind them for hundreds of steps.
    batch_norm_momentum: float = setting(defaults.BATCH_NORM_MOMENTUM, within(0, 1, high_open=True))
    # 0 = train all; 1..5 freezes conv1..conv<N>
    freeze_backbone_stages: int = setting(defaults.FREEZE_BACKBONE_STAGES, within(0, 5))
    image_head: bool = defaults.IMAGE_HEAD  # global "pneumonia present" logit on C5


@dataclass(frozen=True)
class LossConfig:
    alpha: float = setting(defaults.FOCAL_ALPHA, within(0, 1))
    gamma: float = setting(defaults.FOCAL_GAMMA, at_least(0))
    smooth_l1_delta: float = setting(defaults.SMOOTH_L1_DELTA, positive())
    box_loss: str = setting(defaults.BOX_LOSS, BOX_LOSSES)
    # focal, or quality_focal: a positive anchor learns its box's IoU with the true box as its score.
    classification: str = setting(defaults.CLASSIFICATION_LOSS, CLASSIFICATION_LOSSES)
    box_weight: float = setting(defaults.BOX_WEIGHT, at_least(0))
    label_smoothing: float = setting(defaults.LABEL_SMOOTHING, within(0, 1, high_open=True))
    image_weight: float = setting(0.1, at_least(0))


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = setting(8, at_least(1))
    steps: int = setting(20000, at_least(1))
    optimizer: str = setting("sgd", one_of(OPTIMIZERS))
    learning_rate: float = setting(0.01, positive())
    momentum: float = setting(0.9, within(0, 1, high_open=True))  # SGD only
    weight_decay: float = setting(1e-4, at_least(0))
    warmup_steps: int = setting(500, at_least(0))  # and below steps
    schedule: str = setting("cosine", one_of(SCHEDULES))
    step_boundaries: tuple[float, ...] = setting(  # fractions of `steps`
        (0.67, 0.89), each(within(0, 1, low_open=True, high_open=True)), increasing())
    step_factor: float = setting(0.1, within(0, 1, low_open=True))  # learning rate multiplier at each boundary
    gradient_clip_norm: float = setting(10.0, at_least(0))  # 0 = off
    # > 0: time the first steps and one validation, then fit `steps` (the maximum), the warm-up,
    # validation and checkpoint intervals so that the whole command ends within this budget.
    time_budget_minutes: float = setting(0.0, at_least(0))
    jit_compile: bool = False
    # "default" (one device), "mirrored" (this machine's devices) or "multi_worker" (a cluster
    # described by TF_CONFIG; see scripts/launch_workers.py).
    strategy: str = setting("default", one_of(STRATEGIES))
    seed: int = setting(0, at_least(0))
    deterministic: bool = False
    # Share of training images with boxes; 0 = as they come (22.5 % in RSNA). Boxes are learned
    # from positive images only, while negatives are learned fast (see the README's demo notes).
    positive_fraction: float = setting(0.0, within(0, 1, high_open=True))
    validate_every: int = setting(1000, at_least(1))  # steps
    log_every: int = setting(50, at_least(1))  # steps
    checkpoint_every: int = setting(500, at_least(1))  # steps
    # Latest checkpoints kept (weights + optimizer state); 1 saves the space of one.
    keep_checkpoints: int = setting(2, at_least(1))
    num_summary_images: int = setting(4, at_least(0))
    weight_histograms: bool = False  # TensorBoard histograms of every weight at each validation
    run_root: str = setting("runs", not_empty())
    # > 0: keep an exponential moving average of the weights (Keras' optimizer EMA, this decay per
    # step); validation, best.weights.h5 and final.weights.h5 use the averaged weights. 0 = off.
    ema_decay: float = setting(0.0, within(0, 1, high_open=True))


@dataclass(frozen=True)
class RuntimeConfig:
    """How train, evaluate, infer and export run on this machine."""

    # "auto" (bfloat16 where the CPU/GPU computes it natively, float16 on GPUs of compute
    # capability 7.x, else float32), "float32", "mixed_bfloat16" or "mixed_float16".
    mixed_precision: str = setting("auto", one_of(PRECISIONS))
    intra_op_threads: int = setting(0, at_least(0))  # threads inside one op; 0 = one per available core
    inter_op_threads: int = setting(0, at_least(0))  # ops run at once; 0 = min(2, cores)


@dataclass(frozen=True)
class PostprocessingConfig:
    # The in-graph candidate filter before NMS; evaluation.score_threshold decides what is kept.
    candidate_score_threshold: float = setting(defaults.CANDIDATE_SCORE_THRESHOLD, within(0, 1))
    pre_nms_top_k: int = setting(defaults.PRE_NMS_TOP_K, at_least(1))  # per pyramid level
    nms_iou: float = setting(defaults.NMS_IOU, within(0, 1))
    max_detections: int = setting(defaults.MAX_DETECTIONS, at_least(1))
    # 0.83-0.875 helped in the competition
    box_shrink: float = setting(defaults.BOX_SHRINK, within(0, 1, low_open=True))
    # > 0: each kept box is the score-weighted mean of the candidates overlapping it this much (box voting).
    box_voting_iou: float = setting(defaults.BOX_VOTING_IOU, within(0, 1))
    flip_tta: bool = defaults.FLIP_TTA
    image_gating: str = setting(defaults.IMAGE_GATING, IMAGE_GATINGS)  # other than "none" needs model.image_head
    image_gate_threshold: float = setting(defaults.IMAGE_GATE_THRESHOLD, within(0, 1))


@dataclass(frozen=True)
class EvaluationConfig:
    score_threshold: float = setting(0.3, within(0, 1))  # boxes kept in the RSNA metric and the submission
    sweep: tuple[float, float, float] = setting(  # start, stop, step
        (0.05, 0.95, 0.05), Rule(lambda sweep: 0 <= sweep[0] < sweep[1] <= 1 and sweep[2] > 0,
                                 "needs 0 <= start < stop <= 1, step > 0"))
    batch_size: int = setting(8, at_least(1))
    num_overlays: int = setting(6, at_least(0))


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    postprocessing: PostprocessingConfig = field(default_factory=PostprocessingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# Rules over several keys, checked once every key is in its own range.
CROSS_FIELD_RULES = (
    CrossFieldRule(("data.validation_fold", "data.num_folds"), lambda c: c.data.validation_fold < c.data.num_folds,
                   "must be below data.num_folds"),
    CrossFieldRule(("anchors.sizes", "anchors.levels"), lambda c: len(c.anchors.sizes) == len(c.anchors.levels),
                   "needs one size per level"),
    CrossFieldRule(("anchors.negative_iou", "anchors.positive_iou"),
                   lambda c: c.anchors.negative_iou <= c.anchors.positive_iou, "must be at most anchors.positive_iou"),
    CrossFieldRule(("training.warmup_steps", "training.steps"), lambda c: c.training.warmup_steps < c.training.steps,
                   "must be below training.steps"),
    CrossFieldRule(("training.time_budget_minutes", "training.strategy"),
                   lambda c: not (c.training.strategy == "multi_worker" and c.training.time_budget_minutes),
                   "must be 0 with training.strategy: multi_worker (each worker would time itself; "
                   "set training.steps)"),
    CrossFieldRule(("postprocessing.image_gating", "model.image_head"),
                   lambda c: c.postprocessing.image_gating == "none" or c.model.image_head,
                   "needs model.image_head: true (gating reads the image-level probability); set "
                   "postprocessing.image_gating: none or model.image_head: true"),
)


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


def _update_old_keys(mapping: dict, source: str) -> dict:
    """`mapping` without the RETIRED_KEYS it holds and with the RENAMED_KEYS under their new
    names, each with a note on stderr. A file that has both names of a key is refused."""
    kept = {section: dict(values) if isinstance(values, dict) else values for section, values in mapping.items()}
    for key, reason in RETIRED_KEYS.items():
        section, name = key.split(".")
        if isinstance(kept.get(section), dict) and name in kept[section]:
            del kept[section][name]
            print(f"note: {source}: {key} is retired and ignored: {reason}", file=sys.stderr)
    for old, new in RENAMED_KEYS.items():
        (section, name), (new_section, new_name) = old.split("."), new.split(".")
        if not isinstance(kept.get(section), dict) or name not in kept[section]:
            continue
        target = kept.setdefault(new_section, {})
        if target is None:
            target = kept[new_section] = {}
        if not isinstance(target, dict):
            continue  # the type error is reported on the section itself
        if new_name in target:
            raise ConfigError(f"{old} and {new} are both set; {old} is the old name of {new}: keep only {new}")
        target[new_name] = kept[section].pop(name)
        print(f"note: {source}: {old} is now {new}", file=sys.stderr)
    return kept


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"--set {text}: must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip().split("."), _parse_yaml(raw)
    except yaml.YAMLError as error:
        shown = text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"
        raise ConfigError(f"--set {shown}: the value is not valid YAML: {error}") from None


def _check_override(text: str, keys: list[str], value) -> None:
    """The value of one override checked on its own against the schema and the field rules, so that
    a wrong key, type or value given with --set is an error naming `--set <text>`, not the file."""
    if ".".join(keys) in RETIRED_KEYS:
        return  # dropped with a note, as in a file
    nested = value
    for part in reversed(keys):
        nested = {part: nested}
    try:
        problems = violations(_build(Config, nested, ""))  # the other keys keep their (valid) defaults
        if problems:
            raise ConfigError(problems[0])
    except ConfigError as error:
        raise ConfigError(f"--set {text}: {error}") from None


def _mentions(message: str, key: str) -> bool:
    """Whether `message` names `key` or a key inside it (`training` covers `training.steps`)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message) is not None


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


def _config(mapping: dict, source: str) -> Config:
    """`mapping` validated into a Config; a ConfigError's message starts with the dotted key."""
    config = _build(Config, _update_old_keys(mapping, source), "")
    if config.training.steps >= 1:
        config = _clamp_warmup(config, source)
    problems = violations(config, CROSS_FIELD_RULES)
    if problems:
        raise ConfigError(problems[0])
    return config


def config_from_dict(mapping: dict, source: str = "<dict>") -> Config:
    try:
        return _config(mapping, source)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, validate, return a Config.

    An error names what caused it: `--set <override>` for an override that is wrong on its own
    (form, key, type or value), the file for the file's own keys, and the file with the overrides
    involved for a rule broken by their combination (e.g. a cross-field rule).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        mapping = _parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
                          "save the file as UTF-8") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    mapping = _update_old_keys(mapping, str(path))
    overridden = {}  # dotted key -> the override as given
    for override in overrides:
        keys, value = _parse_override(override)
        if ".".join(keys) in RENAMED_KEYS:
            renamed = RENAMED_KEYS[".".join(keys)]
            print(f"note: --set {override}: {'.'.join(keys)} is now {renamed}", file=sys.stderr)
            keys = renamed.split(".")
        _check_override(override, keys, value)
        overridden[".".join(keys)] = override
        if is_path(".".join(keys), value):
            value = absolute_path(value, Path.cwd())
        node = mapping
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: {part} is not a section, so --set {override} cannot apply")
        node[keys[-1]] = value
    try:
        config = _config(mapping, str(path))
    except ConfigError as error:
        involved = "".join(f" with --set {text}" for key, text in overridden.items() if _mentions(str(error), key))
        raise ConfigError(f"{path}{involved}: {error}") from None
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
    write_text_atomically(path, yaml.safe_dump(to_dict(config), sort_keys=False))
