"""The chorus kernel with its rank kernels on emulated hosts (``chorus kernel install --hosts``).

Same behaviour as local ranks: labelled output, one prompt for every rank, pdb
across ranks, interrupt inside a collective, and nothing left on any host after
shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from testbed.emulated_hosts import EmulatedHosts, Host
from tests.kernel.conftest import _KERNELS, _PREFIX, Frontend, running_kernel
from tests.kernel.debug_client import DebugClient, top_frames
from tests.remote.test_launch_remote import assert_no_orphans, job_processes


@pytest.fixture(scope="module")
def remote_kernel(switch_hosts: EmulatedHosts) -> Iterator[Frontend]:
    name = "chorus-test-remote"
    # Installed the way a user does it: 2 ranks on each of 2 hosts.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "chorus",
            "kernel",
            "install",
            "--hosts",
            "h1,h2",
            "--ranks",
            "2",
            "--timeout",
            "20",
            "--name",
            name,
            "--prefix",
            _PREFIX.name,
        ],
        check=True,
        capture_output=True,
    )
    spec = (_KERNELS / "kernels" / name / "kernel.json").read_text()
    assert "Chorus (4 ranks on h1, h2)" in spec
    # The kernel process finds the hosts' ssh configuration through HOME.
    manager = KernelManager(kernel_name=name)
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(switch_hosts.home)
    try:
        with running_kernel(manager) as frontend:
            yield frontend
    finally:
        if saved is not None:
            os.environ["HOME"] = saved
    assert_no_orphans(switch_hosts, within=10)


def test_cells_run_on_remote_ranks(remote_kernel: Frontend) -> None:
    run = remote_kernel.run(
        "import socket\nprint(socket.gethostname(), chorus.all_sum(np.ones(2) * rank).tolist())"
    )
    assert run.status == "ok", run
    # Ranks on one host print the same line: it is shown once, labelled with both.
    assert run.stdout.splitlines() == ["[0,1] h1 [6.0, 6.0]", "[2,3] h2 [6.0, 6.0]"], run.stdout


def test_one_prompt_answers_every_remote_rank(remote_kernel: Frontend) -> None:
    run = remote_kernel.run("name = input('name? ')\nprint(name, rank)", inputs=["ada"])
    assert run.prompts == ["[0-3] name? "]
    assert all(f"[{r}] ada {r}" in run.stdout for r in range(4)), run.stdout


def test_pdb_across_remote_ranks(remote_kernel: Frontend) -> None:
    run = remote_kernel.run("y = rank * 10\nbreakpoint()\nprint('after', y)", inputs=["p y", "c"])
    assert run.status == "ok", run
    for r in range(4):
        assert f"[{r}] {r * 10}" in run.stdout, run.stdout
        assert f"[{r}] after {r * 10}" in run.stdout, run.stdout


def test_interrupt_in_a_collective_on_remote_ranks(remote_kernel: Frontend) -> None:
    remote_kernel.run("kept = rank + 1")
    code = "import time\nif rank == 3:\n    time.sleep(120)\nchorus.all_sum(np.ones(1000))\n"
    remote_kernel.run_interrupted(code)
    after = remote_kernel.run("print(kept, chorus.all_sum(np.ones(1) * rank).tolist())")
    assert after.status == "ok", after
    for r in range(4):
        assert f"[{r}] {r + 1} [6.0]" in after.stdout, after.stdout


def test_an_interrupt_of_remote_ranks_never_reaches_the_next_cell(remote_kernel: Frontend) -> None:
    # A remote rank's SIGINT travels as `kill` over ssh, each host's on its
    # own. Rank 3's lands, its reply ends the cell, and the next cell starts:
    # a SIGINT for ranks 0-2 still on its way would interrupt that cell (a
    # KeyboardInterrupt in its all_sum and a hang on the ranks it left).
    for trial in range(6):
        remote_kernel.run_interrupted("import time\nif rank == 3:\n    time.sleep(60)\n")
        after = remote_kernel.run("print(chorus.all_sum(np.ones(1)).tolist())", timeout=20)
        assert after.status == "ok", (trial, after)
        assert after.stdout.splitlines() == ["[0-3] [4.0]"], (trial, after)


def _streamed_until(frontend: Frontend, msg_id: str, words: str, within: float) -> str:
    """The cell's stream output so far, read until it holds ``words``."""
    text = ""
    deadline = time.monotonic() + within
    while words not in text:
        assert time.monotonic() < deadline, text
        for msg in frontend._iopub_batch():
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["header"]["msg_type"] == "stream"
            ):
                text += msg["content"]["text"]
    return text


def _sshd_sessions(host: Host) -> list[int]:
    """The host's sshd processes that serve connections (not its listener)."""
    found = []
    for pid in host.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if cmdline.startswith(b"sshd") and b"-D" not in cmdline:
            found.append(pid)
    return found


