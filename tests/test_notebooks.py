"""The notebooks of examples/ run from top to bottom on miniature settings (fewer steps through
ICLAB_NOTEBOOK_STEPS), and are committed without outputs."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = {"quickstart.ipynb": ("Delta_PT,Ridge", 200), "autoregressive.ipynb": ("eta_fit", 150)}


def test_every_notebook_is_tested_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_notebook_runs(name, tmp_path, monkeypatch):
    expected, steps = NOTEBOOKS[name]
    monkeypatch.setenv("ICLAB_NOTEBOOK_STEPS", str(steps))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one core per pytest worker
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute(env=dict(os.environ))
    text = "".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert expected in text
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, "the notebook drew no figure"
    assert (tmp_path / "runs").is_dir()
