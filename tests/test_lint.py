"""The code, tests, scripts and notebooks pass `ruff check` with the rules in pyproject.toml."""

import subprocess
import sys

from helpers import REPOSITORY_ROOT


def test_ruff_finds_nothing():
    completed = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], capture_output=True,
                               text=True, cwd=REPOSITORY_ROOT, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
