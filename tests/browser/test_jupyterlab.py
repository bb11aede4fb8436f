"""The chorus kernel in JupyterLab, driven by headless Debian Chromium (Playwright).

What a user does: open a notebook on "Chorus (4 ranks)", run a cell, see
labelled output, answer an input() prompt once for all ranks, interrupt.
The last screenshot is kept in build/test-artifacts/jupyterlab.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from chorus.kernel.kernelspec import install
from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("lab")
    prefix = tmp_path_factory.mktemp("prefix")
    install(name="chorus-lab", ranks=4, backend="shm", timeout=30, prefix=str(prefix))
    token = secrets.token_hex(8)
    port = _free_port()
    env = {
        **os.environ,
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            # Workspaces and settings of this run only: a workspace saved by an
            # earlier run (a wider sidebar) pushed toolbar buttons into the
            # overflow menu.
            f"--LabApp.workspaces_dir={root / '.workspaces'}",
            f"--LabApp.user_settings_dir={root / '.settings'}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"jupyter lab did not start: {server.communicate()[1][-3000:]}")
            time.sleep(0.3)
    try:
        yield f"{base}/lab/tree/{{name}}?token={token}", root
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def _notebook(path: Path, sources: list[str]) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for s in sources
    ]
    path.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {
                    "kernelspec": {
                        "name": "chorus-lab",
                        "display_name": "Chorus (4 ranks)",
                        "language": "python",
                    }
                },
                "cells": cells,
            }
        )
    )


def _accept_kernel_dialog(page: Page) -> None:
    """Accept JupyterLab's "Select Kernel" dialog if it is up.

    JupyterLab 4 sometimes asks at open time, with the notebook's kernel
    preselected, when the list of kernelspecs was not loaded yet.
    """
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        dialog.first.locator(".jp-mod-accept").click()
        dialog.first.wait_for(state="detached", timeout=10_000)


def _run_cell(page: Page, index: int) -> None:
    """Select the cell by its prompt, press the toolbar's run button, and make sure
    it was queued: right after start-up JupyterLab may drop the first request
    while its kernel connection settles, so try again if the prompt stays [ ]."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    run = page.locator(
        ".jp-NotebookPanel-toolbar [data-command='notebook:run-cell-and-select-next']"
    )
    for _attempt in range(5):
        _accept_kernel_dialog(page)
        prompt.click()
        run.click()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if prompt.inner_text().strip() not in ("[ ]:", ""):
                return
            time.sleep(0.1)
    raise AssertionError(f"cell {index} never started: prompt {prompt.inner_text()!r}")


ARTIFACTS = Path(__file__).parents[2] / "build" / "test-artifacts"


@contextlib.contextmanager
def _notebook_page(
    lab: tuple[str, Path], name: str, sources: list[str], height: int = 900
) -> Iterator[Page]:
    """A browser page on a new notebook of these cells, its kernel (and ranks) idle."""
    url, root = lab
    _notebook(root / name, sources)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": height})
        try:
            # A workspace per notebook: JupyterLab would restore the tabs an
            # earlier test opened, and locators would find their cells too.
            workspace = f"/lab/workspaces/{Path(name).stem}/tree/"
            page.goto(url.format(name=name).replace("/lab/tree/", workspace))
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            time.sleep(1)  # the kernel dialog, when it comes, comes right after
            _accept_kernel_dialog(page)
            # Attached, not visible: a narrow toolbar moves the indicator into
            # its overflow menu (seen once in the newest-dependency check).
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
                state="attached", timeout=90_000
            )
            yield page
        finally:
            browser.close()


