"""JupyterLab's debugger across the ranks: the debug protocol through a 4-rank kernelspec.

ipykernel's own debugger test sequence (initialize, attach, dumpCell,
setBreakpoints, configurationDone, execute, stopped, stackTrace, scopes,
variables, richInspectVariables, copyToGlobals, continue), adapted to ranks.
"""

from __future__ import annotations

import json
import time
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
    assert all(v == "stopped: f, line 2 (breakpoint)" for v in ranks.values()), ranks

    # Next moves every rank (lockstep): all stop again on line 3.
    thread, lines = debug.next_line(thread, 4)
    assert lines == {0: 3, 1: 3, 2: 3, 3: 3}, lines
    tops = top_frames(debug.frames(thread, 4))
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
    debug.continue_to_end(thread, cell)
    run = kernel.run("print(rank, globals().get('c_copy'))")
    assert run.stdout.splitlines() == ["[0] 0 None", "[1] 1 None", "[2] 2 8", "[3] 3 None"], run


def test_a_breakpoint_that_one_rank_reaches_stops_that_rank_only(debug: DebugClient) -> None:
    code = "x = rank * 10\nif rank == 2:\n    y = x + 1\nz = x\n"
    debug.break_at(code, 3)
    cell, thread, frames = debug.run_to_stop(code, 1)
    assert set(top_frames(frames)) == {2}, frames
    deadline = time.monotonic() + 30
    while True:
        ranks = {v["name"]: v["value"] for v in debug.scope(frames[0]["id"], "Ranks")}
        if ranks["rank 0"] == "finished this cell" or time.monotonic() > deadline:
            break
        debug.pump(0.2)
    assert ranks["rank 2"] == "stopped: <module>, line 3 (breakpoint)", ranks
    for rank in (0, 1, 3):
        assert ranks[f"rank {rank}"] == "finished this cell", ranks
    debug.continue_to_end(thread, cell)


def test_ranks_wait_in_a_collective_while_one_is_paused_for_30_s(debug: DebugClient) -> None:
    # The kernelspec's CHORUS_TIMEOUT is 20 s: a paused rank must not count as lost.
    code = (
        "g = chorus.init()\n"
        "if rank == 0:\n"
        "    hold = 1\n"
        "total = chorus.all_sum(np.full(2, rank + 1.0))\n"
        "print(total)\n"
    )
    debug.break_at(code, 3)
    cell, thread, frames = debug.run_to_stop(code, 1)
    assert set(top_frames(frames)) == {0}, frames
    paused_at = time.monotonic()
    ranks: dict[str, str] = {}
    while time.monotonic() - paused_at < 30:
        ranks = {v["name"]: v["value"] for v in debug.scope(frames[0]["id"], "Ranks")}
        debug.pump(1.0)
    for rank in (1, 2, 3):
        assert ranks[f"rank {rank}"] == "running: inside all_sum on world", ranks
    assert not cell.done, cell
    # Nor does the kernel call it a stall; "where" names the rank held in the debugger.
    assert "cannot all be making progress" not in cell.stderr, cell.stderr
    where = debug.execute_on_control("%chorus where")
    deadline = time.monotonic() + 30
    while "stopped in the debugger" not in where.stdout and time.monotonic() < deadline:
        debug.pump(0.2)
    assert "stopped in the debugger: <module>, line 3" in where.stdout, where.stdout
    finished = debug.continue_to_end(thread, cell)
    assert "[0-3] [10. 10.]" in finished.stdout, finished


def test_one_rank_steps_alone_when_lockstep_is_off_and_rank_2_is_in_focus(
    debug: DebugClient,
) -> None:
    code = "a = rank\nb = a + 1\nc = b + 1\n"
    debug.break_at(code, 1)
    cell, _thread, _frames = debug.run_to_stop(code, 4)

    seen = len(debug.events)
    focus = debug.ok("evaluate", {"expression": "%rank 2", "context": "repl"})
    assert focus["body"]["result"] == "rank 2 is in focus"
    focused = debug.wait_event("stopped", seen)
    frames = debug.frames(focused["body"]["threadId"], 4)
    assert frames[0]["name"].startswith("[rank 2]"), frames

    debug.ok("evaluate", {"expression": "%lockstep off", "context": "repl"})
    thread, lines = debug.next_line(focused["body"]["threadId"], 4)
    assert lines == {0: 1, 1: 1, 2: 2, 3: 1}, lines
    debug.ok("evaluate", {"expression": "%lockstep on", "context": "repl"})
    thread, lines = debug.next_line(thread, 4)
    assert lines == {0: 2, 1: 2, 2: 3, 3: 2}, lines
    debug.continue_to_end(thread, cell)


