"""benchmarks/scale.py on a tiny set (64 px, a tiny network)."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest

from helpers import REPOSITORY_ROOT, TINY_OVERRIDES
from scale import LABELS, subset_root

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
def test_the_script_prints_the_table(data_dir, tmp_path):
    command = [sys.executable, str(REPOSITORY_ROOT / "benchmarks" / "scale.py"), "--data", str(data_dir),
               "--sizes", "12", "--work", str(tmp_path), "--steps", "1", "--warmup", "1",
               *(f"--set={override}" for override in [f"data.original_size={SIZE}", *TINY_OVERRIDES])]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert completed.returncode == 0, completed.stderr
    table = completed.stdout.split("CPU kind: ")[-1]
    rows = [line for line in table.splitlines() if line.startswith("| 12 |")]
    assert len(rows) == 1 and rows[0].count("|") == 9
    # Each size is measured in fresh processes: prepare, prepare again, a pass of the pipeline.
    _, prepare_wall, rate, prepare_rss, cache, rerun, pipeline, pipeline_rss = [
        float(re.sub(r"[^\d.]", "", cell)) for cell in rows[0].strip("|").split("|")]  # "1,234.5 MiB" -> 1234.5
    assert cache >= 12 * 64 * 64 / 2**20  # MiB: every image's 64 x 64 pixels, and the index
    assert prepare_rss > 50 and pipeline_rss > 50  # MiB: a Python with TensorFlow each
    assert min(prepare_wall, rate, rerun, pipeline) > 0
    # 0 < the training split's images < 12, a batch of 2 each step
    epoch_steps = int(re.search(r"training split on this CPU: (\d+) steps", table).group(1))
    assert 0 < 2 * epoch_steps < 12
    assert "waiting for input" in table and "needs 8 images/s" in table  # batch 2 / 0.25 s
    assert "one epoch of the first 12 patients' training split" in table
    assert not list(tmp_path.glob("cache_*/*"))  # each cache removed once measured
