"""Every notebook runs top to bottom (CI runs them with few training steps: MINIGPT_NOTEBOOK_STEPS)."""

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook runner comes with the test extra")
nbclient = pytest.importorskip("nbclient", reason="the notebook runner comes with the test extra")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_none_carries_outputs():
    assert len(NOTEBOOKS) >= 2
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            assert not cell.get("outputs"), f"{path.name} carries outputs: clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_the_notebook_runs_top_to_bottom(path, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGPT_NOTEBOOK_STEPS", "40")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(path, as_version=4)
    started = time.time()
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.time() - started < 60
    text = "\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "Traceback" not in text and text.strip()
