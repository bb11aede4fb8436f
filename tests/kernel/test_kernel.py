"""The chorus kernel end to end: execution, output, stdin, pdb, interrupt, crash."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_core.paths import jupyter_runtime_dir

from tests.kernel.conftest import CellRun, Frontend, chorus_kernel_manager, running_kernel


def test_labelled_and_collapsed_output(kernel: Frontend) -> None:
    run = kernel.run("print('hello'); print(rank)")
    assert run.status == "ok", run
    assert "[0-3] hello\n" in run.stdout
    for r in range(4):
        assert f"[{r}] {r}\n" in run.stdout, run.stdout


def test_collective_in_a_cell_and_collapsed_result(kernel: Frontend) -> None:
    run = kernel.run("g = chorus.init()\nx = chorus.all_sum(np.ones(3) * rank)\nx")
    assert run.status == "ok", run
    (result,) = run.results
    # The data is the value itself (Out[n], nbconvert); the ranks are in the
    # metadata and in a label line just before it.
    assert result["data"]["text/plain"] == "array([6., 6., 6.])"
    assert result["metadata"]["chorus"]["ranks"] == [0, 1, 2, 3]
    assert run.outputs[-2:] == [
        ("stream", {"name": "stdout", "text": "[0-3]\n"}),
        ("execute_result", result),
    ]
    assert run.displays == []
    differing = kernel.run("rank * 10")
    assert differing.results[0]["data"]["text/plain"] == "[0] 0\n[1] 10\n[2] 20\n[3] 30"


def test_progress_lines_are_live_per_rank_and_keep_their_labels(kernel: Frontend) -> None:
    # A progress bar as tqdm draws it: \r-redrawn on stderr, a newline at the end.
    code = (
        "import sys, time\n"
        "for i in range(6):\n"
        "    sys.stderr.write(f'\\rstep {i}/5 on rank {rank}'); sys.stderr.flush()\n"
        "    time.sleep(0.4)\n"
        "sys.stderr.write('\\rdone\\n')\n"
        "print('after')\n"
    )
    started = time.monotonic()
    run = kernel.run(code)
    ended = time.monotonic()
    assert run.status == "ok", run
    live = [d for d in run.displays if d["metadata"].get("chorus", {}).get("role") == "live"]
    # One live output per rank, labelled, updated in place while the cell ran.
    assert sorted(d["metadata"]["chorus"]["ranks"][0] for d in live) == [0, 1, 2, 3], live
    for display in live:
        (rank,) = display["metadata"]["chorus"]["ranks"]
        assert display["data"]["text/plain"].startswith(f"[{rank}] step "), display
    ids = {d["transient"]["display_id"] for d in live}
    steps = [
        u for _, u in run.updates if u["data"]["text/plain"].split(" ", 1)[-1].startswith("step")
    ]
    assert {u["transient"]["display_id"] for u in steps} == ids, run.updates
    assert any("step 4/5" in u["data"]["text/plain"] for u in steps), run.updates
    # Live: updates came well before the cell ended (it ran for 2.4 s).
    first = min(when for when, _ in run.updates)
    assert first - started < ended - started - 1.0, (started, first, ended)
    # Withdrawn at the end; the final line is shown once for all, label intact.
    last = {u["transient"]["display_id"]: u["data"]["text/plain"] for _, u in run.updates}
    assert last == dict.fromkeys(ids, ""), last
    assert run.stderr == "[0-3] done\n", run.stderr
    assert run.stdout == "[0-3] after\n", run.stdout


def _final_areas(run: CellRun) -> dict[int, str]:
    """Each rank's own output area (made by its clear_output) as it ends the cell."""
    areas: dict[str, dict[str, Any]] = {}
    for content in [*run.displays, *(u for _, u in run.updates)]:
        if content["metadata"].get("chorus", {}).get("role") == "area":
            areas[content["transient"]["display_id"]] = content
    return {a["metadata"]["chorus"]["ranks"][0]: a["data"]["text/plain"] for a in areas.values()}