def test_an_interrupt_that_cannot_reach_a_host_is_named_in_the_next_cell(
    remote_kernel: Frontend, switch_hosts: EmulatedHosts
) -> None:
    # h2's ssh sessions stop answering (SIGSTOP) just before the interrupt:
    # its `kill` cannot get there. The next cell waits for it, then says so
    # and runs; once h2 answers again, the kernel works on every rank.
    h2 = next(h for h in switch_hosts.hosts if h.name == "h2")
    frozen: list[int] = []

    def freeze_h2_then_interrupt() -> None:
        frozen.extend(_sshd_sessions(h2))
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        remote_kernel.manager.interrupt_kernel()

    try:
        run = remote_kernel.run(
            "import time\nif rank < 2:\n    time.sleep(60)\n",
            timeout=30,
            on_start=freeze_h2_then_interrupt,
        )
        assert frozen, "no ssh session on h2"
        assert any(e["ename"] == "KeyboardInterrupt" for e in run.errors), run
        msg_id = remote_kernel.client.execute("print('next', rank)")
        text = _streamed_until(remote_kernel, msg_id, "has not reached them", within=20)
        assert "the interrupt sent to ranks [2,3] (h2) has not reached them after 5 s" in text
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    while True:
        reply = remote_kernel.client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    remote_kernel._iopub_batch()
    after = remote_kernel.run("print(chorus.all_sum(np.ones(1)).tolist())", timeout=30)
    assert after.stdout.splitlines() == ["[0-3] [4.0]"], after


def test_status_names_the_hosts(remote_kernel: Frontend, switch_hosts: EmulatedHosts) -> None:
    run = remote_kernel.run("%chorus status")
    lines = run.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "host", "pid", "state"]
    assert [line.split()[1] for line in lines[1:]] == ["h1", "h1", "h2", "h2"]
    assert all(line.endswith("running") for line in lines[1:])
    assert job_processes(switch_hosts).keys() == {"h1", "h2"}


def test_install_rejects_a_bad_hostfile(tmp_path: Path) -> None:
    bad = tmp_path / "hosts.json"
    bad.write_text('[{"ssh": ""}]')
    result = subprocess.run(
        [sys.executable, "-m", "chorus", "kernel", "install", "--hostfile", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert '"ssh" must be a non-empty host name' in result.stderr


def test_magics_start_ranks_on_remote_hosts(switch_hosts: EmulatedHosts) -> None:
    # %load_ext chorus in a stock IPython kernel, ranks on h0 and h3 over ssh.
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(switch_hosts.home)
    try:
        with running_kernel(KernelManager(kernel_name="python3")) as ipython:
            run = ipython.run("%load_ext chorus\n%chorus start --hosts h0,h3 --timeout 20")
            assert run.status == "ok", run
            assert "2 ranks ready" in run.stdout, run.stdout
            run = ipython.run("%%all\nimport socket\nprint(socket.gethostname(), rank)")
            assert run.stdout.splitlines() == ["[0] h0 0", "[1] h3 1"], run.stdout
            run = ipython.run(
                "%%all\nv = input('v? ')\nprint(v, chorus.all_sum(np.ones(1)))", inputs=["hi"]
            )
            assert run.status == "ok", run
            assert run.prompts == ["[0,1] v? "]
            assert "[0,1] hi [2.]" in run.stdout, run.stdout
            status = ipython.run("%chorus status")
            assert [line.split()[1] for line in status.stdout.splitlines()[1:]] == ["h0", "h3"]
            assert ipython.run("%chorus stop").status == "ok"
            # h1 and h2 may hold the module's kernel; this test used h0 and h3.
            assert_no_orphans(switch_hosts, only={"h0", "h3"})
    finally:
        if saved is not None:
            os.environ["HOME"] = saved


def test_a_stall_on_remote_ranks_is_reported_in_the_cell(remote_kernel: Frontend) -> None:
    # The chorus kernel asks the remote rank kernels on their control channels.
    assert remote_kernel.run("%chorus stall 3").status == "ok"
    remote_kernel.run("chorus.init()\nchorus.barrier()")
    cell = "if rank == 3:\n    chorus.barrier()\n"
    msg_id = remote_kernel.client.execute(cell)
    text = _streamed_until(remote_kernel, msg_id, "the cell goes on waiting", within=30)
    assert "verdict: rank 3 waits in barrier #" in text, text
    assert "which ranks 0-2 never made" in text, text
    remote_kernel.manager.interrupt_kernel()
    while True:
        reply = remote_kernel.client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    remote_kernel._iopub_batch()
    assert remote_kernel.run("%chorus stall off").status == "ok"
    after = remote_kernel.run("print(chorus.all_sum(np.ones(1)).tolist())")
    assert "[0-3] [4.0]" in after.stdout, after


def test_the_debugger_stops_remote_ranks(remote_kernel: Frontend) -> None:
    debug = DebugClient(remote_kernel.client)
    debug.start()
    try:
        code = "import socket\ndef where_am_i():\n    host = socket.gethostname()\n    return host\n\nwhere_am_i()\n"
        path = debug.break_at(code, 4)
        seen = len(debug.events)
        cell = debug.execute(code)
        stopped = debug.wait_event("stopped", seen)
        tops = top_frames(debug.frames(stopped["body"]["threadId"], 4))
        assert sorted(tops) == [0, 1, 2, 3], tops
        for rank, frame in tops.items():
            assert frame["source"]["path"] == path, frame
            local = {v["name"]: v["value"] for v in debug.scope(frame["id"], "Locals")}
            assert local["host"] == repr("h1" if rank < 2 else "h2"), (rank, local)
        debug.ok("continue", {"threadId": stopped["body"]["threadId"]})
        finished = debug.wait_cell(cell)
        assert finished.reply is not None
        assert finished.reply["content"]["status"] == "ok", finished
    finally:
        debug.stop()
