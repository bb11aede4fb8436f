"""The rank set's own life cycle: kernels that exit when asked, sockets that go with them."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from chorus.kernel.provisioning import SocketDir
from chorus.kernel.ranks import RankSet

from tests.kernel.conftest import chorus_kernel_manager, running_kernel


def test_rank_kernels_exit_when_asked() -> None:
    """Every rank exits on its shutdown request (status 0), never by the SIGTERM that follows.

    ipykernel's exit raced its control thread's last flush against the iopub
    thread's stop (chorus.kernel.app); the loser waited 10 s or for ever.
    """

    async def trial() -> list[int | None]:
        ranks = RankSet(2)
        await ranks.start()
        started = list(ranks.ranks)
        # Connection files in the job's private directory, not jupyter_client's /tmp default.
        for rank in started:
            assert Path(rank.manager.connection_file).is_file()
            assert Path(rank.manager.connection_file).parent.name.startswith("chorus-")
        await ranks.shutdown()
        return [rank.exit_code() for rank in started]

    for number in range(8):
        codes = asyncio.run(trial())
        assert codes == [0, 0], f"trial {number}: exit statuses {codes}"


def test_the_chorus_kernel_exits_when_asked() -> None:
    for number in range(3):
        manager = chorus_kernel_manager(ranks=2)
        with running_kernel(manager) as frontend:
            assert frontend.run("print(rank)").status == "ok"
            process = manager.provisioner.process
        assert process.returncode == 0, f"trial {number}: exit status {process.returncode}"


def test_socket_dirs_of_exited_kernels_on_this_host_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    host = socket.gethostname()
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(exited.stdout)
    stale = tmp_path / f"chorus-{host}-k{dead_pid}-0a1b2c3d"
    live = tmp_path / f"chorus-{host}-k{1}-0a1b2c3d"  # pid 1 always runs
    other_host = tmp_path / f"chorus-{host}x-k{dead_pid}-0a1b2c3d"
    unrelated = tmp_path / "kernel-1234.json"
    for path in (stale, live, other_host):
        path.mkdir()
        (path / "rank-0-1").touch()
    unrelated.touch()

    sockets = SocketDir(f"k{12345678}-00ff00ff")
    assert sockets.path.parent == tmp_path
    assert sockets.path.stat().st_mode & 0o777 == 0o700
    assert sockets.socket_base(3) == str(sockets.path / "rank-3")
    assert not stale.exists()
    assert live.exists()
    assert other_host.exists()
    assert unrelated.exists()
    sockets.remove()
    assert not sockets.path.exists()


def test_socket_dir_falls_back_to_tmp_when_the_runtime_dir_is_too_deep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 100)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(deep))
    sockets = SocketDir("k1-00ff00ff")
    try:
        assert not str(sockets.path).startswith(str(deep))
        # Unix socket paths hold at most 107 bytes; jupyter_client appends "-N".
        assert len(sockets.socket_base(99) + "-5") <= 107
    finally:
        sockets.remove()


def test_cell_history_makes_the_profile_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chorus.kernel.history import CellHistory, HistoryQuery

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    history = CellHistory()
    history.store(1, "a = 1")
    history.store(2, "b = 2", output="2")
    assert history.reply(HistoryQuery("tail", n=2))["history"] == [
        (history.session, 1, "a = 1"),
        (history.session, 2, "b = 2"),
    ]
    history.close()
    assert (tmp_path / "ipython" / "profile_default" / "history.sqlite").is_file()
