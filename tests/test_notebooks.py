"""The notebooks run end to end in smoke mode (SMOKE: digits, one epoch, seconds)."""

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the dev extra)")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (the dev extra)")
    pytest.importorskip("ipykernel", reason="needs ipykernel (the dev extra)")
    monkeypatch.setenv("PPL_SSVAE_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]  # fmt: skip
    assert not errors
    assert os.environ["PPL_SSVAE_NOTEBOOK_SMOKE"] == "1"


def test_notebooks_exist():
    assert (NOTEBOOKS / "inspect_a_model.ipynb").is_file()