def test_a_client_that_asks_for_threads_gets_one_thread_per_rank(debug: DebugClient) -> None:
    code = "def f():\n    here = rank\n    return here\n\nf()\n"
    debug.break_at(code, 2)
    seen = len(debug.events)
    cell = debug.execute(code)
    debug.wait_event("stopped", seen)
    threads = debug.ok("threads")["body"]["threads"]
    names = sorted(t["name"] for t in threads)
    assert names == [f"[rank {r}] MainThread" for r in range(4)], threads
    by_rank = {int(t["name"][6]): t["id"] for t in threads}
    frames = debug.ok("stackTrace", {"threadId": by_rank[3]})["body"]["stackFrames"]
    assert {f["name"] for f in frames} == {"[rank 3] f", "[rank 3] <module>"}, frames
    # Continuing one thread moves its rank only.
    debug.ok("continue", {"threadId": by_rank[3], "singleThread": True})
    assert debug.ok("stackTrace", {"threadId": by_rank[0]})["body"]["stackFrames"]
    assert not debug.ok("stackTrace", {"threadId": by_rank[3]})["body"]["stackFrames"]
    debug.ok("continue", {"threadId": by_rank[0]})
    assert debug.wait_cell(cell).reply is not None


def test_pause_stops_a_running_rank_and_its_variables_can_be_set(debug: DebugClient) -> None:
    code = "import time\nspin = rank == 3\nwhile spin:\n    time.sleep(0.01)\ndone = rank\n"
    debug.break_at(code, 5)
    cell, thread, frames = debug.run_to_stop(code, 3)
    assert set(top_frames(frames)) == {0, 1, 2}, frames
    ranks = {v["name"]: v["value"] for v in debug.scope(frames[0]["id"], "Ranks")}
    assert ranks["rank 3"].startswith("running: line "), ranks

    seen = len(debug.events)
    debug.ok("pause", {"threadId": thread})
    debug.wait_event("stopped", seen)
    tops = top_frames(debug.frames(thread, 4))
    assert tops[3]["line"] in (3, 4), tops
    debug.ok("setExpression", {"expression": "spin", "value": "False", "frameId": tops[3]["id"]})
    # Out of its loop, rank 3 reaches the breakpoint the others are at.
    seen = len(debug.events)
    debug.ok("continue", {"threadId": thread})
    again = debug.wait_event("stopped", seen)
    tops = top_frames(debug.frames(again["body"]["threadId"], 1))
    assert {r: f["line"] for r, f in tops.items()} == {3: 5}, tops
    debug.continue_to_end(again["body"]["threadId"], cell)


def test_an_interrupt_while_paused_ends_the_cell_and_the_debugger_stops_again_after(
    debug: DebugClient, kernel: Frontend
) -> None:
    code = "def g():\n    v = rank\n    return v\n\ng()\n"
    debug.break_at(code, 2)
    for _trial in range(3):
        cell, thread, _frames = debug.run_to_stop(code, 4)
        kernel.manager.interrupt_kernel()
        finished = debug.wait_cell(cell, timeout=30)
        assert finished.reply is not None
        assert finished.reply["content"]["status"] == "error", finished
        assert any(e["ename"] == "KeyboardInterrupt" for e in finished.errors), finished.errors
        run = kernel.run("print(rank * 2)")
        assert run.stdout.splitlines() == ["[0] 0", "[1] 2", "[2] 4", "[3] 6"], run
    # The ranks' debuggers still stop them (a plain ipykernel's would not: ipykernel#821).
    cell, thread, _frames = debug.run_to_stop(code, 4)
    debug.continue_to_end(thread, cell)


def test_a_frontend_that_leaves_and_comes_back_finds_the_debugger_working(
    debug: DebugClient, kernel: Frontend
) -> None:
    code = "p = rank\nq = p * 3\n"
    debug.break_at(code, 2)
    debug.stop()
    # Left: the breakpoint is gone, the cell runs through.
    seen = len(debug.events)
    cell = debug.wait_cell(debug.execute(code))
    assert cell.reply is not None
    assert cell.reply["content"]["status"] == "ok"
    assert not [e for e in debug.events[seen:] if e["event"] == "stopped"]
    assert debug.ok("debugInfo")["body"]["isStarted"] is False
    # Back (JupyterLab's debugger switched on again): it stops again.
    debug.start()
    debug.break_at(code, 2)
    cell, thread, _frames = debug.run_to_stop(code, 4)
    debug.continue_to_end(thread, cell)


def test_between_cells_the_variables_are_rank_0s_or_the_focused_ranks(
    debug: DebugClient, kernel: Frontend
) -> None:
    assert kernel.run("marker = rank * 7").status == "ok"
    variables = {v["name"]: v["value"] for v in debug.ok("inspectVariables")["body"]["variables"]}
    assert variables["marker"] == "0", variables
    run = kernel.run("%chorus focus 2")
    assert "the debugger shows rank 2" in run.stdout, run
    try:
        variables = {
            v["name"]: v["value"] for v in debug.ok("inspectVariables")["body"]["variables"]
        }
        assert variables["marker"] == "14", variables
        rich = debug.ok("richInspectVariables", {"variableName": "marker"})
        assert rich["body"]["data"] == {"text/plain": "14"}, rich
        bad = kernel.run("%chorus focus 9")
        assert bad.status == "error", bad
        assert "there are ranks 0-3, not 9" in bad.errors[0]["evalue"], bad.errors
    finally:
        kernel.run("%chorus focus 0")
