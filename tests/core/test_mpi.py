"""The mpi backend under Open MPI's real mpirun, and the mpirun command builder.

Each job is one ``mpirun`` built by :func:`chorus.launch.mpirun.mpirun_command`
(so the flags it picks are what runs here), in its own session so that a
timeout kills every rank; the helper asserts that no rank outlives mpirun.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from chorus.env import read_rank_env
from chorus.group import _candidates
from chorus.launch import mpirun as mpirun_module
from chorus.launch.mpirun import MpirunError, mpirun_command
from tests.core.test_collectives import SWEEP

# Open MPI's --tag-output label, put before every piece of output mpirun
# forwards (4.x: "[jobid,rank]<stdout>:"). mpirun merges the ranks' output
# piece by piece, not line by line, so lines are rebuilt per rank from them.
_TAG = re.compile(r"\[\d+,(\d+)\]<(?:stdout|stderr)>:")


def _by_rank(text: str) -> dict[int, str]:
    parts = _TAG.split(text)
    streams: dict[int, str] = {-1: parts[0]}  # -1: mpirun's own, untagged text
    for rank, piece in zip(parts[1::2], parts[2::2], strict=True):
        streams[int(rank)] = streams.get(int(rank), "") + piece
    return streams


@dataclass
class MpiRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def lines(self, marker: str) -> list[str]:
        """Lines starting with ``marker``, from every rank's rebuilt stdout."""
        return [
            line
            for rank, text in sorted(_by_rank(self.stdout).items())
            if rank >= 0
            for line in text.splitlines()
            if line.startswith(marker)
        ]


def _ranks_running(script: Path) -> list[psutil.Process]:
    # Open MPI puts every rank in a process group of its own, so the ranks
    # of one run are found by the script only they run.
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(script) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


@dataclass
class MpiJob:
    proc: subprocess.Popen[str]
    script: Path
    start: float

    def finish(self, timeout: float) -> MpiRun:
        """Wait for mpirun; kill everything at ``timeout``; fail if a rank outlives it."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"mpirun did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
        finally:
            _, alive = psutil.wait_procs(_ranks_running(self.script), timeout=5)
            if alive:
                self.kill()
                pytest.fail(f"ranks {[p.pid for p in alive]} outlived mpirun")
        return MpiRun(self.proc.returncode, out, err, time.monotonic() - self.start)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for rank in _ranks_running(self.script):
            with contextlib.suppress(psutil.NoSuchProcess):
                rank.kill()


def start_mpi(tmp_path: Path, code: str, nprocs: int, env: dict[str, str] | None = None) -> MpiJob:
    """Start ``code`` as ``nprocs`` ranks under mpirun, in a session of its own."""
    script = tmp_path / f"rank_{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent(code))
    rank_env = dict(env or {})
    command = mpirun_command(
        nprocs, [sys.executable, str(script)], hosts=None, env=rank_env, tag_output=True
    )
    # A clean slate: no rank/job variables of an enclosing job leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHORUS_", "OMPI_", "PMI"))}
    proc = subprocess.Popen(
        command,
        env={**base, **rank_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    return MpiJob(proc, script, time.monotonic())


def run_mpi(
    tmp_path: Path,
    code: str,
    nprocs: int,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> MpiRun:
    """Run ``code`` as ``nprocs`` ranks under mpirun and wait for the job."""
    return start_mpi(tmp_path, code, nprocs, env).finish(timeout)


def assert_clean(run: MpiRun, nprocs: int, marker: str = "OK") -> None:
    """Exit status 0, every rank printed ``marker``, and no warning on stderr."""
    detail = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 0, detail
    assert len(run.lines(marker)) == nprocs, detail
    assert "warning" not in run.stderr.lower(), detail


# ---------------------------------------------------------------- collectives


@pytest.mark.parametrize(
    ("nprocs", "segment"),
    [(2, None), (4, 200)],
    ids=["n2", "n4-chunked"],
)
def test_every_op_and_dtype(tmp_path: Path, nprocs: int, segment: int | None) -> None:
    # The sweep every backend runs (tests/core/test_collectives.py). A 200-byte
    # chunk sends every larger array through the chunked MPI calls and the
    # staged all_gather and sum_scatter, most of them ending in a partial chunk.
    env = {"CHORUS_BACKEND": "mpi"}
    if segment:
        env["CHORUS_SEGMENT_BYTES"] = str(segment)
    run = run_mpi(tmp_path, "BACKEND = 'mpi'\nSTRICT = True\n" + SWEEP, nprocs, env)
    assert_clean(run, nprocs, marker="CHECKED")
    digests = {line.split("DIGEST")[-1].strip() for line in run.lines("CHECKED")}
    assert len(digests) == 1, f"ranks disagree on results:\n{run.stdout}"


SPLIT_P2P_MISMATCH = r"""
import numpy as np, chorus
from chorus import _core

