"""K-fold cross-validation: one run per fold, then out-of-fold predictions, metric and threshold.

The parent directory holds
    config.yaml            the experiment's config (every fold's, but for data.validation_fold)
    split.csv              the patient folds, fixed once: every fold reads this one file
    fold_<k>/              a normal run directory, trained with data.validation_fold = k
    oof_predictions.csv    every held-out patient predicted by the fold that did not train on it
                           (see retinanet/evaluate/out_of_fold.py)
    oof_submission.csv     Kaggle format, the boxes kept at the out-of-fold threshold
    oof_metrics.json       the sweep, chosen threshold, metric and 95% bootstrap interval, per fold
    threshold.json         the out-of-fold threshold, in the format of a run's threshold.json
    summary.csv, summary.md, oof_threshold_sweep.png

It resumes: a fold whose run finished (final.weights.h5 written) is skipped, a fold stopped
after a checkpoint resumes from it, and a fold stopped before its first checkpoint starts again.
The out-of-fold predictions are made again only when a fold's best weights changed (they cost
one prediction pass over the training set). training.time_budget_minutes applies to each fold.
"""

from __future__ import annotations

import gc
import json
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import tensorflow as tf

from retinanet.config import Config, ConfigError, load_config, save_config, to_dict
from retinanet.data.split import prepare_split
from retinanet.detection.detections import keep_above
from retinanet.detection.metrics import sweep_thresholds
from retinanet.errors import UserError
from retinanet.evaluate.out_of_fold import analyse, read_predictions, summary_rows, write_predictions, write_summary
from retinanet.run_directory import (BEST_WEIGHTS, CHECKPOINTS, CONFIG_FILE, FINAL_WEIGHTS, SPLIT_FILE, THRESHOLD_FILE,
                                     HeldOutError, fold_dir, held_out_records, load_run_config, read_best_record,
                                     record_path, run_entries, write_threshold)
from retinanet.runtime.safe_writes import json_ready, make_directory, write_bytes_atomically, write_json_atomically

FINISHED_FILE = FINAL_WEIGHTS  # training writes it last: the run is complete
PREDICTIONS_FILE = "oof_predictions.csv"
SUBMISSION_FILE = "oof_submission.csv"
METRICS_FILE = "oof_metrics.json"
SUMMARY_CSV, SUMMARY_MARKDOWN = "summary.csv", "summary.md"
PLOT_FILE = "oof_threshold_sweep.png"


class CrossValidationError(UserError, ValueError):
    """A cross-validation that cannot go on; names the fold and the path."""


def parse_folds(text: str | None, num_folds: int) -> list[int]:
    """`--folds 0,2,4` -> [0, 2, 4]; None -> every fold of data.num_folds."""
    if text is None:
        return list(range(num_folds))
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CrossValidationError(f"--folds {text!r}: expected comma-separated fold numbers, e.g. 0,1,2") from None
    bad = [fold for fold in folds if not 0 <= fold < num_folds]
    if not folds or bad or len(set(folds)) != len(folds):
        raise CrossValidationError(f"--folds {text!r}: give distinct folds in [0, {num_folds}) "
                                   f"(data.num_folds is {num_folds})")
    return sorted(folds)


def fold_state(run_dir: Path) -> str:
    """"new" (no run there), "finished", "resume" (a checkpoint to continue from) or "restart"
    (a run stopped before its first checkpoint: nothing to continue from)."""
    run_dir = Path(run_dir)
    if not run_entries(run_dir):
        return "new"
    if (run_dir / FINISHED_FILE).is_file():
        return "finished"
    if tf.train.latest_checkpoint(str(run_dir / CHECKPOINTS)):
        return "resume"
    return "restart"


