"""Writes that keep the previous good file when they fail (a full disk, a read-only directory).

Every file that a later step trusts (weights, checkpoints, the image cache and its index, run
records) is written to a temporary file in the same directory and renamed over the old one
only once it is complete: a rename within one directory is atomic, so a reader sees the old
file or the new one, never half of one. A failed write removes its temporary and raises
`FileWriteError`, which names the file and says whether the previous version survives. The
training log grows a line at a time (`append_line`): a failed append cuts it back to the lines
it held. Directories are made by `make_directory`, and a SavedModel (a directory of files) is
written whole or not at all by `fill_directory`. Every command reports a FileWriteError as
`error: cannot write <path>: <reason>` (retinanet/commands/common.py).

TensorFlow is not imported here (the commands import this module before it loads); its file
system raises OpError (PermissionDeniedError, FailedPreconditionError...), counted as a failed
write once TensorFlow is loaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from retinanet.errors import UserError


class FileWriteError(UserError, RuntimeError):
    """A file could not be written; the message names it and what was kept."""


def _write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError, and TensorFlow's OpError once TensorFlow is loaded."""
    tensorflow = sys.modules.get("tensorflow")
    return (OSError,) if tensorflow is None else (OSError, tensorflow.errors.OpError)


def temporary_path(path: Path) -> Path:
    """`best.weights.h5` -> `best.tmp.weights.h5`: beside the target, and with its full suffix
    (Keras insists on `.weights.h5`); `remove_stale_temporaries` knows the pattern."""
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f"{stem}.tmp{dot}{suffixes}")


def _failure(path: Path, reason: str, existed: bool) -> FileWriteError:
    kept = f"the previous {path.name} is unchanged" if existed else "nothing was written there"
    return FileWriteError(f"cannot write {path}: {reason}; {kept}. Free some disk space or make the "
                          "directory writable, then run again")


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    # TensorFlow prefixes the op's function name, e.g. "{{function_node __wrapped__SaveV2...}}".
    text = getattr(error, "message", None) or str(error)
    return re.sub(r"\{\{[^}]*\}\}\s*", "", text).strip()


def make_directory(path: str | Path) -> Path:
    """`path.mkdir(parents=True, exist_ok=True)`, with a FileWriteError naming `path` if it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _failure(path, _reason(error), existed=False) from error
    return path


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
    except _write_errors() as error:
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


def append_line(path: str | Path, line: str, durable: bool = False) -> None:
    """Append `line` and a newline to `path` (a log) in one write. A failed append cuts the file
    back to the lines it held, so that no half line is left behind, and raises FileWriteError.
    `durable` also flushes it to the disk (fsync) before returning: the line survives a power cut."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "ab") as file:
            file.write((line + "\n").encode())
            if durable:
                file.flush()
                os.fsync(file.fileno())
    except OSError as error:
        try:
            os.truncate(path, size)
        except OSError:
            pass
        raise FileWriteError(f"cannot write {path}: {_reason(error)}; its earlier lines are kept. Free some "
                             "disk space or make the directory writable, then run again") from error


def write_failure(path: str | Path, error: BaseException) -> FileWriteError:
    """The FileWriteError for `error` (an OSError or TensorFlow's OpError) raised while writing `path`."""
    path = Path(path)
    return _failure(path, _reason(error), path.exists())


@contextlib.contextmanager
def scratch_directory(path: str | Path) -> Iterator[Path]:
    """A scratch directory beside `path` (the file a conversion writes), removed on exit; a
    FileWriteError naming `path` if it cannot be made."""
    path = Path(path)
    try:
        scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as error:
        raise write_failure(path, error) from error
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fill_directory(directory: str | Path, write: Callable[[Path], object], last: str | None = None) -> None:
    """Call `write(scratch)` on a scratch directory inside `directory` (made if missing), then
    move what it wrote into `directory`, replacing entries of the same names, `last` last (a
    SavedModel's saved_model.pb: what loaders look for). A failed `write` removes the scratch
    and leaves `directory` as it was; FileWriteError names `directory`."""
    directory = make_directory(directory)
    existed = any(True for _ in directory.iterdir())
    try:
        scratch = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp."))
    except OSError as error:
        raise _failure(directory, _reason(error), existed) from error
    try:
        write(scratch)
        for entry in sorted(scratch.iterdir(), key=lambda entry: entry.name == last):
            target = directory / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    except _write_errors() as error:
        raise _failure(directory, _reason(error), existed) from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def save_weights_atomically(model, path: str | Path) -> None:
    """`model.save_weights` to a `.weights.h5` path, atomically."""
    replace_atomically(path, model.save_weights)


def save_checkpoint(manager, step: int) -> str:
    """`manager.save(checkpoint_number=step)`, with a named error if it fails.

    TensorFlow writes the tensors into `<prefix>_temp/`, moves them into place, and only then
    rewrites the `checkpoint` state file (atomically) and deletes checkpoints beyond
    `max_to_keep`: a failed write leaves the previous checkpoints and the state file as they
    were, so `--resume` continues from the latest complete one. Its temporary is removed here.
    """
    previous = manager.latest_checkpoint
    try:
        return manager.save(checkpoint_number=step)
    except _write_errors() as error:
        prefix = Path(manager.directory) / f"ckpt-{step}"
        temporary = prefix.with_name(f"{prefix.name}_temp")
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        kept = (f"the latest complete checkpoint is still {previous}" if previous
                else "no earlier checkpoint exists")
        raise FileWriteError(f"cannot write {prefix}: {_reason(error)}; {kept}. Free some "
                             "disk space or make the directory writable, then continue with --resume") from error


def json_ready(value):
    """Nested results -> what JSON holds: NaN and infinities become null, dict keys strings, numpy
    scalars and tuples Python numbers and lists."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's scalars are Real too
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if math.isfinite(value) else None


def write_json_atomically(path: Path, document: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename: a kill never leaves half a file,
    a full disk never leaves a broken one (FileWriteError). Values are written as they are (NaN as
    `NaN`, which Python reads back): pass `json_ready(document)` for strict JSON."""
    write_text_atomically(path, json.dumps(document, indent=2))