world = chorus.init("mpi", strict=True)
rank, size = world.rank(), world.size()
assert world.backend == "mpi"

# NaN propagates through max/min as np.maximum does (MPI_MAX alone would not).
for dtype in (np.float16, np.float32, np.float64):
    x = np.array([1.0, np.nan if rank == 1 else 2.0], dtype)
    assert np.isnan(chorus.all_max(x)[1]) and np.isnan(chorus.all_min(x)[1]), dtype

# Mismatched calls raise the same ValueError on every rank; the group goes on.
cases = [np.ones(10 + (rank == 1)), np.ones(10, np.float32 if rank == 2 else np.float64),
         np.ones((2, 5) if rank == 0 else (5, 2))]
for x in cases:
    try:
        chorus.all_sum(x)
    except ValueError as err:
        print("MISMATCH", str(err).split(": ", 1)[1])
    else:
        raise AssertionError("no error for mismatched inputs")
    assert chorus.all_sum(np.ones(3) * rank).tolist() == [6.0] * 3
try:
    chorus.all_max(np.ones(2, np.complex64))
except TypeError:
    pass
else:
    raise AssertionError("complex max did not raise TypeError")

# split: pairs, reversed parity, singletons; sub-groups and world interleaved.
pairs = world.split(rank // 2)
parity = world.split(rank % 2, key=size - rank)
assert pairs.size() == 2 and pairs.rank() == rank % 2
assert parity.size() == 2 and parity.rank() == 1 - rank // 2
for step in range(3):
    assert chorus.all_sum(np.array([rank, step]), group=pairs).tolist() == [
        4 * (rank // 2) + 1, 2 * step]
    assert chorus.all_gather(np.array([rank]), group=parity).tolist() == sorted(
        [r for r in range(size) if r % 2 == rank % 2], reverse=True)
    assert chorus.all_sum(np.ones(2) * rank).tolist() == [6.0, 6.0]
quad = pairs.split(0)  # a split of a split
assert quad.size() == 2 and chorus.all_sum(np.ones(1), group=quad).tolist() == [2.0]
single = world.split(rank)
assert single.size() == 1 and chorus.all_sum(np.ones(2), group=single).tolist() == [1, 1]

# send/recv between any two ranks, not only neighbours.
if rank == 0:
    chorus.send(np.arange(5, dtype=np.int16), 3)
elif rank == 3:
    assert chorus.recv((5,), np.int16, 0).tolist() == list(range(5))
# Ping-pong, then both sides send a large message before receiving: send()
# must not wait for the receiver.
peer = rank ^ 1
big = np.arange(300_000, dtype=np.float64)  # 2.4 MB: past the inline size
for i in range(5):
    if rank % 2 == 0:
        chorus.send(np.array([i], np.int32), peer)
        assert chorus.recv((1,), np.int32, peer)[0] == i + 1
    else:
        chorus.send(chorus.recv_like(np.zeros(1, np.int32), peer) + 1, peer)
chorus.send(big * (rank + 1), peer)
assert np.array_equal(chorus.recv(big.shape, big.dtype, peer), big * (peer + 1))
# Tags: received in the opposite order to sending. (chorus.send's tag keyword
# may not exist yet; the compiled call has it.)
if rank % 2 == 0:
    _core.send(world.handle, np.array([1.0]), peer, tag=7)
    _core.send(world.handle, np.array([2.0]), peer, tag=9)
else:
    second, first = np.zeros(1), np.zeros(1)
    _core.recv(world.handle, second, peer, tag=9)
    _core.recv(world.handle, first, peer, tag=7)
    assert (first[0], second[0]) == (1.0, 2.0), (first, second)
# A mismatched recv (small, then large) is a clear error; the link still works.
for n in (4, 100_000):
    if rank % 2 == 0:
        chorus.send(np.zeros(n, np.float32), peer)
    else:
        try:
            chorus.recv((n + 1,), np.float32, peer)
        except ValueError as err:
            print("P2P-MISMATCH", err)
        else:
            raise AssertionError("no error for a mismatched recv")
chorus.send(np.array([rank]), peer)
assert chorus.recv((1,), np.int64, peer)[0] == peer
chorus.barrier()
print("OK")
"""


def test_split_p2p_and_mismatch_then_exit_code_0(tmp_path: Path) -> None:
    run = run_mpi(tmp_path, SPLIT_P2P_MISMATCH, 4, {"CHORUS_SEGMENT_BYTES": "65536"})
    # The point of this test: after splits, the job ends with status 0.
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert_clean(run, 4)
    mismatches = run.lines("MISMATCH")
    assert len(mismatches) == 3 * 4, run.stdout
    # Every rank raised the same text, naming every rank's call.
    assert len(set(mismatches)) == 3, mismatches
    assert all("ranks disagree" in line and "rank 1 has" in line for line in mismatches[:1])
    p2p = run.lines("P2P-MISMATCH")
    assert len(p2p) == 2 * 2, run.stdout
    assert all("it sent" in line and "float32" in line for line in p2p), p2p


# ---------------------------------------------------------------- set-up and exit


def test_library_override_is_named_and_any_prefers_shm(tmp_path: Path) -> None:
    code = """
    import chorus
    from chorus import _core
    assert not chorus.is_available("mpi")
    try:
        chorus.init("mpi", strict=True)
    except chorus.BackendUnavailableError as err:
        print("UNAVAILABLE", err)
    else:
        raise AssertionError("a missing libmpi was accepted")
    # On one host, "any" under mpirun picks shm (rank/size from mpirun's env).
    g = chorus.init()
    assert g.backend == "shm" and g.size() == 2, g
    print("OK")
    """
    run = run_mpi(tmp_path, code, 2, {"CHORUS_MPI_LIBNAME": "/nonexistent/libmpi.so"})
    assert_clean(run, 2)
    for line in run.lines("UNAVAILABLE"):
        assert "CHORUS_MPI_LIBNAME=/nonexistent/libmpi.so" in line, line
        assert "No such file" in line, line


def test_mpi4py_initialises_first_and_both_agree(tmp_path: Path) -> None:
    code = """
    from mpi4py import MPI
    import numpy as np, chorus
    comm = MPI.COMM_WORLD
    g = chorus.init("mpi", strict=True)
    assert (g.rank(), g.size()) == (comm.Get_rank(), comm.Get_size()), (g, comm.Get_rank())
    # Interleaved traffic: chorus runs on its own duplicate of MPI_COMM_WORLD.
    for i in range(3):
        assert comm.allreduce(g.rank() + i) == 1 + 2 * i
        assert chorus.all_sum(np.array([g.rank() + i])).tolist() == [1 + 2 * i]
    sub = g.split(0)
    assert chorus.all_gather(np.array([g.rank()]), group=sub).tolist() == [0, 1]
    print("OK")
    """
    run = run_mpi(tmp_path, code, 2)
    assert_clean(run, 2)


def test_uncaught_exception_ends_the_whole_job(tmp_path: Path) -> None:
    # Rank 1 dies of an exception while rank 0 waits for it in all_sum:
    # MPI_Finalize would wait forever, so chorus calls MPI_Abort instead.
    code = """
    import numpy as np, chorus
    g = chorus.init("mpi", strict=True)
    chorus.barrier()
    if g.rank() == 1:
        raise RuntimeError("rank 1 fails on purpose")
    chorus.all_sum(np.ones(4))
    """
    run = run_mpi(tmp_path, code, 2, timeout=30)
    assert run.returncode != 0, run.stderr
    assert "rank 1 fails on purpose" in run.stderr
    assert run.seconds < 20, f"took {run.seconds:.1f} s"


def test_ctrl_c_to_mpirun_ends_a_blocked_job(tmp_path: Path) -> None:
    # A rank blocked inside MPI cannot be interrupted; Ctrl-C goes to mpirun,
    # which ends every rank.
    code = """
    import time, numpy as np, chorus
    g = chorus.init("mpi", strict=True)
    chorus.barrier()
    print("READY", flush=True)
    if g.rank() == 1:
        time.sleep(600)
    chorus.all_sum(np.ones(4))
    """
    job = start_mpi(tmp_path, code, 2)
    deadline = time.monotonic() + 30
    assert job.proc.stdout is not None
    while "READY" not in job.proc.stdout.readline():
        assert time.monotonic() < deadline, "ranks never got ready"
        assert job.proc.poll() is None, "mpirun ended before the ranks got ready"
    job.proc.send_signal(signal.SIGINT)
    run = job.finish(timeout=20)
    assert run.returncode != 0


# ---------------------------------------------------------------- "any" without mpirun


def test_any_order_under_an_mpi_launcher() -> None:
    one_host = read_rank_env(
        {
            "OMPI_COMM_WORLD_RANK": "1",
            "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        }
    )
    assert one_host.mpi_launched
    assert one_host.local_size == 4
    assert _candidates("any", one_host) == ["shm", "mpi"]
    two_hosts = read_rank_env(
        {
            "OMPI_COMM_WORLD_RANK": "1",
            "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        }
    )
    assert _candidates("any", two_hosts) == ["mpi"]
    with_hostfile = read_rank_env(
        {
            "OMPI_COMM_WORLD_RANK": "0",
            "OMPI_COMM_WORLD_SIZE": "2",
            "CHORUS_HOSTFILE": '["10.0.0.1:5000", "10.0.0.2:5000"]',
        }
    )
    assert _candidates("any", with_hostfile) == ["ring"]
    chorus_launch = read_rank_env({"CHORUS_RANK": "0", "CHORUS_WORLD_SIZE": "2"})
    assert not chorus_launch.mpi_launched
    assert "mpi" not in _candidates("any", chorus_launch)


# ---------------------------------------------------------------- mpirun_command


def _fake_mpirun(tmp_path: Path, version_text: str) -> str:
    path = tmp_path / "bin" / "mpirun"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{version_text}\nEOF\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("root", [True, False])
def test_mpirun_command_for_open_mpi_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: bool
) -> None:
    mpirun = _fake_mpirun(tmp_path, "mpirun (Open MPI) 4.1.4\n\nReport bugs to ...")
    monkeypatch.setattr(mpirun_module.os, "geteuid", lambda: 0 if root else 1000)
    command = mpirun_command(
        4,
        ["/usr/bin/python3", "train.py", "--lr", "0.1"],
        hosts=["a", "a", "b", "b"],
        env={"CHORUS_BACKEND": "mpi", "CHORUS_TOKEN": "secret"},
        mpirun=mpirun,
    )
    assert command[0] == mpirun
    assert ("--allow-run-as-root" in command) is root
    text = " ".join(command)
    assert "-n 4 " in text
    assert "--oversubscribe" in text
    assert "OVERSUBSCRIBE" not in text
    assert "--mca mpi_yield_when_idle 1" in text
    assert "--mca btl ^openib" in text
    assert "--bind-to none" in text
    assert "--tag-output" not in text
    assert "--host a:2,b:2" in text
    assert "-x CHORUS_BACKEND -x CHORUS_TOKEN" in text
    assert "secret" not in text
    assert command[-4:] == ["/usr/bin/python3", "train.py", "--lr", "0.1"]


def test_mpirun_command_for_open_mpi_5(tmp_path: Path) -> None:
    mpirun = _fake_mpirun(tmp_path, "mpirun (Open MPI) 5.0.3\n")
    command = mpirun_command(2, ["prog"], hosts=None, env={}, mpirun=mpirun, tag_output=True)
    text = " ".join(command)
    assert "--map-by :OVERSUBSCRIBE" in text
    assert "--oversubscribe" not in text
    assert "openib" not in text
    assert "--output tag" in text
    assert "--host" not in text
    assert "--mca mpi_yield_when_idle 1" in text


def test_mpirun_command_errors(tmp_path: Path) -> None:
    with pytest.raises(MpirunError, match="openmpi-bin"):
        mpirun_command(2, ["prog"], hosts=None, env={}, mpirun=str(tmp_path / "no-mpirun"))
    hydra = _fake_mpirun(tmp_path, "HYDRA build details:\n    Version: 4.0.2")
    with pytest.raises(MpirunError, match="not Open MPI"):
        mpirun_command(2, ["prog"], hosts=None, env={}, mpirun=hydra)
    with pytest.raises(ValueError, match="nprocs"):
        mpirun_command(0, ["prog"], hosts=None, env={})
    with pytest.raises(ValueError, match="variable"):
        mpirun_command(2, ["prog"], hosts=None, env={"A=B": "x"})


def test_mpirun_command_on_this_machine() -> None:
    """The real mpirun here is Open MPI 4.x (Debian 12); CI has it."""
    command = mpirun_command(2, ["prog"], hosts=None, env={"CHORUS_BACKEND": "mpi"})
    assert mpirun_module.openmpi_version()[0] >= 4
    assert "-x" in command
    assert command[-1] == "prog"
