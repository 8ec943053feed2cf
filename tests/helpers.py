"""What the tests share besides fixtures (those are `conftest.py`'s): the repository's paths, the one
tiny config, running scripts and benchmarks in this process, and checking a clean error."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import textwrap
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPOSITORY_ROOT / "scripts"
BENCHMARKS = REPOSITORY_ROOT / "benchmarks"
# The benchmarks' modules import each other by plain names (`import peer`), as running
# `python benchmarks/<name>` allows; the tests import them the same way. Last on the path: they
# shadow nothing.
sys.path.append(str(BENCHMARKS))
SYNTHETIC_SIZE = 256

# The tests' one tiny model and run: 64 px input, anchors of 8-128 px (the boxes of 128-256 px
# synthetic films), a slim head (16 channels, one convolution), batches of 2, AdamW, float32.
TINY = {
    "preprocessing": {"image_size": [64, 64]},
    "anchors": {"sizes": [8.0, 16.0, 32.0, 64.0, 128.0]},
    "model": {"fpn_channels": 16, "head_convs": 1},
    "training": {"batch_size": 2, "steps": 6, "warmup_steps": 1, "validate_every": 3, "log_every": 2,
                 "checkpoint_every": 2, "num_summary_images": 2, "optimizer": "adamw", "learning_rate": 1e-4},
    "runtime": {"mixed_precision": "float32"},
    "evaluation": {"batch_size": 4},
}
# End-to-end runs whose every output must have boxes, whatever the barely trained model scores:
# thresholds of 0 keep each image's max_detections best boxes; four steps, validated once.
WITH_BOXES = {
    "postprocessing": {"candidate_score_threshold": 0.0, "max_detections": 10},
    "training": {"steps": 4, "validate_every": 4, "checkpoint_every": 4},
    "evaluation": {"score_threshold": 0.0, "num_overlays": 4},
}


def tiny_sections(**sections) -> dict:
    """TINY with each keyword's values updating its section, e.g. `tiny_sections(training={"steps": 2})`."""
    document = {section: dict(values) for section, values in TINY.items()}
    for section, values in sections.items():
        document[section] = {**document.get(section, {}), **values}
    return document


def tiny_config(data_root=None, cache_dir=None, **sections):
    """The tiny config (TINY, updated by `sections`) on a 128 px set at `data_root`, its cache in `cache_dir`."""
    from retinanet.config import config_from_dict

    data = {} if data_root is None else {"root": str(data_root), "original_size": 128, "num_folds": 4}
    if cache_dir is not None:
        data["cache_dir"] = str(cache_dir)
    return config_from_dict(tiny_sections(data={**data, **sections.pop("data", {})}, **sections))


def tiny_overrides(**sections) -> tuple[str, ...]:
    """The tiny config (TINY, updated by `sections`) as `--set section.key=value` values over a config file."""
    return tuple(f"{section}.{key}={json.dumps(value)}" for section, values in tiny_sections(**sections).items()
                 for key, value in values.items())


# The tiny end-to-end run over configs/demo.yaml (tests/conftest.py's tiny_run and the commands' tests).
TINY_OVERRIDES = tiny_overrides(**WITH_BOXES)


# oneDNN held below its bfloat16 kernels (ONEDNN_MAX_CPU_ISA=AVX2, the "AVX2 proxy" of a bf16 CPU):
# the CPU still reports avx512_bf16 or AMX, so TensorFlow sends bfloat16 convolutions to oneDNN,
# which then cannot build them ("could not create a primitive descriptor"). A real AVX2-only CPU
# never does: TensorFlow takes Eigen's bfloat16 path there, and these tests run.
BF16_KERNELS_CAPPED = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() in {
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
needs_bf16_kernels = pytest.mark.skipif(BF16_KERNELS_CAPPED, reason="ONEDNN_MAX_CPU_ISA holds oneDNN below the "
                                        "bfloat16 kernels this CPU reports, so its bfloat16 convolutions fail")


def run_in_process(arguments, run, cwd=REPOSITORY_ROOT) -> subprocess.CompletedProcess:
    """`run()` (a command's entry point) in this process, in the working directory `cwd`, with
    what it prints to stdout and stderr captured and its exit status as a subprocess would give
    them. Each command loads TensorFlow; in this process it is loaded once, saving a new
    interpreter's start (several seconds) per call. The scripts and `python -m retinanet` are run
    in fresh interpreters by tests/test_cli.py."""
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run()
    except SystemExit as exit:
        code = exit.code
    finally:
        os.chdir(previous)
    if isinstance(code, str):  # sys.exit("message"), as Python's own exit prints it
        stderr.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(arguments, code or 0, stdout.getvalue(), stderr.getvalue())


def run_file(path: Path, *arguments) -> subprocess.CompletedProcess:
    """Run the Python file `path` as `python PATH ARGUMENTS` would, from the repository root, its
    folder first on sys.path (in this process: see `run_in_process`)."""
    path, argv = str(path), list(map(str, arguments))

    def run():
        saved_argv, saved_path = sys.argv, list(sys.path)
        sys.argv = [path, *argv]
        sys.path.insert(0, str(Path(path).parent))
        try:
            runpy.run_path(path, run_name="__main__")
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path

    return run_in_process([sys.executable, path, *argv], run)


def run_script(name: str, *arguments) -> subprocess.CompletedProcess:
    """Run scripts/<name> as `python scripts/<name> ARGUMENTS` would (see `run_file`)."""
    return run_file(SCRIPTS / name, *arguments)


def run_benchmark(name: str, *arguments) -> subprocess.CompletedProcess:
    """Run benchmarks/<name> as `python benchmarks/<name> ARGUMENTS` would (see `run_file`)."""
    return run_file(BENCHMARKS / name, *arguments)


def assert_clean_error(completed: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, `error: ...` on stderr naming every fragment, and no traceback."""
    assert completed.returncode == 2, (completed.stdout, completed.stderr)
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert error_lines, completed.stderr
    for fragment in fragments:
        assert fragment in error_lines[-1], completed.stderr
    assert "Traceback" not in completed.stderr


def unavailable(reason: str):
    """Skip a test whose outside tool (Orthanc, dciodvfy) is not installed, saying which; under
    CI=true, where .ci/run installs them, fail instead: CI must run these tests, not skip them."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true: .ci/run installs it, so these tests must run")
    pytest.skip(reason)


def killed_on_second_append(module: str, torn: str) -> str:
    """A Python program running `retinanet infer` (its arguments) whose `module`'s `append_line`
    writes the first journal write whole, then of the second only `torn` (an expression of `line`)
    before the process kills itself with SIGKILL: a kill in the middle of a journal write."""
    package, name = module.rsplit(".", 1)
    return textwrap.dedent(f"""
        import os, signal, sys
        from retinanet.commands import infer
        from retinanet.commands.common import run_module
        from {package} import {name} as patched

        appended = []
        append_line = patched.append_line

        def append_then_die(path, line, durable=False):
            appended.append(line)
            if len(appended) < 2:
                return append_line(path, line, durable)
            with open(path, "ab") as file:
                file.write(({torn}).encode())
            os.kill(os.getpid(), signal.SIGKILL)

        patched.append_line = append_then_die
        sys.exit(run_module(infer, sys.argv[1:]))
        """)
