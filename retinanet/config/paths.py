"""The file-system paths of a config (see `retinanet.config`): which keys hold them, and how they
are made absolute when read and portable when written."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

# Config values that are file system paths; "" (unset) and the words of NON_PATH_VALUES are not paths.
PATH_KEYS = ("data.root", "data.split_file", "data.cache_dir", "training.run_root", "model.weights")
NON_PATH_VALUES = ("", "none", "imagenet")


def is_path(key: str, value) -> bool:
    return key in PATH_KEYS and isinstance(value, str) and value not in NON_PATH_VALUES


def absolute_path(value: str, base: Path) -> str:
    """`value` made absolute against `base` (already absolute values unchanged), without '..' parts."""
    return os.path.normpath(base / Path(value).expanduser())


def map_paths(config, change):
    """`config` with `change(key, value)` applied to every path value (see `is_path`)."""
    sections = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if is_path(key, value):
            sections.setdefault(section, {})[name] = change(key, value)
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)
                                          for section, values in sections.items()})


def portable_path(value: str, directory: Path) -> str:
    """An absolute form of `value` (relative ones against the working directory), written relative
    to `directory` when it lies inside it."""
    # Real paths on both sides, so that a symbolic link in either does not hide the relation.
    absolute = Path(os.path.realpath(absolute_path(value, Path.cwd())))
    return str(absolute.relative_to(directory)) if absolute.is_relative_to(directory) else str(absolute)
