"""What training keeps in its run directory to be recoverable (the directory's layout and the files
that evaluation and inference read are `retinanet.run_directory`'s).

Recovery rests on three rules kept here:
- no weights file or checkpoint is written with a non-finite value in it (`non_finite_variables`),
  so the latest checkpoint is always one to resume from (`last_finite_checkpoint` checks old ones);
- `validation.json` records the step whose checkpoint is followed by a validation (before that
  checkpoint is written) and the last step whose validation results (log line, best weights) are
  complete (after them): a run killed during that validation re-runs it on resume;
- on resume, the log keeps only what the restored state has seen, and half-written temporaries
  (`ckpt-N_temp/` from a kill during a checkpoint write, `*.tmp.weights.h5`) are removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from retinanet.run_directory import (CHECKPOINTS, LOG, TENSORBOARD, THRESHOLD_FILE, VALIDATION_STATE, WEIGHTS_SUFFIX,
                                     read_log, run_entries, write_threshold)
from retinanet.runtime.safe_writes import FileWriteError, write_json_atomically, write_text_atomically


def remove_run(run_dir: Path) -> list[str]:
    """Delete the entries of an earlier run (only `RUN_ENTRIES`: other files are the user's); returns them."""
    removed = run_entries(run_dir)
    for name in removed:
        path = Path(run_dir) / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as error:
            raise FileWriteError(f"cannot write {path}: {error.strerror or error}; removing the earlier run in "
                                 f"{run_dir} stopped there. Make the directory writable, then run again") from error
    return removed


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what a write interrupted by a kill or a full disk leaves behind; returns the paths.

    TensorFlow writes a checkpoint into `checkpoints/<prefix>_temp/` and removes it once the
    checkpoint is complete; weights and JSON files are written as `*.tmp.weights.h5` and
    `*.tmp.json` and then renamed (retinanet/runtime/safe_writes.py), and so are the event files that a
    resume trims (`tensorboard/*/events.tmp.*`).
    """
    run_dir = Path(run_dir)
    stale = sorted(path for path in (run_dir / CHECKPOINTS).glob("*_temp") if path.is_dir())
    stale += sorted(run_dir.glob(f"*.tmp{WEIGHTS_SUFFIX}")) + sorted(run_dir.glob("*.tmp.json"))
    stale += sorted(run_dir.glob(f"{TENSORBOARD}/*/events.tmp.*"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return stale



def _validation_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / VALIDATION_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def last_validated_step(run_dir: Path) -> int:
    """The last step whose validation completed (0 if none).

    A run written before `validation.json` existed has only its log to tell.
    """
    state = _validation_state(run_dir)
    if state is not None:
        return int(state["last_validated_step"])
    return max((entry["step"] for entry in read_log(run_dir) if entry["split"] == "validation"), default=0)


def validation_due_step(run_dir: Path) -> int | None:
    """The step whose checkpoint was written to be validated next (None if none was)."""
    state = _validation_state(run_dir)
    return None if state is None else state.get("validation_due_step")


def record_validation_due(run_dir: Path, step: int) -> None:
    """Before writing the checkpoint of `step`: a validation of that step follows it."""
    write_json_atomically(Path(run_dir) / VALIDATION_STATE, {"last_validated_step": last_validated_step(run_dir),
                                                             "validation_due_step": int(step)})


def record_validated_step(run_dir: Path, step: int) -> None:
    """After the validation of `step` is logged and its best weights kept."""
    write_json_atomically(Path(run_dir) / VALIDATION_STATE, {"last_validated_step": int(step),
                                                             "validation_due_step": None})


def trim_log(run_dir: Path, step: int, validated_step: int) -> int:
    """Keep the log lines of what a run resumed at `step` has seen; returns how many were dropped.

    Training lines after `step` are replayed by the resumed run, and so is the validation of a
    step after `validated_step`: their earlier lines would otherwise appear twice. A line cut
    short by a kill is dropped too.
    """
    path = Path(run_dir) / LOG
    if not path.is_file():
        return 0
    limits = {"train": step, "validation": min(step, validated_step)}
    num_lines = sum(1 for line in path.read_text().splitlines() if line.strip())
    kept = [entry for entry in read_log(run_dir) if entry["step"] <= limits.get(entry["split"], step)]
    if len(kept) != num_lines:
        write_text_atomically(path, "".join(json.dumps(entry) + "\n" for entry in kept))
    return num_lines - len(kept)


def non_finite_variables(variables) -> list[str]:
    """The paths (or names) of the floating-point variables holding a NaN or an infinity."""
    bad = []
    for variable in variables:
        if tf.as_dtype(variable.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(variable))):
            bad.append(getattr(variable, "path", None) or variable.name)
    return bad


def checkpoint_is_finite(prefix: str | Path) -> bool:
    """Whether every floating-point tensor stored in a tf.train checkpoint is finite."""
    reader = tf.train.load_checkpoint(str(prefix))
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating and not np.isfinite(reader.get_tensor(name)).all():
            return False
    return True


def last_finite_checkpoint(prefixes) -> str | None:
    """The newest of `prefixes` (oldest first, as CheckpointManager.checkpoints) with finite weights.

    Checkpoints written by this package are checked before they are written; this also covers
    ones written before that check existed.
    """
    for prefix in reversed(list(prefixes)):
        if checkpoint_is_finite(prefix):
            return str(prefix)
    return None



def write_validation_threshold(run_dir: Path, step: int, scalars: dict) -> Path | None:
    """With new best weights validated at `step`: the threshold chosen on that validation
    (`scalars`' best_threshold) becomes the run's. A validation that scored no image chose none:
    the threshold.json of earlier weights is removed, so the config's applies. Returns the path
    written, or None."""
    threshold = scalars.get("best_threshold", float("nan"))
    if not np.isfinite(threshold):
        (Path(run_dir) / THRESHOLD_FILE).unlink(missing_ok=True)
        return None
    return write_threshold(run_dir, threshold, float(scalars["best_rsna_metric"]), "validation", step=step)
