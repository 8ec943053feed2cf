"""A fuzz campaign over the image reader: a few hundred mutants of small valid DICOMs (every decoder
path: JPEG Baseline, native 16-bit, RLE colour, JPEG-LS, JPEG 2000) and compression bombs, made by
tests/hostile_files.py, read in a process of their own under a 64 MiB budget. Each is read correctly
(equal to its seed where the mutation leaves the pixels alone) or a named error; none is blank; none
takes more memory than the budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from helpers import REPOSITORY_ROOT
from hostile_files import write_campaign

LIMIT_MIB = 64


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("fuzz")
    written = write_campaign(directory, seed=0)
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}
    completed = subprocess.run([sys.executable, str(REPOSITORY_ROOT / "tests" / "hostile_files.py"), "read",
                                str(directory), "--limit-mib", str(LIMIT_MIB)], capture_output=True, text=True,
                               timeout=120, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert result["mutants"] == written
    return result


def test_a_few_hundred_mutants_are_read_within_a_minute(campaign):
    assert campaign["mutants"] >= 300
    assert campaign["seconds"] <= 60
    kinds = Counter(outcome["kind"] for outcome in campaign["outcomes"])
    assert kinds["read"] > 50 and kinds["error"] > 200  # both outcomes are exercised


def test_every_mutant_reads_or_is_a_named_error(campaign):
    crashes = [outcome for outcome in campaign["outcomes"] if outcome["kind"] == "crash"]
    assert crashes == []
    unnamed = [outcome for outcome in campaign["outcomes"] if outcome["kind"] == "error" and not outcome["names_file"]]
    assert unnamed == []


def test_no_mutant_reads_as_a_blank_picture(campaign):
    reads = [outcome for outcome in campaign["outcomes"] if outcome["kind"] == "read"]
    assert all(outcome["dtype"] == "uint8" and len(outcome["shape"]) == 2 for outcome in reads)
    assert [outcome["name"] for outcome in reads if outcome["blank"]] == []


def test_mutations_that_leave_the_pixels_alone_read_as_the_seed(campaign):
    harmless = [outcome for outcome in campaign["outcomes"] if "equals_seed" in outcome]
    assert len(harmless) >= 20
    assert [outcome["name"] for outcome in harmless if not outcome["equals_seed"]] == []


def test_the_bombs_are_named_errors(campaign):
    by_name = {outcome["name"]: outcome for outcome in campaign["outcomes"]}
    for name in ("film_jpeg-stream-bomb", "mr_jpeg_ls-stream-bomb", "mr_jpeg2000-stream-bomb", "deflate-bomb",
                 "png-bomb"):
        assert by_name[name]["kind"] == "error", by_name[name]


def test_no_mutant_takes_more_memory_than_the_budget(campaign):
    # The peak resident size of the reading process, after the seeds and after every mutant.
    assert campaign["peak_after_mib"] - campaign["peak_before_mib"] <= LIMIT_MIB
