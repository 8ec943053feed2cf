"""Writes that keep the previous good file when they fail (a full disk, a read-only directory).

Every file that a later step trusts (weights, checkpoints, the image cache and its index, run
records) is written to a temporary file in the same directory and renamed over the old one
only once it is complete: a rename within one directory is atomic, so a reader sees the old
file or the new one, never half of one. A failed write removes its temporary and raises
`FileWriteError`, which names the file and says whether the previous version survives. The
training log grows a line at a time (`append_line`): a failed append cuts it back to the lines
it held.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

import tensorflow as tf

from retinanet.errors import UserError


class FileWriteError(UserError, RuntimeError):
    """A file could not be written; the message names it and what was kept."""


def temporary_path(path: Path) -> Path:
    """`best.weights.h5` -> `best.tmp.weights.h5`: beside the target, and with its full suffix
    (Keras insists on `.weights.h5`); `remove_stale_temporaries` knows the pattern."""
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f"{stem}.tmp{dot}{suffixes}")


def _failure(path: Path, reason: str, existed: bool) -> FileWriteError:
    kept = f"the previous {path.name} is unchanged" if existed else "nothing was written there"
    return FileWriteError(f"could not write {path}: {reason}; {kept}. Free some disk space or make the "
                          "directory writable, then run again")


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    # TensorFlow prefixes the op's function name, e.g. "{{function_node __wrapped__SaveV2...}}".
    text = getattr(error, "message", None) or str(error)
    return re.sub(r"\{\{[^}]*\}\}\s*", "", text).strip()


def _remove_temporary(temporary: Path) -> None:
    """Remove what a failed write left; a cleanup that fails too must not hide the first error."""
    try:
        if temporary.is_file() or temporary.is_symlink():
            temporary.unlink()
    except OSError:
        pass


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call `write(temporary)` and rename the temporary over `path`; on an OSError remove the
    temporary and raise FileWriteError (`path` itself is never touched by a failed write)."""
    path = Path(path)
    existed = path.exists()
    temporary = temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        _remove_temporary(temporary)
        raise _failure(path, _reason(error), existed) from error
    except BaseException:
        _remove_temporary(temporary)
        raise


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            file.write(data)

    replace_atomically(path, write)


def write_text_atomically(path: str | Path, text: str) -> None:
    write_bytes_atomically(path, text.encode())


def append_line(path: str | Path, line: str) -> None:
    """Append `line` and a newline to `path` (a log). A failed append cuts the file back to the
    lines it held, so that no half line is left behind, and raises FileWriteError."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "ab") as file:
            file.write((line + "\n").encode())
    except OSError as error:
        try:
            os.truncate(path, size)
        except OSError:
            pass
        raise FileWriteError(f"could not append to {path}: {_reason(error)}; its earlier lines are kept. Free some "
                             "disk space or make the directory writable, then run again") from error


def save_weights_atomically(model, path: str | Path) -> None:
    """`model.save_weights` to a `.weights.h5` path, atomically."""
    replace_atomically(path, model.save_weights)


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """`manager.save(checkpoint_number=step)`, with a named error if it fails.

    TensorFlow writes the tensors into `<prefix>_temp/`, moves them into place, and only then
    rewrites the `checkpoint` state file (atomically) and deletes checkpoints beyond
    `max_to_keep`: a failed write leaves the previous checkpoints and the state file as they
    were, so `--resume` continues from the latest complete one. Its temporary is removed here.
    """
    previous = manager.latest_checkpoint
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as error:
        prefix = Path(manager.directory) / f"ckpt-{step}"
        temporary = prefix.with_name(f"{prefix.name}_temp")
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        kept = (f"the latest complete checkpoint is still {previous}" if previous
                else "no earlier checkpoint exists")
        raise FileWriteError(f"could not write the checkpoint {prefix}: {_reason(error)}; {kept}. Free some "
                             "disk space or make the directory writable, then continue with --resume") from error