def test_clear_output_on_one_rank_clears_that_ranks_output_only(kernel: Frontend) -> None:
    code = (
        "from IPython.display import clear_output\n"
        "import time\n"
        "print('before', rank)\n"
        "for i in range(3):\n"
        "    clear_output(wait=True)\n"
        "    print(f'step {i} on rank {rank}')\n"
        "    time.sleep(0.2)\n"
    )
    run = kernel.run(code)
    assert run.status == "ok", run
    # Every rank keeps its own last line; nothing cleared anyone else's.
    assert _final_areas(run) == {r: f"[{r}] step 2 on rank {r}" for r in range(4)}, run
    assert "step" not in run.stdout, run.stdout
    # The areas stand in rank order, whichever rank cleared first.
    placed = [
        d["metadata"]["chorus"]["ranks"][0]
        for d in run.displays
        if d["metadata"].get("chorus", {}).get("role") == "area"
    ]
    assert placed == [0, 1, 2, 3], placed
    # One rank clears: the others' output is where it was; their areas stay empty.
    one = kernel.run(
        "import time\nfrom IPython.display import clear_output\nprint('kept', rank)\n"
        "time.sleep(0.3)\nif rank == 1:\n    clear_output()\n    print('cleared')\n"
        "time.sleep(0.3)\nprint('end', rank)"
    )
    assert one.status == "ok", one
    assert _final_areas(one) == {0: "", 1: "[1] cleared\n[1] end 1", 2: "", 3: ""}, one
    for rank in (0, 2, 3):
        assert f"[{rank}] end {rank}" in one.stdout, one.stdout
    assert "end 1" not in one.stdout, one.stdout


def test_display_ids_are_each_ranks_own(kernel: Frontend) -> None:
    code = (
        "from IPython.display import display\n"
        "h = display(f'start {rank}', display_id='progress')\n"
        "h.update(f'end {rank}')\n"
    )
    run = kernel.run(code)
    assert run.status == "ok", run
    ids = {d["metadata"]["chorus"]["ranks"][0]: d["transient"]["display_id"] for d in run.displays}
    assert len(set(ids.values())) == 4, ids
    # Each rank's display after its label line, its data the rank's own.
    for (kind, label), (_, display) in pairwise(run.outputs):
        if kind == "stream" and "transient" in display:
            (rank,) = display["metadata"]["chorus"]["ranks"]
            assert label["text"] == f"[{rank}]\n"
            assert display["data"]["text/plain"] == f"'start {rank}'", display
    for _, update in run.updates:
        (rank,) = update["metadata"]["chorus"]["ranks"]
        assert update["transient"]["display_id"] == ids[rank], update
        assert f"end {rank}" in update["data"]["text/plain"], update


def test_errors_differing_only_in_a_rank_number_merge(kernel: Frontend) -> None:
    run = kernel.run("raise ValueError(f'bad value on rank {rank} of {size}')")
    assert run.status == "error"
    (error,) = run.errors
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))
    assert text.startswith("[0-3]\n"), text
    for r in range(4):
        assert f"[{r}] ValueError: bad value on rank {r} of 4" in text, text
    # Different frames are different errors, whatever the numbers.
    split = kernel.run(
        "def f():\n    raise KeyError(rank)\nif rank == 1:\n    f()\nraise KeyError(rank)"
    )
    assert len(split.errors) == 2, split.errors


def test_identical_errors_shown_once(kernel: Frontend) -> None:
    run = kernel.run("1 / 0")
    assert run.status == "error"
    assert len(run.errors) == 1, run.errors
    assert run.errors[0]["ename"] == "ZeroDivisionError"
    assert "[0-3]" in run.errors[0]["traceback"][0]
    split = kernel.run("assert rank % 2, 'even'")
    assert [e["traceback"][0] for e in split.errors] == ["\x1b[1;31m[0,2]\x1b[0m"], split.errors


