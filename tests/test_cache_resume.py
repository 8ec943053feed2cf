"""The image cache under a kill: `retinanet prepare` killed mid-caching and run again."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPOSITORY_ROOT, SYNTHETIC_SIZE
from retinanet.data.cache import read_index

# prepare, with each image's reading slowed down so that the kill surely lands mid-caching.
SLOW_PREPARE = """
import sys, time
import retinanet.data.cache as cache
load = cache.load_preprocessed
cache.load_preprocessed = lambda *args: (time.sleep(0.15), load(*args))[1]
from retinanet.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    return generate_synthetic_rsna(tmp_path_factory.mktemp("cache_resume") / "data", num_train=40, num_test=0,
                                   size=SYNTHETIC_SIZE, seed=5, progress=False, workers=1)


def _prepare_command(data_dir: Path, root: Path, *, slow: bool = False) -> list[str]:
    overrides = [f"data.root={data_dir}", f"data.cache_dir={root / 'cache'}", "data.synthetic=null",
                 f"data.split_file={root / 'split.csv'}", f"data.original_size={SYNTHETIC_SIZE}",
                 "preprocessing.image_size=[64, 64]", "data.num_parallel_calls=2"]
    start = ["-c", SLOW_PREPARE] if slow else ["-m", "retinanet"]
    return [sys.executable, *start, "prepare", "--config", str(REPOSITORY_ROOT / "configs" / "demo.yaml"),
            *(f"--set={override}" for override in overrides), "--no-progress"]


def _counts(stdout: str) -> list[tuple[int, int]]:
    """(to cache, already cached) of each `cache <dir>: ...` line, train first."""
    return [(int(to_cache), int(done)) for to_cache, done in
            re.findall(r"^cache .*: (\d+) image\(s\) to cache, (\d+) already cached$", stdout, re.MULTILINE)]


def _cache_directory(root: Path) -> Path:
    (directory,) = [path for path in (root / "cache").iterdir() if path.is_dir()]
    return directory


def test_a_killed_prepare_is_finished_by_the_next_run_without_redoing_cached_images(data_dir, tmp_path):
    killed_root = tmp_path / "killed"
    process = subprocess.Popen(_prepare_command(data_dir, killed_root, slow=True), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        cache_dirs = list((killed_root / "cache").glob("*/"))
        if cache_dirs and len([path for path in cache_dirs[0].glob("*.raw") if ".tmp." not in path.name]) >= 6:
            break
        time.sleep(0.05)
    assert process.poll() is None, "prepare finished before it could be killed: " + process.communicate()[1]
    process.send_signal(signal.SIGKILL)
    process.communicate()
    directory = _cache_directory(killed_root)
    assert not (directory / "index.json").exists()  # killed before the end of the run
    recorded = read_index(directory / "index.json")
    assert len(recorded) >= 4  # the images whose entries the journal holds

    resumed = subprocess.run(_prepare_command(data_dir, killed_root), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    (train_to_cache, train_done), (validation_to_cache, validation_done) = _counts(resumed.stdout)
    assert train_done == len(recorded)  # nothing recorded is read again...
    assert validation_done == 0
    index = json.loads((directory / "index.json").read_text())
    assert len(index) == train_to_cache + train_done + validation_to_cache == 40  # ...and the rest is cached
    assert not (directory / "index.journal").exists()

    whole_root = tmp_path / "whole"
    whole = subprocess.run(_prepare_command(data_dir, whole_root), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    whole_directory = _cache_directory(whole_root)
    whole_index = json.loads((whole_directory / "index.json").read_text())
    assert whole_index == index
    for patient_id in whole_index:
        assert (directory / f"{patient_id}.raw").read_bytes() == (whole_directory / f"{patient_id}.raw").read_bytes()

    again = subprocess.run(_prepare_command(data_dir, killed_root), capture_output=True, text=True)
    assert _counts(again.stdout) == [(0, train_to_cache + train_done), (0, validation_to_cache)]


def test_a_journal_line_cut_short_is_reported_and_its_image_cached_again(tmp_path, capsys):
    entry = {"source": ["/data/a.dcm", 10, 1], "scale": 0.5, "original_size": [128, 128]}
    (tmp_path / "index.json").write_text(json.dumps({"old": entry}))
    (tmp_path / "index.journal").write_text(json.dumps(["a", entry]) + "\n" + json.dumps(["b", entry])[:20])
    assert read_index(tmp_path / "index.json") == {"old": entry, "a": entry}
    assert "1 line(s) of the cache journal" in capsys.readouterr().err
