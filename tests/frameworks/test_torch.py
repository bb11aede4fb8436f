"""torch.distributed in chorus ranks with no arguments: under chorus launch, in the
kernel, with the magics, over ssh on emulated hosts, and on ipyparallel engines.

torch's rendezvous (env://) reads torchrun's variables, which chorus writes for
every rank (chorus/rendezvous.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from testbed.emulated_hosts import EmulatedHosts
from tests.kernel.conftest import Frontend, chorus_kernel_manager, running_kernel
from tests.launch.helpers import launch

SCRIPTS = Path(__file__).parent / "scripts"

# A cell as a torch user writes it: no arguments to init_process_group.
TORCH_CELL = (
    "import os, torch, torch.distributed as dist\n"
    "dist.init_process_group('gloo')\n"
    "t = torch.ones(2) * (dist.get_rank() + 1)\n"
    "dist.all_reduce(t)\n"
    "print('torch', dist.get_rank(), dist.get_world_size(), os.environ['LOCAL_RANK'], t.tolist())\n"
    "dist.destroy_process_group()"
)


def _weights(output: str) -> str:
    found = re.findall(r"weights (.+)", output)
    assert len(found) == 1, output
    return str(found[0])


def test_a_torchrun_script_runs_unchanged_under_chorus_launch(tmp_path: Path) -> None:
    script = str(SCRIPTS / "ddp_train.py")
    chorus_run = launch("-n", "4", script, timeout=180)
    assert chorus_run.returncode == 0, chorus_run.stdout + chorus_run.stderr
    for rank in range(4):
        expected = (
            f"[{rank}] env RANK={rank} WORLD_SIZE=4 LOCAL_RANK={rank} LOCAL_WORLD_SIZE=4"
            f" GROUP_RANK=0 ROLE_RANK={rank}"
        )
        assert expected in chorus_run.stdout, chorus_run.stdout
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torch's torchrun is missing"
    reference = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "4", script],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr
    # The same training: the same weights, to the last printed digit.
    assert _weights(chorus_run.stdout) == _weights(reference.stdout)


def test_torch_distributed_under_chorus_launch_with_mpirun() -> None:
    result = launch("--backend", "mpi", "-n", "2", "-c", TORCH_CELL, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[0] torch 0 2 0 [3.0, 3.0]" in result.stdout, result.stdout
    assert "[1] torch 1 2 1 [3.0, 3.0]" in result.stdout, result.stdout


def test_rendezvous_the_user_set_is_kept() -> None:
    code = (
        "import os\nprint(os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'], os.environ['RANK'])"
    )
    env = {**os.environ, "MASTER_ADDR": "10.9.8.7", "MASTER_PORT": "4321", "RANK": "99"}
    result = subprocess.run(
        [sys.executable, "-m", "chorus", "launch", "-n", "2", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The address pair is the user's; the rank is always the rank's own.
    assert "[0] 10.9.8.7 4321 0" in result.stdout, result.stdout
    assert "[1] 10.9.8.7 4321 1" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def kernel4() -> Iterator[Frontend]:
    with running_kernel(chorus_kernel_manager(4)) as frontend:
        yield frontend


def test_torch_distributed_in_a_chorus_kernel_cell(kernel4: Frontend) -> None:
    run = kernel4.run(TORCH_CELL, timeout=120)
    assert run.status == "ok", run
    for rank in range(4):
        assert f"[{rank}] torch {rank} 4 {rank} [10.0, 10.0]" in run.stdout, run.stdout
    # chorus's own collectives take and give tensors in the same cell.
    mixed = kernel4.run(
        "s = chorus.all_sum(torch.ones(2) * rank)\nprint(type(s).__name__, s.tolist())"
    )
    assert "[0-3] Tensor [6.0, 6.0]" in mixed.stdout, mixed


def test_torch_distributed_with_the_magics() -> None:
    with running_kernel(KernelManager(kernel_name="python3")) as ipython:
        start = ipython.run("%load_ext chorus\n%chorus start -n 2 --timeout 20")
        assert start.status == "ok", start
        try:
            run = ipython.run("%%all\n" + TORCH_CELL, timeout=120)
            assert run.status == "ok", run
            assert "[0] torch 0 2 0 [3.0, 3.0]" in run.stdout, run.stdout
            assert "[1] torch 1 2 1 [3.0, 3.0]" in run.stdout, run.stdout
        finally:
            ipython.run("%chorus stop", timeout=60)


def test_torch_distributed_on_ipyparallel_engines() -> None:
    import ipyparallel as ipp
    from chorus.magics.ipp import setup

    cluster = ipp.Cluster(n=2, engines="local", log_level=40)
    client = cluster.start_and_connect_sync(activate=False)
    try:
        order = setup(client, timeout=30)
        view = client[order]
        view.execute(TORCH_CELL.replace("print(", "result = ("), block=True)
        results = view.pull("result", block=True)
        assert [r[:4] for r in results] == [("torch", 0, 2, "0"), ("torch", 1, 2, "1")], results
        assert [r[4] for r in results] == [[3.0, 3.0], [3.0, 3.0]]
    finally:
        cluster.stop_cluster_sync()


def test_torch_distributed_over_ssh_two_ranks_per_host(
    switch_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    hostfile = tmp_path / "hosts.json"
    entries = [
        {"ssh": host.name, "ips": [host.address]}
        for host in switch_hosts.hosts[:2]
        for _ in range(2)
    ]
    hostfile.write_text(json.dumps({"backend": "ring", "hosts": entries}))
    script = TORCH_CELL + "\nprint('group', os.environ['GROUP_RANK'], os.environ['MASTER_ADDR'])"
    result = subprocess.run(
        [sys.executable, "-m", "chorus", "launch", "--hostfile", str(hostfile), "-c", script],
        env=switch_hosts.env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    master = switch_hosts.hosts[0].address
    for rank, (local, group) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        assert f"[{rank}] torch {rank} 4 {local} [10.0, 10.0]" in result.stdout, result.stdout
        assert f"[{rank}] group {group} {master}" in result.stdout, result.stdout