def test_one_prompt_answers_every_rank(kernel: Frontend) -> None:
    run = kernel.run("name = input('name? ')\nprint(name, rank)", inputs=["bob"])
    assert run.prompts == ["[0-3] name? "]
    assert all(f"[{r}] bob {r}" in run.stdout for r in range(4)), run.stdout


def test_reply_to_one_rank_with_prefix(kernel: Frontend) -> None:
    run = kernel.run("v = input('v? ')\nprint('got', v)", inputs=["!1 one", "rest"])
    assert run.prompts == ["[0-3] v? ", "[0,2,3] v? "], run.prompts
    assert "[1] got one" in run.stdout
    assert "[0,2,3] got rest" in run.stdout, run.stdout


def test_pdb_across_ranks(kernel: Frontend) -> None:
    code = "y = rank * 100\nbreakpoint()\nz = y + 1\nprint('z', z)"
    run = kernel.run(code, inputs=["p y", "n", "c"])
    assert run.status == "ok", run
    assert run.prompts == ["[0-3] ipdb> "] * 3, run.prompts  # IPython's pdb
    for r in range(4):
        assert f"[{r}] {r * 100}" in run.stdout, run.stdout
        assert f"[{r}] z {r * 100 + 1}" in run.stdout
    check = kernel.run("print(z == y + 1)")
    assert "[0-3] True" in check.stdout


def test_ranks_subset_and_target(kernel: Frontend) -> None:
    run = kernel.run("%%ranks 0,2\nprint('only', rank)")
    assert run.stdout.strip().splitlines() == ["[0] only 0", "[2] only 2"], run.stdout
    assert kernel.run("%target 1-2").status == "ok"
    run = kernel.run("print('t', rank)")
    assert sorted(run.stdout.strip().splitlines()) == ["[1] t 1", "[2] t 2"]
    assert kernel.run("%target all").status == "ok"
    bad = kernel.run("%%ranks 7\nprint(1)")
    assert bad.status == "error"
    assert "out of range" in bad.errors[0]["evalue"]


def test_interrupt_inside_a_collective_keeps_state(kernel: Frontend) -> None:
    kernel.run("kept = rank + 41")
    code = (
        "import time\n"
        "if rank == 0:\n    time.sleep(120)\n"
        "chorus.all_sum(np.ones(1 << 20, np.float32))\n"
    )
    kernel.run_interrupted(code)
    after = kernel.run("print(kept, chorus.all_sum(np.ones(2) * rank).tolist())")
    assert after.status == "ok", after
    for r in range(4):
        assert f"[{r}] {r + 41} [6.0, 6.0]" in after.stdout, after.stdout


def test_complete_inspect_and_is_complete(kernel: Frontend) -> None:
    client = kernel.client
    reply = client.complete("chorus.all_s", 12, reply=True, timeout=30)
    assert "all_sum" in reply["content"]["matches"], reply["content"]
    reply = client.inspect("chorus.all_sum", 14, reply=True, timeout=30)
    assert reply["content"]["found"]
    msg_id = client.is_complete("for i in range(3):")
    reply = client.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "incomplete"


def test_status_table(kernel: Frontend) -> None:
    run = kernel.run("%chorus status")
    lines = run.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "host", "pid", "state"]
    assert len(lines) == 5
    assert all(line.split()[1] == "localhost" for line in lines[1:])
    assert all("running" in line for line in lines[1:])


