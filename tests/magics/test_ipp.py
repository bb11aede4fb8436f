"""chorus on ipyparallel engines, started by ipyparallel's own launchers."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import ipyparallel as ipp
import psutil
import pytest
from chorus.magics.ipp import _engine_listen, setup

from tests.kernel.conftest import Frontend

# Open MPI as root, 3 ranks on 2 cores.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}


@pytest.fixture
def mpi_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in MPI_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize(("engines", "backend"), [("local", None), ("mpi", "ring")])
def test_engines_become_ranks(mpi_env: None, engines: str, backend: str | None) -> None:
    cluster = ipp.Cluster(n=3, engines=engines, log_level=40)
    client = cluster.start_and_connect_sync()
    try:
        order = setup(client, backend=backend, timeout=30)
        view = client[order]
        view.execute(
            "x = chorus.all_sum(np.ones(2) * rank)\n"
            "g = chorus.init()\n"
            "pairs = g.split(rank % 2)\n"
            "y = chorus.all_gather(np.array([rank]), group=pairs)\n",
            block=True,
        )
        assert [v.tolist() for v in view.pull("x", block=True)] == [[3.0, 3.0]] * 3
        assert view.pull("rank", block=True) == [0, 1, 2]
        assert [v.tolist() for v in view.pull("y", block=True)] == [[0, 2], [1], [0, 2]]
        expected = backend or "shm"
        assert view.apply_sync(lambda: __import__("chorus").init().backend) == [expected] * 3
        if engines == "mpi":
            ranks = view.apply_sync(lambda: int(__import__("os").environ["OMPI_COMM_WORLD_RANK"]))
            assert ranks == [0, 1, 2]
    finally:
        cluster.stop_cluster_sync()


def test_ipp_magic(ipython_plain: Frontend) -> None:
    run = ipython_plain.run("%load_ext chorus\n%chorus start --ipp -n 2 --timeout 30", timeout=120)
    assert run.status == "ok", run
    assert "2 engines joined chorus" in run.stdout
    try:
        cell = ipython_plain.run("%%all\nprint('sum', chorus.all_sum(np.ones(1) * rank))")
        assert "[0,1] sum [1.]" in cell.stdout, cell
        bad = ipython_plain.run("%%all --ranks 1\nraise ValueError('only one')")
        assert bad.status == "error"
        assert "[1]" in bad.stderr
        assert "only one" in bad.stderr
        pulled = ipython_plain.run("v = %chorus pull rank\nprint(v)")
        assert "[0, 1]" in pulled.stdout, pulled
        # The interrupt reaches the engines, also inside a collective; the
        # next cell, status and stop work.
        status = ipython_plain.run("%chorus status")
        engine_pids = [int(line.split()[-1]) for line in status.stdout.splitlines()[1:]]
        assert len(engine_pids) == 2, status.stdout
        for trial in range(3):  # rank 0 asleep, rank 1 in the barrier; then the reverse
            ipython_plain.run_interrupted(
                f"%%all\nimport time\nif rank == {trial % 2}:\n    time.sleep(60)\nchorus.barrier()"
            )
            after = ipython_plain.run(
                "%%all\nprint('after', chorus.all_sum(np.ones(1)))", timeout=60
            )
            assert "[0,1] after [2.]" in after.stdout, (trial, after)
        assert ipython_plain.run("%chorus status", timeout=60).status == "ok"
    finally:
        ipython_plain.run("%chorus stop", timeout=60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in engine_pids):
        time.sleep(0.2)
    assert not [p for p in engine_pids if psutil.pid_exists(p)], "engines outlived %chorus stop"


@pytest.fixture
def ipython_plain() -> Iterator[Frontend]:
    from jupyter_client.manager import KernelManager

    from tests.kernel.conftest import running_kernel

    env_manager = KernelManager(kernel_name="python3")
    with running_kernel(env_manager) as frontend:
        yield frontend


def test_setup_needs_engines() -> None:
    class NoEngines:
        ids: list[int] = []  # noqa: RUF012

    with pytest.raises(RuntimeError, match="no engines"):
        setup(NoEngines())


def test_an_engine_on_another_host_names_its_interface_for_gloo() -> None:
    # What _engine_listen reports becomes GLOO_SOCKET_IFNAME: the interface
    # that holds the address the engine listens on.
    info = _engine_listen(local=False)
    host = info["address"].rsplit(":", 1)[0]
    assert info["interface"], info
    shown = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", info["interface"]],
        capture_output=True,
        text=True,
        check=True,
    )
    held = [a["local"] for entry in json.loads(shown.stdout) for a in entry["addr_info"]]
    assert host in held, (info, held)
    assert _engine_listen(local=True)["interface"] is None
