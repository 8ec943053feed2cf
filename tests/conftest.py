"""Shared fixtures: a tiny trained run on synthetic data, and its evaluation and inference outputs.

The run is trained once per session (about a minute on two cores): 20 training and 4 test
images of 256 px, 64 px network input, a slim head, 4 steps. It learns nothing useful;
the end-to-end tests check plumbing, file formats and agreement between code paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPOSITORY_ROOT / "scripts"
BENCHMARKS = REPOSITORY_ROOT / "benchmarks"
# The benchmarks' modules import each other by plain names (`import peer`), as running
# `python benchmarks/<name>` allows; the tests import them the same way. Last on the path: they
# shadow nothing.
sys.path.append(str(BENCHMARKS))
SYNTHETIC_SIZE = 256

TINY_OVERRIDES = (
    "preprocessing.image_size=[64, 64]",
    "anchors.sizes=[8, 16, 32, 64, 128]",  # boxes of 256 px images are 10-20 px at 64 px input
    "model.fpn_channels=32",
    "model.head_convs=1",
    # Thresholds of 0 keep the max_detections best boxes of every image whatever the barely
    # trained model scores, so that every output has boxes to check.
    "postprocessing.candidate_score_threshold=0.0",
    "postprocessing.max_detections=10",
    "training.steps=4",
    "training.batch_size=2",
    "training.warmup_steps=1",
    "training.validate_every=4",
    "training.log_every=2",
    "training.checkpoint_every=4",
    "runtime.mixed_precision=float32",
    "training.num_summary_images=2",
    "evaluation.batch_size=4",
    "evaluation.score_threshold=0.0",
    "evaluation.num_overlays=4",
)


def tiny_config(data_root, cache_dir, **sections):
    """The tests' tiny training config on a 128 px set: 64 px input, anchors of 8-128 px, a slim head
    (16 channels, one convolution), batches of 2, AdamW, float32. Each keyword updates one section,
    e.g. `tiny_config(root, cache, training={"steps": 2})`."""
    from retinanet.config import config_from_dict

    document = {
        "data": {"root": str(data_root), "cache_dir": str(cache_dir), "original_size": 128, "num_folds": 4},
        "preprocessing": {"image_size": [64, 64]},
        "anchors": {"sizes": [8.0, 16.0, 32.0, 64.0, 128.0]},
        "model": {"fpn_channels": 16, "head_convs": 1},
        "training": {"batch_size": 2, "steps": 6, "warmup_steps": 1, "validate_every": 3, "log_every": 2,
                     "checkpoint_every": 2, "num_summary_images": 2, "optimizer": "adamw", "learning_rate": 1e-4},
        "runtime": {"mixed_precision": "float32"},
        "evaluation": {"batch_size": 4},
    }
    for section, values in sections.items():
        document[section] = {**document.get(section, {}), **values}
    return config_from_dict(document)


@pytest.fixture(scope="session")
def small_rsna(tmp_path_factory) -> Path:
    """16 training patients at 128 px in the RSNA layout (seed 1), generated once per test process
    for the end-to-end training tests; they only read it (each run has its own cache)."""
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    return generate_synthetic_rsna(tmp_path_factory.mktemp("small_rsna"), num_train=16, num_test=0, size=128, seed=1,
                                   progress=False)


@dataclass(frozen=True)
class TinyRun:
    run_dir: Path
    data_dir: Path
    config: object
    train_stdout: str  # what scripts/train.py printed
    # threshold.json as training left it (None: none written); `evaluated_run` replaces it.
    training_threshold: str | None
    image_size: int = SYNTHETIC_SIZE  # side of the synthetic originals

    @property
    def test_dicoms(self) -> list[Path]:
        return sorted((self.data_dir / "stage_2_test_images").glob("*.dcm"))


# oneDNN held below its bfloat16 kernels (ONEDNN_MAX_CPU_ISA=AVX2, the "AVX2 proxy" of a bf16 CPU):
# the CPU still reports avx512_bf16 or AMX, so TensorFlow sends bfloat16 convolutions to oneDNN,
# which then cannot build them ("could not create a primitive descriptor"). A real AVX2-only CPU
# never does: TensorFlow takes Eigen's bfloat16 path there, and these tests run.
BF16_KERNELS_CAPPED = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() in {
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
needs_bf16_kernels = pytest.mark.skipif(BF16_KERNELS_CAPPED, reason="ONEDNN_MAX_CPU_ISA holds oneDNN below the "
                                        "bfloat16 kernels this CPU reports, so its bfloat16 convolutions fail")


def pytest_collection_modifyitems(config, items):
    """Files with the most end-to-end (slow) tests first, each file's tests in their order. The
    suite runs in two processes, a file at a time each (pyproject.toml's addopts): the long files
    start early and the quick ones fill in at the end, instead of one long file running alone."""
    slow_tests: dict[Path, int] = {}
    for item in items:
        slow_tests[item.path] = slow_tests.get(item.path, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.path])  # stable: files and tests keep their order otherwise


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


@pytest.fixture(scope="session")
def script():
    """`script(name, *arguments)` runs scripts/<name> in a subprocess (see `run_script`)."""
    return run_script


@pytest.fixture(scope="session")
def clean_error():
    """`clean_error(completed, *fragments)`: see `assert_clean_error`."""
    return assert_clean_error


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    from retinanet.config import load_config
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    root = tmp_path_factory.mktemp("tiny")
    data_dir = generate_synthetic_rsna(root / "data", num_train=20, num_test=4, size=SYNTHETIC_SIZE, seed=0,
                                       progress=False)
    overrides = [f"data.root={data_dir}", f"data.cache_dir={root / 'cache'}", "data.synthetic=null",
                 f"data.original_size={SYNTHETIC_SIZE}", f"training.run_root={root}", *TINY_OVERRIDES]
    config_path = REPOSITORY_ROOT / "configs" / "demo.yaml"
    completed = run_script("train.py", "--config", config_path, *(f"--set={o}" for o in overrides),
                           "--run-dir", root / "run", "--no-progress")
    assert completed.returncode == 0, completed.stderr
    threshold_file = root / "run" / "threshold.json"
    return TinyRun(root / "run", data_dir, load_config(config_path, overrides), completed.stdout,
                   threshold_file.read_text() if threshold_file.is_file() else None)


@pytest.fixture(scope="session")
def evaluated_run(tiny_run, tmp_path_factory) -> dict:
    """scripts/evaluate.py --write-threshold on the tiny run, at threshold 0 so that its outputs have
    boxes. Every test that loads the run's Detector depends on this, so that all of them see the
    same threshold.json (the evaluation's best, replacing the one training chose)."""
    output = tmp_path_factory.mktemp("evaluation")
    completed = run_script("evaluate.py", "--run-dir", tiny_run.run_dir, "--output", output, "--write-threshold",
                           "--threshold", "0", "--no-progress")
    assert completed.returncode == 0, completed.stderr
    from retinanet.evaluate.evaluation import read_metrics

    return {"output": output, "stdout": completed.stdout, "metrics": read_metrics(output)}


@pytest.fixture
def run_as_trained(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run directory with threshold.json as training left it (`evaluated_run`
    replaces the run's own)."""
    copy = tmp_path / "run_as_trained"
    shutil.copytree(tiny_run.run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    (copy / "threshold.json").unlink(missing_ok=True)
    if tiny_run.training_threshold is not None:
        (copy / "threshold.json").write_text(tiny_run.training_threshold)
    return copy


@pytest.fixture(scope="session")
def png_image(tiny_run, tmp_path_factory) -> Path:
    """A test image as a 240 x 200 PNG: not square, not an integer multiple of the input size."""
    from retinanet.data.dicom import read_image

    path = tmp_path_factory.mktemp("png") / "chest.png"
    cv2.imwrite(str(path), cv2.resize(read_image(tiny_run.test_dicoms[0]), (240, 200), interpolation=cv2.INTER_AREA))
    return path


@pytest.fixture(scope="session")
def inferred_dicom(tiny_run, evaluated_run, tmp_path_factory) -> dict:
    """scripts/infer.py on one test DICOM at threshold 0: {"path", "output", "stdout", "json"}."""
    output = tmp_path_factory.mktemp("infer_dicom")
    path = tiny_run.test_dicoms[0]
    completed = run_script("infer.py", "--run-dir", tiny_run.run_dir, "--input", path, "--output", output,
                           "--threshold", "0")
    assert completed.returncode == 0, completed.stderr
    return {"path": path, "output": output, "stdout": completed.stdout,
            "json": json.loads((output / f"{path.stem}.json").read_text())}