def test_crashed_rank_is_reported_and_shutdown_leaves_no_orphans() -> None:
    manager = chorus_kernel_manager(ranks=3)
    with running_kernel(manager) as frontend:
        kernel_pid = manager.provisioner.process.pid
        frontend.run("g = chorus.init()")
        pids = frontend.rank_pids()
        assert len(pids) == 3
        code = "import os\nif rank == 2:\n    os._exit(3)\nchorus.all_sum(np.ones(4))"
        run = frontend.run(code, timeout=60)
        assert run.status == "error"
        assert "rank 2 exited with code 3" in run.stderr, run.stderr
        assert any(e["ename"] == "RankDied" for e in run.errors), run.errors
        still = frontend.run("print('alive', rank)")
        assert "[0] alive 0" in still.stdout, still.stdout
        assert "[1] alive 1" in still.stdout, still.stdout
        assert "rank 2 is not running" in still.stderr, still.stderr
        assert "restart the kernel to get every rank back" in still.stderr, still.stderr
    time.sleep(0.5)
    assert not psutil.pid_exists(kernel_pid) or psutil.Process(kernel_pid).status() == "zombie"
    leftovers = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert leftovers == [], leftovers


def test_sigkill_of_the_kernel_takes_the_ranks_with_it() -> None:
    manager = chorus_kernel_manager(ranks=2)
    with running_kernel(manager, now=True) as frontend:
        frontend.run("print(rank)")
        pids = frontend.rank_pids()
        assert len(pids) == 2
        os.kill(manager.provisioner.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.1)
        assert not any(psutil.pid_exists(p) for p in pids)


def _socket_dirs(kernel_pid: int) -> list[Path]:
    """The directories of local rank kernels' unix sockets made by chorus kernel ``kernel_pid``."""
    base = Path(jupyter_runtime_dir())
    return sorted(base.glob(f"chorus-{socket.gethostname()}-k{kernel_pid}-*"))


def test_rank_sockets_go_with_the_kernel_and_a_killed_kernels_with_the_next() -> None:
    manager = chorus_kernel_manager(ranks=2)
    with running_kernel(manager, now=True) as frontend:
        assert frontend.run("print(rank)").status == "ok"
        killed = manager.provisioner.process.pid
        (left,) = _socket_dirs(killed)
        assert any(left.iterdir())  # the ranks' sockets
        os.kill(killed, signal.SIGKILL)
    # Killed outright, the kernel could not remove them; the next one does.
    assert left.exists()
    manager = chorus_kernel_manager(ranks=2)
    with running_kernel(manager) as frontend:
        assert frontend.run("print(rank)").status == "ok"
        assert not left.exists()
        clean = manager.provisioner.process.pid
        assert len(_socket_dirs(clean)) == 1
    assert _socket_dirs(clean) == []


def test_mlx_distributed_in_a_cell(kernel: Frontend) -> None:
    """The rank kernels carry MLX_RANK / MLX_HOSTFILE: a real MLX ring program runs."""
    code = (
        "import mlx.core as mx\n"
        "mg = mx.distributed.init(backend='ring', strict=True)\n"
        "total = mx.distributed.all_sum(mx.array([float(rank), 1.0]), group=mg)\n"
        "mx.eval(total)\n"
        "print('mlx', mg.rank(), mg.size(), total.tolist())"
    )
    run = kernel.run(code, timeout=120)
    assert run.status == "ok", run
    for r in range(4):
        assert f"[{r}] mlx {r} 4 [6.0, 4.0]" in run.stdout, run.stdout


