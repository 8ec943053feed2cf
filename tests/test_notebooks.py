"""The notebooks run top to bottom: 01 on a small synthetic set, 02 on the tiny trained run.

They are executed with nbclient in a kernel of this interpreter (the one the package is
installed in), with the working directory notebooks/ and their inputs passed as environment
variables, as a user would run them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPLORE = "01_explore_data.ipynb"
INFERENCE = "02_inference.ipynb"
CELL_TIMEOUT = 180  # seconds; a whole notebook takes 10-20 s here


class ThisInterpreterKernelManager(AsyncKernelManager):
    """Starts the `python3` kernel of the ipykernel installed beside this interpreter.

    Kernelspec directories are not searched: a user's own `python3` kernelspec may point at
    another Python, without the package. jupyter_client then falls back to ipykernel's
    built-in spec, which runs `sys.executable -m ipykernel_launcher`. Nothing is installed.
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self):
        return KernelSpecManager(kernel_dirs=[])


def execute(name: str, environment: dict[str, str]) -> nbformat.NotebookNode:
    """Run notebooks/<name> with cwd notebooks/ and `environment` added to the kernel's; return it
    with its outputs (nbclient raises CellExecutionError, with the traceback, if a cell fails)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name=NATIVE_KERNEL_NAME,
                            kernel_manager_class=ThisInterpreterKernelManager,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **environment})
    return notebook


def tagged_outputs(notebook, tag: str) -> list:
    cells = [cell for cell in notebook.cells if tag in cell.get("metadata", {}).get("tags", [])]
    assert cells, f"no cell tagged {tag!r}"
    return [output for cell in cells for output in cell.outputs]


def has_image(outputs) -> bool:
    return any("image/png" in output.get("data", {}) for output in outputs)


def printed(outputs) -> str:
    return "".join(output.text for output in outputs if output.output_type == "stream" and output.name == "stdout")


def all_printed(notebook) -> str:
    return "".join(printed(cell.outputs) for cell in notebook.cells if cell.cell_type == "code")


def test_the_kernel_is_this_interpreter():
    spec = ThisInterpreterKernelManager(kernel_name=NATIVE_KERNEL_NAME).kernel_spec
    assert spec.argv[0] == sys.executable
    assert spec.argv[1:3] == ["-m", "ipykernel_launcher"]


@pytest.mark.parametrize("name", [EXPLORE, INFERENCE])
def test_notebooks_are_saved_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == NATIVE_KERNEL_NAME
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
def test_explore_notebook_on_a_small_synthetic_set(tmp_path):
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    data_dir = generate_synthetic_rsna(tmp_path / "data", num_train=20, num_test=2, size=256, seed=3, progress=False)
    notebook = execute(EXPLORE, {"RSNA_DATA_ROOT": str(data_dir)})
    text = all_printed(notebook)
    assert f"data: {data_dir.resolve()}" in text  # the variable reached the kernel
    assert "original size 256 x 256" in text
    assert "20 images" in text
    for tag in ("clahe", "ground-truth", "location-anchors", "positive-anchors", "coverage-plot"):
        assert has_image(tagged_outputs(notebook, tag)), tag
    coverage = printed(tagged_outputs(notebook, "coverage-summary"))
    assert "Anchor coverage:" in coverage and "have at least one anchor with IoU >= 0.5" in coverage


@pytest.mark.slow
def test_inference_notebook_on_the_tiny_run(tiny_run):
    notebook = execute(INFERENCE, {"RSNA_RUN_DIR": str(tiny_run.run_dir)})
    text = all_printed(notebook)
    assert f"run: {tiny_run.run_dir.resolve()}" in text
    assert "held-out patients" in text
    assert has_image(tagged_outputs(notebook, "overlays"))
    assert has_image(tagged_outputs(notebook, "sweep"))
    metrics = printed(tagged_outputs(notebook, "metrics"))
    assert "RSNA metric at the detector's threshold" in metrics and "best of the sweep" in metrics