def _flat(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        flat.update(_flat(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def prepare_parent(config: Config, parent: Path, progress: bool = True) -> Config:
    """Fix the split and the config of a cross-validation in `parent`; returns the config every
    fold starts from. A parent that already holds a cross-validation must hold this config."""
    make_directory(parent)
    split_path = parent / SPLIT_FILE
    if not split_path.is_file():
        source = prepare_split(config, progress=progress).split_file  # created on first use
        write_bytes_atomically(split_path, source.read_bytes())
    base = replace(config, data=replace(config.data, split_file=str(split_path.resolve()), validation_fold=0))
    config_path = parent / CONFIG_FILE
    if config_path.is_file():
        # Compare what each would save, so that path spellings do not count as differences.
        candidate_path = parent / f".{CONFIG_FILE}.candidate"
        save_config(base, candidate_path)
        saved, candidate = _flat(to_dict(load_config(config_path))), _flat(to_dict(load_config(candidate_path)))
        candidate_path.unlink()
        differing = sorted(key for key in saved.keys() | candidate.keys() if saved.get(key) != candidate.get(key))
        if differing:
            shown = ", ".join(f"{key} ({saved.get(key)!r} there, {candidate.get(key)!r} now)" for key in differing[:3])
            raise CrossValidationError(f"{parent} holds a cross-validation of another config: {shown}"
                                       f"{', ...' if len(differing) > 3 else ''}; choose another --out")
    else:
        save_config(base, config_path)
    return load_config(config_path)


def _check_fold_config(run_dir: Path, fold: int, split_path: Path) -> None:
    """A run found in fold_<k>/ must be fold k's of this split (not a copied or mixed directory)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    data = load_config(path).data
    if data.validation_fold != fold:
        raise CrossValidationError(f"fold {fold}: {path} has data.validation_fold {data.validation_fold}")
    saved_split = run_dir / SPLIT_FILE
    if saved_split.is_file() and saved_split.read_bytes() != split_path.read_bytes():
        raise CrossValidationError(f"fold {fold}: {saved_split} differs from the cross-validation's {split_path}")


def train_fold(base: Config, parent: Path, fold: int, position: str, progress: bool = True) -> str:
    """Train, resume or skip fold `fold`; prints a progress line; returns its state before."""
    from retinanet.train.trainer import train

    run_dir = fold_dir(parent, fold)
    state = fold_state(run_dir)
    _check_fold_config(run_dir, fold, parent / SPLIT_FILE)
    if state == "finished":
        print(f"fold {fold} ({position}): finished earlier, skipped ({run_dir})", flush=True)
        return state
    action = {"new": "training", "resume": "resuming from its last checkpoint",
              "restart": "restarting (stopped before its first checkpoint)"}[state]
    print(f"fold {fold} ({position}): {action} in {run_dir}", flush=True)
    started = time.monotonic()
    fold_config = replace(base, data=replace(base.data, validation_fold=fold))
    if state == "resume":
        results = train(None, run_dir, resume=True, progress=progress)
    else:
        results = train(fold_config, run_dir, overwrite=state == "restart", progress=progress)
    best = read_best_record(run_dir)
    print(f"fold {fold} ({position}): done at step {results['step']} in {time.monotonic() - started:.0f} s; best "
          f"weights from step {best['step']}, validation RSNA metric {best.get('best_rsna_metric', float('nan')):.4f}",
          flush=True)
    # Each fold builds a new model: drop the last one's graph and memory.
    tf.keras.backend.clear_session()
    gc.collect()
    return state


def folds_held_out_records(parent: Path, folds: list[int]) -> dict:
    """{fold: its held-out records, from the split file saved with its run}; the folds must not overlap."""
    records_of, fold_of = {}, {}
    for fold in folds:
        run_dir = fold_dir(parent, fold)
        with _naming_fold(fold, parent):
            config = load_run_config(run_dir / CONFIG_FILE)
            records_of[fold] = held_out_records(config, run_dir / SPLIT_FILE, progress=False)
        for record in records_of[fold]:
            if record.patient_id in fold_of:
                raise CrossValidationError(f"fold {fold}: patient {record.patient_id} is held out by fold "
                                           f"{fold_of[record.patient_id]} too (the folds' split files differ)")
            fold_of[record.patient_id] = fold
    return records_of


def predict_fold(parent: Path, fold: int, records, progress: bool = True):
    """Fold `fold`'s best weights on its held-out `records` -> (records, {patient_id: (boxes,
    scores)} in original pixels, image probabilities [N] or None)."""
    from retinanet.evaluate.evaluation import predict_records
    from retinanet.serve.inference import Detector

    run_dir = fold_dir(parent, fold)
    if not (run_dir / BEST_WEIGHTS).is_file():
        raise CrossValidationError(f"fold {fold}: no {BEST_WEIGHTS} in {run_dir}")
    with _naming_fold(fold, parent):
        detector = Detector.load(run_dir=run_dir, threshold=0.0)  # every detection is kept anyway
        return predict_records(detector, records, progress)


def _weights_stamp(parent: Path, folds: list[int]) -> dict:
    """{fold: size and modification time of its best weights}: what the predictions come from."""
    stamp = {}
    for fold in folds:
        status = (fold_dir(parent, fold) / BEST_WEIGHTS).stat()
        stamp[str(fold)] = {"size": status.st_size, "mtime_ns": status.st_mtime_ns}
    return stamp


def write_out_of_fold_predictions(parent: Path, records_of: dict, progress: bool = True) -> dict:
    """Predict each fold's held-out patients into PREDICTIONS_FILE, unless it was written from the
    same best weights (a prediction pass over the training set is worth saving); returns the stamp."""
    stamp = _weights_stamp(parent, list(records_of))
    metrics_path = parent / METRICS_FILE
    if (parent / PREDICTIONS_FILE).is_file() and metrics_path.is_file() \
            and json.loads(metrics_path.read_text()).get("weights") == stamp:
        print(f"out-of-fold predictions are up to date with the folds' best weights: reusing {PREDICTIONS_FILE}")
        return stamp
    rows = []
    for fold, records in records_of.items():
        records, detections, probabilities = predict_fold(parent, fold, records, progress)
        for index, record in enumerate(records):
            probability = None if probabilities is None else float(probabilities[index])
            rows.append((record.patient_id, fold, *detections[record.patient_id], probability))
    write_predictions(parent / PREDICTIONS_FILE, sorted(rows, key=lambda row: row[0]))
    return stamp


def _all_patients(parent: Path) -> int:
    from retinanet.data.rsna import read_split_file

    return len(read_split_file(parent / SPLIT_FILE))


def out_of_fold(base: Config, parent: Path, folds: list[int], progress: bool = True) -> dict:
    """Pool the folds' predictions of their held-out patients; write the files of the module docstring."""
    from retinanet.evaluate.plots import plot_fold_sweeps
    from retinanet.data.submission import write_submission

    records_of = folds_held_out_records(parent, folds)
    stamp = write_out_of_fold_predictions(parent, records_of, progress)
    # The measures come from the file as written (coordinates rounded to 0.1 px), so that
    # anyone scoring the file finds the same numbers.
    predictions, fold_of, _ = read_predictions(parent / PREDICTIONS_FILE)
    ground_truth = dict(sorted((record.patient_id, record.boxes) for records in records_of.values()
                               for record in records))
    analysis = analyse(ground_truth, predictions, fold_of, sweep_thresholds(base.evaluation.sweep),
                       base.evaluation.score_threshold)
    analysis["num_training_patients"] = _all_patients(parent)
    threshold = analysis["threshold"]
    write_submission(parent / SUBMISSION_FILE, keep_above(predictions, threshold), list(ground_truth))
    written = (PREDICTIONS_FILE, SUBMISSION_FILE, METRICS_FILE, THRESHOLD_FILE, SUMMARY_CSV, SUMMARY_MARKDOWN,
               PLOT_FILE)
    analysis["files"] = {name: str(parent / name) for name in written}
    analysis["weights"] = stamp
    # Its files lie beside it: stored as their names (see `record_path`).
    write_json_atomically(parent / METRICS_FILE, json_ready(
        {**analysis, "files": {name: record_path(path, parent) for name, path in analysis["files"].items()}}))
    # The format of a run's threshold.json; ensembles of the folds read this one, not the folds' own.
    write_threshold(parent, threshold, analysis["rsna_metric"], "out-of-fold predictions",
                    metrics_file=parent / METRICS_FILE)
    best_steps = {fold: read_best_record(fold_dir(parent, fold))["step"] for fold in folds}
    analysis["summary"] = write_summary(summary_rows(analysis, best_steps), parent / SUMMARY_CSV,
                                        parent / SUMMARY_MARKDOWN)
    thresholds = [item["score_threshold"] for item in analysis["sweep"]]
    curves = {f"fold {item['fold']}": (thresholds, item["sweep"]) for item in analysis["folds"]}
    curves["out-of-fold"] = (thresholds, [item["rsna_metric"] for item in analysis["sweep"]])
    plot_fold_sweeps(curves, threshold, parent / PLOT_FILE)
    return analysis