def test_rich_outputs_keep_their_data_after_a_label_of_their_own(kernel: Frontend) -> None:
    code = (
        "from IPython.display import HTML, Markdown, display\n"
        "display(HTML(f'<b>r{rank}</b>'))\n"
        "display(Markdown(f'*m{rank}*'), display_id=f'md{rank}')\n"
        "HTML(f'<i>result {rank}</i>')"
    )
    run = kernel.run(code)
    assert run.status == "ok", run
    # Each rank's display after its label line: HTML merged in rank order,
    # Markdown (a display id: shown at once) and the differing results' HTML.
    shown = [(k, c) for k, c in run.outputs if k != "execute_result"]
    assert [k for k, _ in shown] == ["stream", "display_data"] * 12, shown
    pairs = [
        (label["text"], display)
        for (_, label), (_, display) in zip(shown[::2], shown[1::2], strict=True)
    ]
    for label, display in pairs:
        assert label == display["metadata"]["chorus"]["label"] + "\n"
        (rank,) = display["metadata"]["chorus"]["ranks"]
        assert label == f"[{rank}]\n"
        # The data is the rank's own, untouched.
        assert display["data"]["text/plain"].startswith("<IPython.core.display"), display
        assert display["data"].get("text/html") in (
            f"<b>r{rank}</b>",
            f"<i>result {rank}</i>",
            None,
        )
        assert display["data"].get("text/markdown") in (f"*m{rank}*", None)
    # The merged HTML in rank order (the display-id Markdown may come first).
    bold = [d["data"]["text/html"] for _, d in pairs if "<b>" in d["data"].get("text/html", "")]
    assert bold == [f"<b>r{rank}</b>" for rank in range(4)]
    markdown = sorted(d["data"]["text/markdown"] for _, d in pairs if "text/markdown" in d["data"])
    assert markdown == [f"*m{rank}*" for rank in range(4)]
    results = [d["data"]["text/html"] for _, d in pairs[-4:]]
    assert results == [f"<i>result {rank}</i>" for rank in range(4)]
    # The execute_result lists every rank's value, its text plain.
    (result,) = run.results
    assert result["data"]["text/plain"].splitlines()[0].startswith("[0] <IPython.core.display")


def test_rich_outputs_in_rank_order_identical_once_images_in_a_grid(kernel: Frontend) -> None:
    code = (
        "import time\n"
        "from IPython.display import HTML, display\n"
        "time.sleep(0.15 * (3 - rank))  # rank 3 displays first\n"
        "display(HTML('<b>the same everywhere</b>'))\n"
        "display(HTML(f'<i>rank {rank}</i>'))\n"
        "print('after', rank)\n"
    )
    run = kernel.run(code)
    assert run.status == "ok", run
    labels = [d["metadata"]["chorus"]["label"] for d in run.displays]
    assert labels == ["[0-3]", "[0]", "[1]", "[2]", "[3]"], labels
    figures = kernel.run(
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import display\n"
        "fig = plt.figure(figsize=(2, 2))\n"
        "plt.plot([0, rank % 2])\n"
        "display(fig)\n"
        "plt.close(fig)\n"
    )
    assert figures.status == "ok", figures
    (grid,) = figures.displays
    assert grid["metadata"]["chorus"]["role"] == "grid", grid["metadata"]
    assert grid["metadata"]["chorus"]["groups"] == [[0, 2], [1, 3]]
    assert grid["data"]["text/html"].count("data:image/png;base64,") == 2


def test_output_grouped_by_rank(kernel: Frontend) -> None:
    assert kernel.run("%output byrank").status == "ok"
    try:
        run = kernel.run("print('a'); print('b', rank)")
        assert "── rank 0 ──\na\nb 0\n" in run.stdout, run.stdout
        assert "── rank 3 ──\na\nb 3\n" in run.stdout
    finally:
        kernel.run("%output collapse")


def test_interrupt_while_ranks_wait_for_input(kernel: Frontend) -> None:
    kernel.run("before_input = rank")
    # No answer is given: the prompt is open when the interrupt arrives.
    msg_id = kernel.client.execute("answer = input('never? ')", allow_stdin=True)
    prompt = kernel.client.get_stdin_msg(timeout=60)
    assert prompt["content"]["prompt"] == "[0-3] never? "
    kernel.manager.interrupt_kernel()
    deadline = time.monotonic() + 30
    while True:
        reply = kernel.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    after = kernel.run("print(before_input == rank)")
    assert "[0-3] True" in after.stdout, after


