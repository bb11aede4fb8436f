"""JupyterLab's debugger across the ranks: the debug protocol through a 4-rank kernelspec.

ipykernel's own debugger test sequence (initialize, attach, dumpCell,
setBreakpoints, configurationDone, execute, stopped, stackTrace, scopes,
variables, richInspectVariables, copyToGlobals, continue), adapted to ranks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import Frontend, chorus_kernel_manager, running_kernel
from tests.kernel.debug_client import DebugClient, top_frames


@pytest.fixture(scope="module")
def kernel() -> Iterator[Frontend]:
    # A kernel of its own: the debugger's state (breakpoints) stays out of other modules.
    with running_kernel(chorus_kernel_manager()) as frontend:
        yield frontend


@pytest.fixture
def debug(kernel: Frontend) -> Iterator[DebugClient]:
    client = DebugClient(kernel.client)
    client.start()
    try:
        yield client
    finally:
        client.stop()


def test_the_kernel_offers_its_debugger(kernel: Frontend) -> None:
    spec = json.loads((Path(kernel.manager.kernel_spec.resource_dir) / "kernel.json").read_text())
    assert spec["metadata"]["debugger"] is True
    kernel.client.kernel_info()
    info = kernel.client.get_shell_msg(timeout=10)
    assert "debugger" in info["content"]["supported_features"], info["content"]


def test_debug_info_names_the_kernels_own_cell_files(debug: DebugClient) -> None:
    code = "x = 1\ny = x + 1\n"
    path = debug.break_at(code, 2)
    info = debug.ok("debugInfo")["body"]
    assert info["isStarted"] is True
    assert path.startswith(info["tmpFilePrefix"]), (path, info)
    assert info["hashMethod"] == "Murmur2"
    assert {"source": path, "breakpoints": [{"line": 2}]} in info["breakpoints"]
    # The file the frontend is told of holds the cell (the ranks keep their own).
    assert Path(path).read_text() == code


def test_a_breakpoint_stops_every_rank_and_each_ranks_frames_and_variables_show(
    debug: DebugClient, kernel: Frontend
) -> None:
    code = "def f(a, b):\n    c = a + b * rank\n    return c\n\nf(2, 3)"
    path = debug.break_at(code, 2)
    seen = len(debug.events)
    cell = debug.execute(code)
    stopped = debug.wait_event("stopped", seen)
    assert stopped["body"]["reason"] == "breakpoint", stopped
    thread = stopped["body"]["threadId"]

    frames = debug.frames(thread, 4)
    tops = top_frames(frames)
    assert sorted(tops) == [0, 1, 2, 3], frames
    for rank, frame in tops.items():
        assert frame["name"] == f"[rank {rank}] f"
        assert frame["line"] == 2
        # The frontend's path for the cell, on every rank.
        assert frame["source"]["path"] == path
        local = {v["name"]: v["value"] for v in debug.scope(frame["id"], "Locals")}
        assert local == {"a": "2", "b": "3"}, local
        value = debug.ok(
            "evaluate", {"expression": "rank", "frameId": frame["id"], "context": "repl"}
        )
        assert value["body"]["result"] == str(rank)
        rich = debug.ok("richInspectVariables", {"variableName": "b", "frameId": frame["id"]})
        assert rich["body"]["data"] == {"text/plain": "3"}
    ids = [f["id"] for f in frames]
    assert len(set(ids)) == len(ids), ids
    assert all(0 < i < 2**31 for i in ids), ids

    ranks = {v["name"]: v["value"] for v in debug.scope(tops[1]["id"], "Ranks")}
    assert list(ranks) == ["rank 0", "rank 1", "rank 2", "rank 3"]
    assert all(v.startswith("stopped (breakpoint) at line 2 in") for v in ranks.values()), ranks

    # Next moves every rank (lockstep): all stop again on line 3.
    seen = len(debug.events)
    debug.ok("next", {"threadId": thread})
    stepped = debug.wait_event("stopped", seen)
    tops = top_frames(debug.frames(stepped["body"]["threadId"], 4))
    assert {r: f["line"] for r, f in tops.items()} == {0: 3, 1: 3, 2: 3, 3: 3}
    local = {v["name"]: v["value"] for v in debug.scope(tops[2]["id"], "Locals")}
    assert local["c"] == str(2 + 3 * 2), local

    # Frames of before the step are gone: a stale id is refused, not sent to a rank.
    stale = debug.request("scopes", {"frameId": ids[0]})
    assert not stale["success"], stale
    assert "unknown frame" in stale["message"], stale

    # copyToGlobals on rank 2 only.
    debug.ok(
        "copyToGlobals",
        {"srcVariableName": "c", "dstVariableName": "c_copy", "srcFrameId": tops[2]["id"]},
    )
    debug.ok("continue", {"threadId": stepped["body"]["threadId"]})
    finished = debug.wait_cell(cell)
    assert finished.reply is not None
    assert finished.reply["content"]["status"] == "ok", finished
    run = kernel.run("print(rank, globals().get('c_copy'))")
    assert run.stdout.splitlines() == ["[0] 0 None", "[1] 1 None", "[2] 2 8", "[3] 3 None"], run
