"""Real programs under the launcher: the allsum example, the entry point, MLX."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.launch.helpers import REPO, launch, script

pytestmark = pytest.mark.timeout(60)

EXAMPLE = str(REPO / "examples" / "allsum.py")


def test_allsum_example_alone() -> None:
    done = subprocess.run(
        [sys.executable, EXAMPLE], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"rank 0/1: {np.arange(4)}\n"


@pytest.mark.parametrize("backend", ["shm", "ring", "any"])
def test_allsum_example_under_launcher(backend: str, marker: str) -> None:
    # ring uses the listening sockets the launcher passed (CHORUS_LISTEN_FDS).
    done = launch("-n", "4", "--backend", backend, EXAMPLE, marker)
    assert done.returncode == 0, done.stderr
    total = np.arange(4) * (1 + 2 + 3 + 4)
    assert sorted(done.stdout.splitlines()) == [
        f"[{rank}] rank {rank}/4: {total}" for rank in range(4)
    ]


def test_chorus_entry_point(marker: str) -> None:
    # The console script pip installs next to this interpreter.
    entry_point = Path(sys.executable).parent / "chorus"
    assert entry_point.is_file(), f"{entry_point} missing: is chorus pip-installed?"
    done = subprocess.run(
        [str(entry_point), "launch", "-n", "2", "-c", "import os; print(os.getpid())", marker],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(line[:4] for line in done.stdout.splitlines()) == ["[0] ", "[1] "]


def test_launcher_does_not_import_numpy(marker: str) -> None:
    # Launch speed: the launcher itself must not import numpy or the C++ module.
    code = (
        "import sys\n"
        "from chorus.cli import main\n"
        "assert main(['launch', '-n', '2', '-c', 'pass', sys.argv[1]]) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('numpy', 'chorus._core'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, marker],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_real_mlx_ring_all_sum(marker: str) -> None:
    # mlx[cpu] reads MLX_RANK and MLX_HOSTFILE (a memfd, /proc/self/fd/N).
    done = launch("-n", "2", script("mlx_allsum.py"), marker, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[0] mlx rank 0/2: [0, 3, 6, 9]",
        "[1] mlx rank 1/2: [0, 3, 6, 9]",
    ]


@pytest.mark.parametrize("backend", ["shm", "ring"])
def test_rank_dying_mid_collective(backend: str, marker: str) -> None:
    # The survivors raise PeerError by themselves (no SIGTERM needed within
    # the long grace); the launcher reports the rank that died.
    started = time.monotonic()
    done = launch(
        "-n", "3", "--backend", backend, "--timeout", "5", "--grace", "20",
        script("die_in_allsum.py"), marker,
    )  # fmt: skip
    assert time.monotonic() - started < 15
    assert done.returncode == 128 + signal.SIGKILL
    assert "chorus: rank 1 was killed by SIGKILL" in done.stderr
    for rank in (0, 2):
        assert re.search(
            rf"^\[{rank}\] chorus\._core\.PeerError: .*rank 1", done.stderr, re.MULTILINE
        )
    assert "SIGTERM" not in done.stderr
    assert "unreachable" not in done.stdout