def test_output_throughput_none_lost_order_kept(kernel: Frontend) -> None:
    run = kernel.run("for i in range(10_000):\n    print(rank, i)", timeout=120)
    assert run.status == "ok"
    seen: dict[int, list[int]] = {r: [] for r in range(4)}
    for line in run.stdout.splitlines():
        label, rank, index = line.split()
        assert label == f"[{rank}]", line
        seen[int(rank)].append(int(index))
    for rank in range(4):
        assert seen[rank] == list(range(10_000)), f"rank {rank}: {len(seen[rank])} lines"


def test_restart_replaces_every_rank() -> None:
    manager = chorus_kernel_manager(ranks=2)
    with running_kernel(manager) as frontend:
        frontend.run("alive = True")
        old = frontend.rank_pids()
        assert len(old) == 2
        manager.restart_kernel(now=False)
        frontend.client.wait_for_ready(timeout=60)
        run = frontend.run("print('fresh', 'alive' in dir())")
        assert "[0,1] fresh False" in run.stdout, run
        new = frontend.rank_pids()
        assert len(new) == 2
        assert not set(old) & set(new)
        for pid in old:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_history_survives_a_restart_and_ranks_keep_the_session() -> None:
    marker = f"history_marker_{os.getpid()}_{time.monotonic_ns()}"
    manager = chorus_kernel_manager(ranks=2)
    with running_kernel(manager) as frontend:
        assert frontend.run(f"{marker} = rank").status == "ok"
        # %history on the ranks: this session's cells, numbered as the frontend numbers them.
        run = frontend.run("%history -n -l 1")
        reply = frontend.client.history(hist_access_type="tail", n=2, output=False, raw=True)
        shown = frontend.client.get_shell_msg(timeout=30)
        assert shown["parent_header"]["msg_id"] == reply
        (session, line, source) = shown["content"]["history"][-2]
        assert source == f"{marker} = rank", shown
        assert re.search(rf"\[0,1\]\s+{line}: {marker} = rank", run.stdout), run
        manager.restart_kernel(now=False)
        frontend.client.wait_for_ready(timeout=60)
        asked = frontend.client.history(
            hist_access_type="search", pattern=f"{marker}*", output=False, raw=True
        )
        found = frontend.client.get_shell_msg(timeout=30)
        assert found["parent_header"]["msg_id"] == asked
        assert [h[:2] for h in found["content"]["history"]] == [[session, line]], found


def test_a_new_machine_without_an_ipython_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing has made ~/.ipython/profile_default yet: the kernel starts and
    # keeps the history there.
    ipython_dir = tmp_path / "ipython"
    monkeypatch.setenv("IPYTHONDIR", str(ipython_dir))
    manager = chorus_kernel_manager(ranks=2)
    with running_kernel(manager) as frontend:
        assert frontend.run("first_cell_here = 1").status == "ok"
        asked = frontend.client.history(hist_access_type="tail", n=1, output=False, raw=True)
        reply = frontend.client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == asked
        assert reply["content"]["history"][-1][2] == "first_cell_here = 1", reply
    assert (ipython_dir / "profile_default" / "history.sqlite").is_file()


def test_tracebacks_and_in_name_the_cell_the_frontend_shows(kernel: Frontend) -> None:
    # Only rank 0 runs this one: the ranks' own counts would drift apart.
    assert kernel.run("%%ranks 0\nskipped_by_others = 1").status == "ok"
    run = kernel.run("x_undefined_here")
    count = run.reply["content"]["execution_count"]
    assert run.status == "error"
    (error,) = run.errors
    assert any(f"In[{count}]" in line for line in error["traceback"]), error["traceback"]
    # Inside a cell IPython's count is already the next one (as with ipykernel).
    same = kernel.run("print(get_ipython().execution_count)")
    assert same.stdout == f"[0-3] {same.reply['content']['execution_count'] + 1}\n", same


