"""A quiet TensorFlow start (retinanet.runtime.quiet_start): no CUDA probe error without a GPU, the user's
TF_CPP_MIN_LOG_LEVEL respected, real errors kept."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import REPOSITORY_ROOT
from retinanet.runtime.quiet_start import PRE_INIT_NOTICE, filtered_stderr, keep_line

# Lines TensorFlow 2.21 prints at its start on a CPU-only machine (timestamps and thread ids vary).
ONEDNN = ("I0000 00:00:1796191807.648146   32596 port.cc:153] oneDNN custom operations are on. You may see "
          "slightly different numerical results due to floating-point round-off errors.\n")
NO_DRIVER = "I0000 00:00:1796191807.648653   32596 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
CUINIT = ("E0000 00:00:1796191781.340291   31131 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)\n")
OTHER_ERROR = "E0000 00:00:1796191781.340291   31131 op_kernel.cc:1830] OP_REQUIRES failed at save_restore_v2_ops.cc\n"
WARNING = "W0000 00:00:1796191781.340291   31131 loader.cc:12] a warning\n"
PYTHON_WARNING = "/site-packages/x.py:3: UserWarning: something\n"


@pytest.mark.parametrize("line, level, hide_cuda_probe, kept", [
    (ONEDNN, 2, True, False), (ONEDNN, 0, False, True),
    (NO_DRIVER, 2, False, False), (NO_DRIVER, 0, True, True),
    (PRE_INIT_NOTICE + "\n", 1, True, False), (PRE_INIT_NOTICE + "\n", 0, False, True),
    (WARNING, 2, True, False), (WARNING, 1, True, True),
    (CUINIT, 2, True, False),  # no GPU and the default level: the probe's failure means no GPU
    (CUINIT, 2, False, True),  # a GPU machine, or a level the user chose: shown
    (CUINIT, 3, False, False),
    (OTHER_ERROR, 2, True, True), (OTHER_ERROR, 3, True, False),
    (PYTHON_WARNING, 3, True, True), ("Traceback (most recent call last):\n", 3, True, True),
])
def test_keep_line(line, level, hide_cuda_probe, kept):
    assert keep_line(line, min_level=level, hide_cuda_probe=hide_cuda_probe) is kept


def test_filtered_stderr_filters_what_cpp_writes_to_descriptor_2_and_keeps_the_rest(capfd):
    with filtered_stderr(lambda line: "drop" not in line):
        os.write(2, b"keep 1\ndrop this\nkeep 2\n")
    os.write(2, b"after: drop is not filtered any more\n")
    assert capfd.readouterr().err == "keep 1\nkeep 2\nafter: drop is not filtered any more\n"


def test_filtered_stderr_writes_the_kept_lines_when_the_block_raises(capfd):
    with pytest.raises(ImportError), filtered_stderr(lambda line: "drop" not in line):
        os.write(2, b"drop\nthe reason it failed\n")
        raise ImportError("broken")
    assert capfd.readouterr().err == "the reason it failed\n"


def _environment(level: str | None) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    environment["PYTHONPATH"] = str(REPOSITORY_ROOT)
    return environment | ({} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level})


def _infer_missing_input(tmp_path, level: str | None) -> subprocess.CompletedProcess:
    """A command that loads TensorFlow (and so probes for a GPU), then stops on a missing input."""
    return subprocess.run([sys.executable, "scripts/infer.py", "--checkpoint", str(tmp_path / "none.weights.h5"),
                           "--input", str(tmp_path / "missing.dcm")], capture_output=True, text=True,
                          cwd=REPOSITORY_ROOT, env=_environment(level), timeout=120)


def test_a_command_starts_without_tensorflows_cuda_probe_lines(tmp_path):
    completed = _infer_missing_input(tmp_path, None)
    assert completed.returncode == 2
    assert completed.stderr == f"error: input not found: {tmp_path / 'missing.dcm'}\n"


def _tensorflow_lines(stderr: str) -> list[str]:
    """TensorFlow's log lines without their time and thread: severity, source line and message."""
    lines = []
    for line in stderr.splitlines():
        match = re.match(r"^([IWEF])\d{4} [\d:.]+\s+\d+ (.*)$", line)
        if match:
            lines.append(f"{match[1]} {match[2]}")
        elif line.startswith(PRE_INIT_NOTICE):
            lines.append(line)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("level", ["0", "2"])
def test_a_user_set_level_shows_what_tensorflow_itself_shows(tmp_path, level):
    plain = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
                           capture_output=True, text=True, cwd=tmp_path, env=_environment(level), timeout=120)
    ours = _infer_missing_input(tmp_path, level)
    assert ours.returncode == 2 and "error: input not found" in ours.stderr
    expected = _tensorflow_lines(plain.stderr)
    if level == "2":  # the lines TensorFlow prints before it reads the level go as the level asks
        expected = [line for line in expected if line[0] in "EF"]
    assert _tensorflow_lines(ours.stderr) == expected
