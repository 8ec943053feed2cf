"""benchmarks/scale.py on a tiny set (64 px, a tiny network)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from helpers import REPOSITORY_ROOT, TINY_OVERRIDES
from scale import LABELS, measure_size, subset_root

SIZE = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    return generate_synthetic_rsna(tmp_path_factory.mktemp("scale") / "data", num_train=12, num_test=0, size=SIZE,
                                   seed=2, progress=False, workers=1)


def test_the_subset_holds_the_first_patients_rows_and_links_the_images(data_dir, tmp_path):
    root = subset_root(data_dir, tmp_path / "first_5", 5)
    full = pd.read_csv(data_dir / LABELS, dtype=str, keep_default_na=False)
    first = full["patientId"].drop_duplicates().iloc[:5]
    subset = pd.read_csv(root / LABELS, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(subset, full[full["patientId"].isin(first)].reset_index(drop=True))
    assert (root / "stage_2_train_images").resolve() == (data_dir / "stage_2_train_images").resolve()
    with pytest.raises(ValueError, match="holds 12 patients, fewer than 13"):
        subset_root(data_dir, tmp_path / "too_many", 13)


@pytest.mark.slow
def test_a_size_is_measured_in_fresh_processes(data_dir, tmp_path):
    overrides = [f"data.original_size={SIZE}", *TINY_OVERRIDES]
    row = measure_size(data_dir, tmp_path, 8, REPOSITORY_ROOT / "configs" / "rsna.yaml", overrides)
    assert row["cache_bytes"] >= 8 * 64 * 64  # every image's 64 x 64 pixels, and the index
    assert row["prepare_rss"] > 50 * 2**20 and row["pipeline_rss"] > 50 * 2**20  # a Python with TensorFlow
    assert row["pipeline_images"] >= 8 and row["pipeline_rate"] > 0
    assert 0 < row["train_images"] < 8


@pytest.mark.slow
def test_the_script_prints_the_table(data_dir, tmp_path):
    command = [sys.executable, str(REPOSITORY_ROOT / "benchmarks" / "scale.py"), "--data", str(data_dir),
               "--sizes", "12", "--work", str(tmp_path), "--steps", "1", "--warmup", "1",
               *(f"--set={override}" for override in [f"data.original_size={SIZE}", *TINY_OVERRIDES])]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert completed.returncode == 0, completed.stderr
    table = completed.stdout.split("CPU kind: ")[-1]
    rows = [line for line in table.splitlines() if line.startswith("| 12 |")]
    assert len(rows) == 1 and rows[0].count("|") == 9
    assert "waiting for input" in table and "needs 8 images/s" in table  # batch 2 / 0.25 s
    assert "one epoch of the first 12 patients' training split" in table
    assert not list(tmp_path.glob("cache_*/*"))  # each cache removed once measured