def test_flight_record_names_the_cell_and_line(kernel: Frontend) -> None:
    run = kernel.run("import chorus.debug\ng = chorus.init()\n\nchorus.all_sum(np.ones(2))")
    assert run.status == "ok", run
    ask = kernel.run(
        "rec = chorus.debug.flight_record()[-1]\n"
        "print(rec['op'], rec['state'], rec['site']['line'], rec['site']['cell'] == "
        "get_ipython().execution_count - 1)"
    )
    assert ask.status == "ok", ask
    assert "[0-3] all_sum completed 4 True\n" in ask.stdout, ask.stdout


def _streams_until(kernel: Frontend, parents: set[str], needle: str, timeout: float) -> str:
    """stderr and stdout text of iopub messages answering ``parents``, until ``needle`` shows."""
    text = ""
    deadline = time.monotonic() + timeout
    while needle not in text:
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout} s; got:\n{text}"
        for msg in kernel._iopub_batch():
            if (
                msg["parent_header"].get("msg_id") in parents
                and msg["header"]["msg_type"] == "stream"
            ):
                text += msg["content"]["text"]
    return text


def test_a_stalled_cell_says_where_every_rank_is_then_interrupt_works(kernel: Frontend) -> None:
    assert kernel.run("%chorus stall 3").status == "ok"
    assert kernel.run("g = chorus.init()\nchorus.all_sum(np.ones(2))").status == "ok"
    started = time.monotonic()
    cell = kernel.client.execute("if rank == 0:\n    chorus.all_sum(np.ones(3))\n")
    text = _streams_until(kernel, {cell}, "the cell goes on waiting", timeout=20)
    assert time.monotonic() - started < 15, text
    assert "[chorus] this cell has run for" in text
    # (its number depends on the cells the module's kernel ran before)
    verdict = (
        r"verdict: rank 0 waits in all_sum #\d+ \(float64 \(3,\)\), which ranks 1-3 never made"
    )
    assert re.search(verdict, text), text
    assert "[1-3]  not in a chorus call: idle" in text, text
    assert "at cell " in text, text
    # While the cell runs: %chorus where on the control channel (another console).
    ask = kernel.client.session.msg(
        "execute_request", {"code": "%chorus where", "silent": False, "store_history": False}
    )
    kernel.client.control_channel.send(ask)
    answer = _streams_until(kernel, {ask["header"]["msg_id"]}, "verdict:", timeout=15)
    assert re.search(r"rank 0 waits in all_sum #\d+", answer), answer
    # The user decides: the interrupt ends the cell, the next collective works.
    kernel.manager.interrupt_kernel()
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the interrupted cell never replied"
        reply = kernel.client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == cell:
            break
    assert reply["content"]["status"] == "error", reply
    kernel._iopub_batch()
    after = kernel.run("print(chorus.all_sum(np.ones(2) * rank).tolist())")
    assert after.status == "ok", after
    assert "[0-3] [6.0, 6.0]" in after.stdout, after.stdout
    idle = kernel.run("%chorus where")
    assert "verdict: no rank is inside a chorus call" in idle.stdout, idle.stdout
    assert kernel.run("%chorus stall off").status == "ok"


def test_a_rank_asks_where_every_rank_is_from_a_cell(kernel: Frontend) -> None:
    # Ranks 1-3 wait in all_sum for rank 0, which asks the chorus kernel
    # (again until all three are in it: they start the cell when they start it).
    code = (
        "import time\n"
        "g = chorus.init()\n"
        "if rank == 0:\n"
        "    for _ in range(100):\n"
        "        report = chorus.debug.where()\n"
        "        if report.verdict.waiting == [1, 2, 3]:\n"
        "            break\n"
        "        time.sleep(0.1)\n"
        "    print('KIND', report.verdict.kind, report.verdict.waiting)\n"
        "    print(report.text())\n"
        "chorus.all_sum(np.ones(1))"
    )
    run = kernel.run(code)
    assert run.status == "ok", run
    assert "[0] KIND missing-call [1, 2, 3]" in run.stdout, run.stdout
    assert "not in a chorus call: runs <module> at cell " in run.stdout, run.stdout
