"""Fold ensembles: several runs, or a cross-validation directory, behind one Detector.

`retinanet infer`, `evaluate` and `export` take `--run-dir` once per run. A directory holding
`fold_<k>/` run directories (what `retinanet cross-validate` writes) stands for every fold's
`best.weights.h5`, with the parent's `threshold.json` (the out-of-fold threshold; each fold's
own, chosen on its validation, belongs to that fold's weights alone). The models
run on the same preprocessed image, so the runs must agree on `AGREEING_KEYS`; their passes
(flip TTA mirrors included) are fused by the one `Postprocessor` with weighted box fusion and
their image probabilities averaged. Post-processing and evaluation settings are the first run's.

The threshold of an ensemble: `--threshold`, else the `threshold.json` of the one run or the
cross-validation directory given, else (several directories given) the first run's
evaluation.score_threshold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from retinanet.config import Config, to_dict
from retinanet.data.rsna import read_split_file
from retinanet.run_directory import (BEST_WEIGHTS, CONFIG_FILE, FOLD_DIRECTORY, SPLIT_FILE, ModelLoadError, ModelSource,
                                     load_run_config, resolve_source, source_from_run_dir)

# What every model of an ensemble must share: they see one preprocessed image and their
# predictions are decoded on one set of anchors into one set of classes.
AGREEING_KEYS = ("preprocessing", "anchors", "model.num_classes", "model.image_head")


@dataclass(frozen=True)
class EnsembleSource:
    """The models of a Detector: one `ModelSource` per model (one for a single run), and the
    directory whose `threshold.json` holds their threshold (None: several runs, no common one)."""

    sources: tuple[ModelSource, ...]
    threshold_dir: Path | None

    @property
    def config(self) -> Config:
        """The first run's config: its preprocessing, post-processing and evaluation settings apply."""
        return self.sources[0].config


# What may change after training: the weights fix the rest (input, anchors, model, loss).
AFTER_TRAINING_SECTIONS = ("postprocessing", "evaluation")


def with_overrides(ensemble: EnsembleSource, overrides) -> EnsembleSource:
    """`ensemble` with `section.key=value` overrides of AFTER_TRAINING_SECTIONS applied to every
    model's config (ConfigError naming an override of another section)."""
    overrides = list(overrides)
    if not overrides:
        return ensemble
    from retinanet.config import ConfigError, load_config

    for override in overrides:
        if override.split(".", 1)[0].strip() not in AFTER_TRAINING_SECTIONS:
            raise ConfigError(f"--set {override}: only {' and '.join(f'{name}.*' for name in AFTER_TRAINING_SECTIONS)} "
                              "can change after training (the weights fix the rest)")
    sources = tuple(dataclasses.replace(source, config=load_config(source.config_path, overrides))
                    for source in ensemble.sources)
    return dataclasses.replace(ensemble, sources=sources)


def fold_run_dirs(directory: str | Path) -> list[Path]:
    """The `fold_<k>/` run directories (holding a config.yaml) of a cross-validation directory, by k."""
    directory = Path(directory)
    folds = [(int(match.group(1)), path) for path in directory.iterdir() if path.is_dir()
             for match in [FOLD_DIRECTORY.fullmatch(path.name)] if match and (path / CONFIG_FILE).is_file()]
    return [path for _, path in sorted(folds)]


def is_cross_validation_dir(directory: str | Path) -> bool:
    directory = Path(directory)
    return directory.is_dir() and bool(fold_run_dirs(directory))


def fold_sources(directory: str | Path) -> list[ModelSource]:
    """Every fold's config and best weights; ModelLoadError naming the fold without them."""
    sources = []
    for run_dir in fold_run_dirs(directory):
        weights = run_dir / BEST_WEIGHTS
        if not weights.is_file():
            raise ModelLoadError(f"{run_dir}: no {BEST_WEIGHTS} (is the fold's training finished? "
                                 "`retinanet cross-validate` resumes it)")
        sources.append(ModelSource(load_run_config(run_dir / CONFIG_FILE), run_dir / CONFIG_FILE, weights, run_dir))
    return sources


def config_value(config: Config, key: str):
    """`config` at a dotted key, e.g. "model.num_classes", as plain data."""
    value = to_dict(config)
    for part in key.split("."):
        value = value[part]
    return value


def check_agreement(sources) -> None:
    """ModelLoadError naming the run and the key where a model differs from the first one."""
    first = sources[0]
    for source in sources[1:]:
        for key in AGREEING_KEYS:
            expected, found = config_value(first.config, key), config_value(source.config, key)
            if expected != found:
                raise ModelLoadError(f"run {source.run_dir} cannot join an ensemble with run {first.run_dir}: "
                                     f"{key} is {found} there and {expected} here")


def resolve_ensemble(*, checkpoint=None, run_dir=None, config_path=None) -> EnsembleSource:
    """What `--checkpoint [--config]` or one or more `--run-dir` name; `run_dir` is a path or a list."""
    run_dirs = run_dir if isinstance(run_dir, (list, tuple)) else None
    if run_dirs is None or (len(run_dirs) == 1 and not is_cross_validation_dir(run_dirs[0])):
        single = run_dirs[0] if run_dirs else run_dir
        source = resolve_source(checkpoint=checkpoint, run_dir=single, config_path=config_path)
        return EnsembleSource((source,), source.run_dir)
    if checkpoint is not None or config_path is not None:
        raise ModelLoadError("give either a checkpoint or run directories")
    sources = []
    for directory in run_dirs:
        sources += fold_sources(directory) if is_cross_validation_dir(directory) else [source_from_run_dir(directory)]
    check_agreement(sources)
    threshold_dir = Path(run_dirs[0]) if len(run_dirs) == 1 else None
    return EnsembleSource(tuple(sources), threshold_dir)


def trained_patients(source: ModelSource) -> set[str] | None:
    """The patients a run trained on: those of its split.csv outside its validation fold (None
    without a split.csv). data.max_images may have left some of them out: this errs on the safe side."""
    path = Path(source.run_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    folds = read_split_file(path)
    return set(folds.loc[folds["fold"] != source.config.data.validation_fold, "patientId"])


def check_held_out(ensemble: EnsembleSource, patient_ids) -> list[str]:
    """ModelLoadError when a model trained on one of `patient_ids` (its metric would be inflated);
    returns the runs that could not be checked (no split.csv)."""
    patient_ids, unchecked = set(patient_ids), []
    for source in ensemble.sources:
        trained = trained_patients(source)
        if trained is None:
            unchecked.append(str(source.run_dir))
            continue
        seen = sorted(patient_ids & trained)
        if seen:
            raise ModelLoadError(f"run {source.run_dir} trained on {len(seen)} of the {len(patient_ids)} evaluated "
                                 f"patients (e.g. {seen[0]}): evaluate an ensemble on patients none of its runs "
                                 "trained on (--split FILE, or --data DIR)")
    return unchecked