@contextmanager
def _naming_fold(fold: int, parent: Path):
    """The errors of training and prediction name the problem: add which fold and directory."""
    from retinanet.data.dicom import DicomReadError
    from retinanet.data.rsna import LabelError
    from retinanet.serve.inference import InputError, ModelLoadError
    from retinanet.model.backbone import WeightsError
    from retinanet.runtime.safe_writes import FileWriteError
    from retinanet.train.trainer import TrainingError

    try:
        yield
    except (TrainingError, ConfigError, LabelError, DicomReadError, WeightsError, ModelLoadError, HeldOutError,
            InputError, FileWriteError) as error:
        raise CrossValidationError(f"fold {fold} ({fold_dir(parent, fold)}): {error}") from None


def cross_validate(config: Config, parent: str | Path, folds: list[int] | None = None, progress: bool = True) -> dict:
    """Train (or resume, or skip) each fold, then the out-of-fold part; returns its analysis
    (see `retinanet.evaluate.out_of_fold.analyse`, plus "num_training_patients", "files", "summary")."""
    parent = Path(parent)
    folds = list(range(config.data.num_folds)) if folds is None else folds
    base = prepare_parent(config, parent, progress)
    for position, fold in enumerate(folds, start=1):
        with _naming_fold(fold, parent):
            train_fold(base, parent, fold, f"{position}/{len(folds)}", progress)
    return out_of_fold(base, parent, folds, progress)


def default_parent(config: Config, config_path: str | Path) -> Path:
    """`<training.run_root>/<config name>-cv`: a fixed name, so that running again resumes."""
    return Path(config.training.run_root) / f"{Path(config_path).stem}-cv"


def format_report(analysis: dict) -> str:
    """The printed summary: the table, the out-of-fold metric with its interval, the files."""
    low, high = analysis["interval"]
    lines = [analysis["summary"].rstrip(), "",
             f"Out-of-fold RSNA metric {analysis['rsna_metric']:.4f} (95% bootstrap interval over patients "
             f"{low:.4f}-{high:.4f}) at score threshold {analysis['threshold']:.2f}, chosen on the out-of-fold sweep; "
             f"{analysis['rsna_metric_configured']:.4f} at the configured {analysis['configured_threshold']:.2f}",
             f"{analysis['num_patients']} of {analysis['num_training_patients']} training patients predicted "
             "out of fold"]
    lines += [f"{name:22s} {path}" for name, path in analysis["files"].items()]
    return "\n".join(lines)
