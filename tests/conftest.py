"""The fixtures: a tiny trained run on synthetic data, and its evaluation and inference outputs (what
the tests share besides fixtures is tests/helpers.py).

The run is trained once per session (about a minute on two cores): 20 training and 4 test
images of 256 px, 64 px network input, a slim head, 4 steps. It learns nothing useful;
the end-to-end tests check plumbing, file formats and agreement between code paths.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
from helpers import REPOSITORY_ROOT, SYNTHETIC_SIZE, TINY_OVERRIDES, assert_clean_error, run_script

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


def pytest_collection_modifyitems(config, items):
    """Files with the most end-to-end (slow) tests first, each file's tests in their order. The
    suite runs in two processes, a file at a time each (pyproject.toml's addopts): the long files
    start early and the quick ones fill in at the end, instead of one long file running alone."""
    slow_tests: dict[Path, int] = {}
    for item in items:
        slow_tests[item.path] = slow_tests.get(item.path, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.path])  # stable: files and tests keep their order otherwise


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


@pytest.fixture(scope="session")
def pacs_films(tiny_run, tmp_path_factory) -> Path:
    """The films of the DICOM report and DICOMweb tests: the tiny run's four test DICOMs (256 px,
    JPEG Baseline, MONOCHROME2) and pydicom-data's real chest film RG1 (1955 x 1841, MONOCHROME1)."""
    from pydicom.data import get_testdata_file

    directory = tmp_path_factory.mktemp("pacs_films")
    for path in [*tiny_run.test_dicoms, Path(get_testdata_file("RG1_UNCR.dcm"))]:
        shutil.copyfile(path, directory / path.name)
    return directory


@pytest.fixture(scope="session")
def directory_reports(tiny_run, evaluated_run, pacs_films, tmp_path_factory) -> dict:
    """Directory inference with reports and secondary captures over `pacs_films`, at threshold 0 (every
    film has boxes) in batches of one (each film's boxes then bit for bit those of any other
    single-film batch, such as the DICOMweb path's): {"output", "summary", "header", "journal"}."""
    from retinanet.serve.infer import run_inference
    from retinanet.serve.journal import JOURNAL

    output = tmp_path_factory.mktemp("directory_reports")
    summary = run_inference(input_path=pacs_films, output_dir=output, run_dir=tiny_run.run_dir, threshold=0.0,
                            batch_size=1, progress=False, dicom_sr=True, secondary_capture=True)
    lines = [json.loads(line) for line in (output / JOURNAL).read_text().splitlines()]
    return {"output": output, "summary": summary, "header": lines[0],
            "journal": {entry["patientId"]: entry for entry in lines[1:]}}
