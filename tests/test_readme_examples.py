"""The READMEs' examples, run as they are written there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from jupyter_client.manager import KernelManager

from tests.kernel.conftest import running_kernel

ROOT = Path(__file__).parents[1]


def _blocks(path: Path, info: str) -> list[str]:
    """The fenced code blocks of ``path`` whose info string is ``info`` ("" for none)."""
    pattern = re.compile(rf"^```{re.escape(info)}\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    return pattern.findall(path.read_text(encoding="utf-8"))


def _cells(block: str) -> list[str]:
    """An IPython session as typed: a ``%%`` line takes the lines up to the next magic."""
    cells: list[str] = []
    for line in block.splitlines():
        if cells and cells[-1].startswith("%%") and not line.startswith("%"):
            cells[-1] += "\n" + line
        elif line.strip():
            cells.append(line)
    return cells


def test_the_readme_python_example_under_chorus_launch(tmp_path: Path) -> None:
    code = _blocks(ROOT / "README.md", "python")[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "chorus", "launch", "-n", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for rank in range(2):
        assert f"[{rank}] rank {rank}/2: [0 3 6 9]" in done.stdout, done.stdout


def test_the_magics_readme_session_in_an_ipython_kernel() -> None:
    (block,) = _blocks(ROOT / "magics" / "README.md", "")[:1]
    cells = _cells(block)
    assert cells[0] == "%load_ext chorus", cells
    with running_kernel(KernelManager(kernel_name="python3")) as ipython:
        shown = {}
        for cell in cells:
            run = ipython.run(cell, timeout=120)
            assert run.status == "ok", (cell, run)
            shown[cell.split("#")[0].strip()] = run
        pulled = shown["%chorus pull x"].results[0]["data"]["text/plain"]
        assert pulled.count("array([6., 6., 6.])") == 4, pulled
        assert len(shown["%chorus status"].stdout.strip().splitlines()) == 5