def test_cells_stdin_and_labels_in_jupyterlab(lab: tuple[str, Path]) -> None:
    cells = [
        "print('lab', rank)\nprint('same everywhere')",
        "who = input('who? ')\nprint('hi', who)",
        "import time\nprint('sleeping')\ntime.sleep(120)",
        "print('kept', who, rank)",
    ]
    with _notebook_page(lab, "chorus.ipynb", cells) as page:
        try:
            _run_cell(page, 0)
            outputs = page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-OutputArea")
            outputs.get_by_text("[0-3] same everywhere").wait_for(timeout=60_000)
            text = outputs.inner_text()
            for rank in range(4):
                assert f"[{rank}] lab {rank}" in text, text

            _run_cell(page, 1)
            prompt = page.locator("input.jp-Stdin-input")
            prompt.wait_for(timeout=60_000)
            stdin_text = page.locator(".jp-Stdin").inner_text()
            assert "[0-3] who?" in stdin_text, stdin_text
            prompt.fill("bob")
            prompt.press("Enter")
            second = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea")
            second.get_by_text("[0-3] hi bob").wait_for(timeout=60_000)

            # The interrupt button stops every rank; state survives.
            _run_cell(page, 2)
            third = page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-OutputArea")
            third.get_by_text("sleeping").first.wait_for(timeout=60_000)
            clicked = time.monotonic()
            page.locator(
                ".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']"
            ).click()
            third.get_by_text("KeyboardInterrupt").first.wait_for(timeout=30_000)
            assert time.monotonic() - clicked < 15
            _run_cell(page, 3)
            fourth = page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".jp-OutputArea")
            fourth.get_by_text("[1] kept bob 1").wait_for(timeout=60_000)
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))


def test_stall_notice_in_jupyterlab(lab: tuple[str, Path]) -> None:
    sources = [
        "%chorus stall 3",
        "chorus.all_sum(np.ones(2))",
        "if rank == 0:\n    chorus.all_sum(np.ones(3))",
        "print('after', chorus.all_sum(np.ones(2)).tolist())",
    ]
    with _notebook_page(lab, "stall.ipynb", sources, height=1100) as page:
        try:
            cells = page.locator(".jp-Notebook .jp-Cell")
            _run_cell(page, 0)
            first = cells.nth(0).locator(".jp-OutputArea")
            first.get_by_text("shows where every rank is").wait_for(timeout=60_000)
            _run_cell(page, 1)
            cells.nth(1).locator(".jp-OutputArea").get_by_text("array").wait_for(timeout=60_000)
            # Rank 0 alone in a collective: the cell says where every rank is, once.
            _run_cell(page, 2)
            hung = cells.nth(2).locator(".jp-OutputArea")
            hung.get_by_text("the cell goes on waiting").wait_for(timeout=30_000)
            text = hung.inner_text()
            assert "verdict: rank 0 waits in all_sum #2 (float64 (3,))" in text, text
            assert "which ranks 1-3 never made" in text, text
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-stall.png"))
            page.locator(
                ".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']"
            ).click()
            hung.get_by_text("KeyboardInterrupt").first.wait_for(timeout=30_000)
            _run_cell(page, 3)
            after = cells.nth(3).locator(".jp-OutputArea")
            after.get_by_text("[0-3] after [4.0, 4.0]").wait_for(timeout=60_000)
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-stall-end.png"))


