"""Ranks started by a scheduler, not by chorus launch: mpirun across hosts, Slurm's variables.

The ring and mesh backends meet through rank 0 (``CHORUS_COORDINATOR``, given
or derived) instead of a hostfile; the same script runs under ``mpirun`` with
every backend.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys

import pytest

from testbed.emulated_hosts import EmulatedHosts
from tests.remote.test_launch_remote import assert_no_orphans

SCRIPT = """\
import os
import socket
import numpy as np
import chorus
group = chorus.init()
total = chorus.all_sum(np.arange(3.0) + group.rank())
gathered = chorus.all_gather(np.array([group.rank()]))
words = ["result", socket.gethostname(), group.rank(), group.size(), group.backend,
         total.tolist(), gathered.tolist()]
# One write per line: mpirun forwards every write of every rank as it comes.
os.write(1, (" ".join(map(str, words)) + "\\n").encode())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_results(stdout: str, size: int, backend: str, hosts: list[str] | None = None) -> None:
    lines = sorted(line for line in stdout.splitlines() if line.startswith("result"))
    assert len(lines) == size, stdout
    total = [float(sum(range(size)) + size * i) for i in range(3)]
    for rank, line in enumerate(lines):
        words = line.split(" ", 5)
        assert words[2:5] == [str(rank), str(size), backend], line
        assert words[5] == f"{total} {list(range(size))}", line
        if hosts is not None:
            assert words[1] == hosts[rank], line


def mpirun_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    env.update(extra)
    return env


@pytest.mark.parametrize("backend", ["ring", "mesh", "any"])
def test_mpirun_on_one_host_with_tcp_backends(backend: str) -> None:
    extra = {
        "CHORUS_BACKEND": backend,
        "CHORUS_COORDINATOR": f"127.0.0.1:{free_port()}",
        "CHORUS_TOKEN": secrets.token_hex(16),
        "CHORUS_TIMEOUT": "20",
    }
    command = ["mpirun", "-n", "4", "--oversubscribe", "--bind-to", "none"]
    command += [arg for name in extra for arg in ("-x", name)]
    result = subprocess.run(
        [*command, sys.executable, "-c", SCRIPT],
        env=mpirun_env(extra),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    # "any" on one host with every rank local picks shared memory.
    check_results(result.stdout, 4, "shm" if backend == "any" else backend)


@pytest.mark.parametrize("backend", ["ring", "mesh"])
def test_mpirun_across_hosts(switch_hosts: EmulatedHosts, backend: str) -> None:
    extra = {
        "CHORUS_BACKEND": backend,
        "CHORUS_COORDINATOR": f"{switch_hosts.hosts[0].address}:{29500 + len(backend)}",
        "CHORUS_TOKEN": secrets.token_hex(16),
        "CHORUS_TIMEOUT": "20",
    }
    env = mpirun_env({**switch_hosts.env(), **extra})
    # OpenSSH reads its config from the passwd home, not $HOME: name it.
    env["OMPI_MCA_plm_rsh_agent"] = f"ssh -F {switch_hosts.home}/.ssh/config"
    net = str(switch_hosts.mgmt_net)
    command = ["mpirun", "--host", "h0,h1,h2,h3", "-n", "4", "--bind-to", "none"]
    command += ["--mca", "oob_tcp_if_include", net, "--mca", "btl_tcp_if_include", net]
    command += [arg for name in extra for arg in ("-x", name)]
    result = subprocess.run(
        [*command, sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    check_results(result.stdout, 4, backend, hosts=["h0", "h1", "h2", "h3"])
    assert_no_orphans(switch_hosts)


def test_slurm_variables_find_rank_zero() -> None:
    # What srun gives each task (no Slurm daemons here): rank 0's address is
    # derived from the node list and the job id; nobody sets CHORUS_*.
    job = str(40000 + secrets.randbelow(10000))
    processes = []
    for rank in range(4):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHORUS_", "OMPI_"))}
        env.update(
            {
                "SLURM_PROCID": str(rank),
                "SLURM_NTASKS": "4",
                "SLURM_JOB_NODELIST": "localhost",
                "SLURM_JOB_ID": job,
                "SLURM_STEP_ID": "0",
                "CHORUS_BACKEND": "ring",
                "CHORUS_TIMEOUT": "20",
            }
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    check_results("".join(out for out, _ in outputs), 4, "ring")
