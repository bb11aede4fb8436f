"""Every notebook in notebooks/ runs top to bottom on the chorus kernel (nbclient)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from chorus.kernel.kernelspec import install
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    install(name="chorus", ranks=4, backend="shm", timeout=30, prefix=str(prefix))
    return prefix / "share" / "jupyter"


def _texts(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_there_are_five_notebooks() -> None:
    assert len(NOTEBOOKS) == 5, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_without_errors(
    path: Path, kernel_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="chorus", resources={})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = _texts(notebook)
    if path.stem.startswith("01"):
        # The label, then the value itself.
        assert re.search(r"\[0-3\]\s+array\(\[6\., 6\., 6\.\]\)", text), text
        assert "[0] hello from rank 0 of 4" in text
    if path.stem.startswith("05"):
        assert "[0] rank 0 of 4 local rank 0" in text, text
        assert "[0-3] Tensor largest difference between ranks: 0.0" in text, text
    if path.stem.startswith("03"):
        assert "[2] ipdb> np.float64(0.0)" in text, text
    if path.stem.startswith("04"):
        images = [
            o
            for c in notebook.cells
            for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        assert images, "the performance notebook shows no plot"
