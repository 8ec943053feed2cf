"""A quiet TensorFlow start: no CUDA probe error on a machine without an NVIDIA GPU.

When TensorFlow is imported and first lists its devices, it prints
- lines logged before absl's logging is set up, which ignore TF_CPP_MIN_LOG_LEVEL (the oneDNN
  notice, "Could not find cuda drivers on your machine"), with absl's notice about them;
- on a machine without a GPU, "failed call to cuInit: ... UNKNOWN ERROR (303)" at ERROR level:
  it only means that there is no GPU, but a newcomer reads it as a failure.

`install()` runs when the package is imported, before anything imports TensorFlow. It sets
TF_CPP_MIN_LOG_LEVEL to 2 (info and warnings hidden, errors shown) unless the user set it, and
makes the first `import tensorflow` (and its device probe) write its stderr through `keep_line`:
TensorFlow's log lines below that level are dropped (what the level asks for), and so is the
cuInit failure when no NVIDIA device exists and the user did not choose the level. Every other
line, any other error included, is written to stderr after the import. Later output is never
touched. A user who sets TF_CPP_MIN_LOG_LEVEL=0 sees everything TensorFlow prints.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = "2"
# absl's log prefix: severity letter, then the date as MMDD ("E0000 00:00:17... cuda_platform.cc:52] ...").
_LOG_LINE = re.compile(r"^([IWEF])\d{4} ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
PRE_INIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CUDA_PROBE_FAILURE = "failed call to cuInit"
# Where a GPU shows itself: NVIDIA's device files, and WSL2's GPU bridge.
GPU_DEVICE_PATTERNS = ("/dev/nvidia*", "/dev/dxg")


def keep_line(line: str, *, min_level: int, hide_cuda_probe: bool) -> bool:
    """Whether a stderr line of TensorFlow's start is shown. Lines that are not TensorFlow's log
    (Python warnings, tracebacks) are always kept."""
    if line.startswith(PRE_INIT_NOTICE):
        return min_level == 0
    match = _LOG_LINE.match(line)
    if match is None:
        return True
    if _SEVERITY[match[1]] < min_level:
        return False
    return not (hide_cuda_probe and CUDA_PROBE_FAILURE in line)


def gpu_device_present() -> bool:
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_PATTERNS)


@contextlib.contextmanager
def filtered_stderr(keep):
    """Collect what is written to file descriptor 2 (C++ code included) and write the lines that
    `keep(line)` accepts once the block ends, even when it raises."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if keep(line)))
            sys.stderr.flush()


class _FilteredLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with stderr filtered, followed by the device probe."""

    def __init__(self, loader, keep):
        self.loader = loader
        self.keep = keep

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the module keeps its real loader
        with filtered_stderr(self.keep):
            self.loader.exec_module(module)
            # The CUDA probe (cuInit) runs here, at the first listing of devices. Listing them
            # does not start the runtime: threads and visible devices can still be set.
            module.config.list_physical_devices()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    def __init__(self, keep):
        self.keep = keep

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders find it from here on
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self.keep)
        return spec


def install(environ=os.environ) -> None:
    """Set the default log level and filter TensorFlow's start (see the module docstring). Does
    nothing when TensorFlow is already imported."""
    user_level = environ.get(LEVEL_VARIABLE)
    environ.setdefault(LEVEL_VARIABLE, DEFAULT_LEVEL)
    if "tensorflow" in sys.modules or any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        return
    try:
        min_level = int(environ[LEVEL_VARIABLE])
    except ValueError:
        min_level = 0  # TensorFlow reads a non-number as 0
    hide_cuda_probe = user_level is None and not gpu_device_present()

    def keep(line: str) -> bool:
        return keep_line(line, min_level=min_level, hide_cuda_probe=hide_cuda_probe)

    sys.meta_path.insert(0, _QuietTensorFlowImport(keep))