def test_widgets_and_progress_bars_from_every_rank_in_jupyterlab(lab: tuple[str, Path]) -> None:
    sources = [
        (
            "import ipywidgets as w\n"
            "from IPython.display import display\n"
            "slider = w.IntSlider(value=10 * rank, description=f'rank {rank}')\n"
            "display(slider)"
        ),
        (
            "from tqdm.auto import tqdm\nimport time\n"
            "for i in tqdm(range(24), desc=f'rank {rank}'):\n    time.sleep(0.25)"
        ),
        "print('value', slider.value)",
        (
            "%matplotlib widget\n"
            "import matplotlib.pyplot as plt\n"
            "fig = plt.figure(figsize=(3, 2))\n"
            "plt.plot([0, rank])\n"
            "plt.show()"
        ),
    ]
    with _notebook_page(lab, "widgets.ipynb", sources, height=1600) as page:
        try:
            cells = page.locator(".jp-Notebook .jp-Cell")
            _run_cell(page, 0)
            first = cells.nth(0).locator(".jp-OutputArea")
            sliders = first.locator(".widget-slider")
            sliders.nth(3).wait_for(timeout=60_000)
            assert sliders.count() == 4
            text = first.inner_text()
            assert "Error displaying widget" not in text, text
            for rank in range(4):
                assert f"[{rank}]" in text, text
            # Rank 2's slider, moved in the browser: only rank 2's value changes.
            handle = sliders.nth(2).locator(".noUi-handle")
            handle.click()
            handle.press("ArrowRight")
            _run_cell(page, 1)
            second = cells.nth(1).locator(".jp-OutputArea")
            bars = second.locator(".widget-hprogress, .progress")
            bars.nth(3).wait_for(timeout=60_000)
            # Live: the bars move while the cell runs.
            second.get_by_text(re.compile(r"\b1\d/24")).first.wait_for(timeout=60_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-widgets-running.png"))
            second.get_by_text("24/24").nth(3).wait_for(timeout=60_000)
            _run_cell(page, 2)
            third = cells.nth(2).locator(".jp-OutputArea")
            third.get_by_text("[2] value 21").wait_for(timeout=60_000)
            rest = third.inner_text()
            for rank in (0, 1, 3):
                assert f"[{rank}] value {10 * rank}" in rest, rest
            # ipympl: each rank's interactive figure.
            _run_cell(page, 3)
            fourth = cells.nth(3).locator(".jp-OutputArea")
            figures = fourth.locator(".jupyter-matplotlib")
            figures.nth(3).wait_for(timeout=60_000)
            assert figures.count() == 4
            assert "Error displaying widget" not in fourth.inner_text()
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-widgets.png"))


def test_live_text_rank_areas_figures_and_help_in_jupyterlab(lab: tuple[str, Path]) -> None:
    sources = [
        (
            "from tqdm import tqdm\nimport time\n"
            "for i in tqdm(range(16), desc=f'rank {rank}'):\n    time.sleep(0.3)"
        ),
        (
            "from IPython.display import clear_output\nimport time\n"
            "for step in range(3):\n"
            "    clear_output(wait=True)\n"
            "    print(f'step {step} on rank {rank}')\n"
            "    time.sleep(0.3)"
        ),
        (
            "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
            "fig = plt.figure(figsize=(2, 1.5))\nplt.plot([0, rank])\nplt.show()"
        ),
        "fig = plt.figure(figsize=(2, 1.5))\nplt.plot([0, 1])\nplt.show()",
        "np.sum?",
        "2 * 3",
    ]
    with _notebook_page(lab, "rich.ipynb", sources, height=2400) as page:
        try:
            cells = page.locator(".jp-Notebook .jp-Cell")
            # Plain tqdm (\r-redrawn on stderr): one live labelled bar per rank.
            _run_cell(page, 0)
            bars = cells.nth(0).locator(".jp-OutputArea")
            bars.get_by_text(re.compile(r"^\[2\] rank 2: +\d+%.* [4-9]/16")).wait_for(
                timeout=60_000
            )
            running = bars.inner_text()
            assert "16/16" not in running, running
            bars.get_by_text(re.compile(r"\[3\] rank 3: 100%")).wait_for(timeout=60_000)
            # Each rank's clear_output(wait=True) loop keeps its own last line.
            _run_cell(page, 1)
            areas = cells.nth(1).locator(".jp-OutputArea")
            areas.get_by_text("[3] step 2 on rank 3").wait_for(timeout=60_000)
            cells.nth(1).locator(".jp-InputPrompt").get_by_text(re.compile(r"\d")).wait_for()
            text = areas.inner_text()
            for rank in range(4):
                assert f"[{rank}] step 2 on rank {rank}" in text, text
            assert "step 1" not in text, text
            # Different figures: one grid, in rank order.
            _run_cell(page, 2)
            grid = cells.nth(2).locator(".chorus-rank-grid figure")
            grid.nth(3).wait_for(timeout=60_000)
            captions = [grid.nth(i).locator("figcaption").inner_text() for i in range(4)]
            assert captions == ["[0]", "[1]", "[2]", "[3]"], captions
            # The same figure everywhere: shown once, after its label.
            _run_cell(page, 3)
            same = cells.nth(3).locator(".jp-OutputArea")
            same.locator("img").first.wait_for(timeout=60_000)
            assert same.locator("img").count() == 1
            assert same.inner_text().strip().startswith("[0-3]"), same.inner_text()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-rich-outputs.png"))
            # Help from the pager.
            _run_cell(page, 4)
            help_text = cells.nth(4).locator(".jp-OutputArea")
            help_text.get_by_text("Sum of array elements").first.wait_for(timeout=60_000)
            # A result every rank agrees on is the value, after its label.
            _run_cell(page, 5)
            result = cells.nth(5).locator(".jp-OutputArea")
            result.locator(".jp-OutputArea-executeResult").get_by_text("6", exact=True).wait_for(
                timeout=60_000
            )
            assert result.inner_text().split() == ["[0-3]", "[6]:", "6"], result.inner_text()
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-rich.png"), full_page=True)


def _click_gutter(page: Page, cell_index: int, line: int) -> None:
    """Click the breakpoint gutter beside ``line`` (1-based) of a cell's editor."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(cell_index)
    row = cell.locator(".cm-content .cm-line").nth(line - 1).bounding_box()
    gutter = cell.locator("div.cm-breakpoint-gutter").bounding_box()
    assert row is not None, "no such line"
    assert gutter is not None, "no breakpoint gutter: is the debugger on?"
    page.mouse.click(gutter["x"] + gutter["width"] / 2, row["y"] + row["height"] / 2)


def test_debugger_stops_every_rank_and_shows_each_ranks_variables_in_jupyterlab(
    lab: tuple[str, Path],
) -> None:
    sources = [
        "def step(x):\n    y = x * 10 + rank\n    return y\n\nout = step(rank)\nprint('done', out)",
    ]
    with _notebook_page(lab, "debugger.ipynb", sources, height=1000) as page:
        try:
            bug = page.locator(".jp-NotebookPanel-toolbar .jp-DebuggerBugButton")
            bug.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => !document.querySelector('.jp-NotebookPanel-toolbar .jp-DebuggerBugButton')"
                ".closest('button, jp-button').disabled",
                timeout=60_000,
            )
            bug.click()
            page.locator(".jp-DebuggerCallstack").wait_for(timeout=60_000)
            page.locator(".jp-Notebook .jp-Cell").first.locator(".cm-content").click()
            _click_gutter(page, 0, 2)
            page.locator(".jp-DebuggerBreakpoint").first.wait_for(timeout=30_000)
            _run_cell(page, 0)
            frames = page.locator(".jp-DebuggerCallstackFrame")
            for rank in range(4):
                frames.filter(has_text=f"[rank {rank}] step").first.wait_for(timeout=60_000)
            # Rank 2's frame: its variables.
            frames.filter(has_text="[rank 2] step").first.click()
            variables = page.locator(".jp-DebuggerVariables-body:visible")
            scope = page.locator(".jp-DebuggerVariables-toolbar select[aria-label='Scope']")

            def shown() -> dict[str, str]:
                names = variables.locator(".jp-DebuggerVariables-name").all_inner_texts()
                values = variables.locator(".jp-DebuggerVariables-detail").all_inner_texts()
                return dict(zip(names, values, strict=False))

            def wait_shown(name: str, value: str) -> dict[str, str]:
                deadline = time.monotonic() + 30
                while shown().get(name) != value and time.monotonic() < deadline:
                    time.sleep(0.2)
                return shown()

            assert wait_shown("x", "2").get("x") == "2", shown()
            scope.select_option("Globals")
            assert wait_shown("rank", "2").get("rank") == "2", shown()
            # Where every rank is, in the "Ranks" scope.
            scope.select_option("Ranks")
            ranks = wait_shown("rank 3", "stopped: step, line 2 (breakpoint)")
            assert ranks == {f"rank {r}": "stopped: step, line 2 (breakpoint)" for r in range(4)}, (
                ranks
            )
            # A wider sidebar for the screenshots: drag the split before it to the left.
            handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:visible").last
            box = handle.bounding_box()
            if box is not None:
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 200)
                page.mouse.down()
                page.mouse.move(box["x"] - 220, box["y"] + 200, steps=5)
                page.mouse.up()
            news = page.get_by_role("button", name="No", exact=True)
            if news.count() and news.first.is_visible():
                news.first.click()  # JupyterLab's news question, out of the screenshots
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-debugger-ranks.png"))
            scope.select_option("Locals")
            wait_shown("x", "2")
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-debugger.png"))
            # Continue: every rank runs on and the cell ends.
            page.locator("jp-button[title^='Continue']").first.click()
            output = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-OutputArea")
            output.get_by_text("[3] done 33").wait_for(timeout=60_000)
            text = output.inner_text()
            for rank in range(4):
                assert f"[{rank}] done {11 * rank}" in text, text
            assert page.locator(".jp-DebuggerCallstackFrame").count() == 0
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-debugger-end.png"))
