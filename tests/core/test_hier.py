"""The hierarchical backend: shared memory inside each host, a mesh between
hosts. Hosts are loopback addresses (127.0.0.1, 127.0.0.2, ...), which the
backend takes for separate machines: the ranks of one talk through shm, the
hosts through TCP. The failure tests of test_failures.py and
test_call_integrity.py also run on it (two hosts of two ranks)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from chorus.backends import default_backend
from chorus.env import read_rank_env
from chorus.group import _candidates
from tests.conftest import RankRunner
from tests.core.test_collectives import SWEEP

# Ranks per host: two hosts of two, uneven hosts, and one, two and three ranks.
LAYOUTS = {
    "2x2": [0, 0, 1, 1],
    "2+3": [0, 0, 1, 1, 1],
    "1+2+3": [0, 1, 1, 2, 2, 2],
    "interleaved": [0, 1, 0, 1],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_collective_and_dtype_against_numpy(ranks: RankRunner, layout: str) -> None:
    hosts_of = LAYOUTS[layout]
    code = "BACKEND = 'hier'\nSTRICT = True\n" + SWEEP
    results = ranks.run(code, len(hosts_of), backend="hier", hosts_of=hosts_of, timeout=300)
    digests = {r.stdout.split("DIGEST")[-1].strip() for r in results}
    assert len(digests) == 1, f"ranks disagree on results: {[r.stdout for r in results]}"
    for result in results:
        assert "CHECKED" in result.stdout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sum_scatter_of_every_size_against_numpy(ranks: RankRunner, layout: str) -> None:
    # Sizes from one element per rank (inline, cross group 0 alone) to
    # 300,001 (every cross group, units split inside a rank's block, uneven
    # hosts padded), with 64-byte mesh segments on one run so the cross
    # phase pipelines too. Checked against numpy.
    hosts_of = LAYOUTS[layout]
    code = """
    import numpy as np, chorus
    g = chorus.init("hier", strict=True)
    r, n = g.rank(), g.size()
    for per_rank in (0, 1, 7, 4099, 300_001):
        for dtype in (np.int64, np.float32, np.uint8):
            def mine(q):
                return ((np.arange(n * per_rank) * (q + 3)) % 97).astype(dtype)
            want = sum(mine(q).astype(np.int64) for q in range(n)).astype(dtype)
            got = chorus.sum_scatter(mine(r))
            assert got.dtype == dtype and got.shape == (per_rank,), (got.dtype, got.shape)
            assert np.array_equal(got, want[r * per_rank:(r + 1) * per_rank]), (per_rank, dtype)
    print("OK")
    """
    for env in ({}, {"CHORUS_SEGMENT_BYTES": "64"}):
        results = ranks.run(
            code, len(hosts_of), backend="hier", hosts_of=hosts_of, env=env, timeout=300
        )
        assert all("OK" in r.stdout for r in results), [r.stdout + r.stderr for r in results]


def test_tiny_segments_and_chunks_pipeline_every_phase(ranks: RankRunner) -> None:
    # 64-byte mesh segments between hosts; large inputs take several shm chunks.
    code = """
    import numpy as np, chorus
    g = chorus.init("hier", strict=True)
    r, n = g.rank(), g.size()
    for count in (0, 1, 5, 1000, 3 << 18):
        x = (np.arange(count) % 251 + r).astype(np.int64)
        want = n * (np.arange(count) % 251) + n * (n - 1) // 2
        assert np.array_equal(chorus.all_sum(x), want), count
        inplace = x.copy()  # blocks other ranks carry are the input until they arrive
        assert np.array_equal(chorus.all_sum(inplace, out=inplace), want), count
        got = chorus.all_gather(x)
        assert np.array_equal(got.reshape(n, count) - np.arange(n)[:, None],
                              np.tile(np.arange(count) % 251, (n, 1))), count
        for root in range(n):
            assert np.all(chorus.broadcast(np.full(count, r), root) == root), (count, root)
    print("OK")
    """
    results = ranks.run(
        code, 5, backend="hier", hosts_of=[0, 0, 1, 1, 1], env={"CHORUS_SEGMENT_BYTES": "64"}
    )
    assert all("OK" in r.stdout for r in results)


def test_split_across_and_inside_hosts(ranks: RankRunner) -> None:
    # Hosts {0, 1, 2} and {3, 4, 5}.
    code = """
    import numpy as np, chorus
    g = chorus.init("hier", strict=True)
    r = g.rank()
    host = g.split(r // 3)           # inside a host: shared memory
    across = g.split(r % 3)          # one rank per host: the mesh
    parity = g.split(r % 2)          # {0, 2, 4}: 2 + 1 ranks, {1, 3, 5}: 1 + 2
    print("BACKENDS", host.backend, across.backend, parity.backend)
    for _ in range(3):               # used alternately, each keeps its own count
        assert chorus.all_sum(np.array([r]), group=host)[0] == sum(range(r // 3 * 3, r // 3 * 3 + 3))
        assert chorus.all_sum(np.array([r]), group=across)[0] == sum(range(r % 3, 6, 3))
        members = list(range(r % 2, 6, 2))
        assert chorus.all_gather(np.array([r]), group=parity).tolist() == members
        assert chorus.all_sum(np.ones(100_000) * r, group=parity)[-1] == sum(members)
        assert chorus.broadcast(np.array([r]), 2, group=parity)[0] == members[2]
        quarter = parity.split(parity.rank() // 2)   # a split of a split
        assert chorus.all_sum(np.array([1]), group=quarter)[0] == quarter.size()
    print("OK")
    """
    results = ranks.run(code, 6, backend="hier", hosts_of=[0, 0, 0, 1, 1, 1])
    for result in results:
        assert "BACKENDS shm mesh hier" in result.stdout, result.stdout
        assert "OK" in result.stdout


# Elements of float32 per call (a multiple of the 4 ranks, for sum_scatter):
# 16 B cross between hosts in one exchange of cross group 0 (the others sit
# it out), 8 MiB in every cross group.
CALL_SIZES = {"small": 4, "large": 1 << 21}


@pytest.mark.parametrize("size", CALL_SIZES)
def test_ctrl_c_to_every_rank_inside_calls_then_it_works(
    ranks: RankRunner, tmp_path: Path, size: str
) -> None:
    # As the kernel does: SIGINT to every rank at once, again and again, each
    # time during calls (the ranks are in different phases when it lands).
    # all_sum and sum_scatter alternate: they keep separate working buffers
    # and phases, but one call count.
    marks = tmp_path / "marks"
    code = f"""
    import time, numpy as np, chorus
    g = chorus.init("hier", strict=True)
    r, n = g.rank(), g.size()

    def mark(text):
        with open({str(marks)!r}, "a") as f:
            f.write(text + " ")

    for trial in range({{TRIALS}}):
        try:
            marked = False
            x = np.ones({{COUNT}}, np.float32)
            while True:
                chorus.all_sum(x)
                chorus.sum_scatter(x)
                if not marked:
                    mark(f"in{{trial}}.{{r}}")
                    marked = True
        except (KeyboardInterrupt, chorus.PeerError) as err:
            print("STOP", trial, type(err).__name__, flush=True)
        try:
            time.sleep(0.3)
        except KeyboardInterrupt:  # a peer's failure stopped this rank first
            time.sleep(0.3)
        x = chorus.all_sum(np.ones(3) * r)
        assert x.tolist() == [n * (n - 1) / 2] * 3, x
        part = chorus.sum_scatter(np.arange(2 * n) * (r + 1))
        assert part.tolist() == [q * n * (n + 1) // 2 for q in (2 * r, 2 * r + 1)], part
        print("AFTER", trial, flush=True)
        mark(f"after{{trial}}.{{r}}")
    """.replace("{TRIALS}", "6").replace("{COUNT}", str(CALL_SIZES[size]))
    job = ranks.start(code, 4, backend="hier", hosts_of=[0, 0, 1, 1])
    for trial in range(6):
        _wait_for_marks(job.procs, marks, [f"in{trial}.{r}" for r in range(4)])
        time.sleep(0.03 * (trial % 3))
        job.signal_all(signal.SIGINT)
        _wait_for_marks(job.procs, marks, [f"after{trial}.{r}" for r in range(4)])
    results = job.wait(timeout=60)
    everything = "\n".join(f"--- rank {r.rank}\n{r.stdout}{r.stderr}" for r in results)
    for result in results:
        assert result.returncode == 0, everything
        assert result.stdout.count("AFTER") == 6, everything


@pytest.mark.parametrize("layout", ["2x2", "2+3"])
def test_hosts_that_disagree_across_the_small_call_size_raise_then_work(
    ranks: RankRunner, layout: str
) -> None:
    # A small call crosses between hosts in cross group 0 alone, a large one in
    # every cross group: when hosts (or the ranks of one) disagree on the size,
    # some ranks wait in a cross call their peers on the other host never
    # make. Every rank must raise, and the next calls must work, many times.
    hosts_of = LAYOUTS[layout]
    code = f"""
    import numpy as np, chorus
    g = chorus.init("hier", strict=True)
    r, n = g.rank(), g.size()
    host = {hosts_of}[r]
    first = {hosts_of}.index(host) == r
    SMALL, LARGE = 2, 1 << 18
    cases = {{
        "small here, large there": lambda: chorus.all_sum(
            np.ones(SMALL if host == 0 else LARGE, np.float32)),
        "large here, small there": lambda: chorus.all_sum(
            np.ones(LARGE if host == 0 else SMALL, np.float32)),
        "small, dtypes differ": lambda: chorus.all_sum(
            np.ones(SMALL, np.float32 if host == 0 else np.float64)),
        "inside host 0": lambda: chorus.all_sum(
            np.ones(SMALL if host == 1 or first else LARGE, np.float32)),
        # The ranks of a host other than its first publish a small call's
        # input without waiting and compare the descriptors one phase later.
        "inside host 0, its first rank large": lambda: chorus.all_sum(
            np.ones(LARGE if host == 0 and first else SMALL, np.float32)),
        "inside host 0, small, dtypes differ": lambda: chorus.all_sum(
            np.ones(SMALL, np.float64 if host == 0 and not first else np.float32)),
        "barrier here, all_sum there": lambda: (
            chorus.barrier() if host == 0 and first else chorus.all_sum(np.ones(SMALL))),
        "broadcast": lambda: chorus.broadcast(
            np.ones(SMALL if host == 0 else LARGE, np.float32), root=0),
        "all_gather": lambda: chorus.all_gather(
            np.ones(SMALL if host == 1 else LARGE, np.float32)),
    }}
    for trial in range(3):
        for name, call in cases.items():
            print("CASE", trial, name, flush=True)
            try:
                call()
            except (ValueError, TypeError) as err:
                assert "disagree" in str(err), (name, str(err))
            else:
                raise AssertionError(f"{{name}}: no error on rank {{r}}")
            for count in (SMALL, LARGE):
                got = chorus.all_sum(np.full(count, r, np.float32))
                assert np.all(got == n * (n - 1) / 2), (name, count)
            chorus.barrier()
            assert chorus.all_gather(np.array([r])).tolist() == list(range(n)), name
    print("OK")
    """
    results = ranks.run(code, len(hosts_of), backend="hier", hosts_of=hosts_of, timeout=100)
    assert all("OK" in r.stdout for r in results), [r.stdout + r.stderr for r in results]


def _wait_for_marks(procs: list[subprocess.Popen[str]], marks: Path, wanted: list[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        text = marks.read_text().split() if marks.exists() else []
        if all(w in text for w in wanted):
            return
        assert time.monotonic() < deadline, f"never saw {wanted}: {text}"
        if any(p.poll() is not None for p in procs):
            return  # a rank exited: the job's output says why
        time.sleep(0.02)


def test_any_picks_hier_when_some_host_has_several_ranks() -> None:
    def env(*hosts: str) -> list[str]:
        rank_env = read_rank_env(
            {
                "CHORUS_RANK": "0",
                "CHORUS_WORLD_SIZE": str(len(hosts)),
                "CHORUS_HOSTFILE": json.dumps(list(hosts)),
            }
        )
        return _candidates("any", rank_env)

    assert env("10.0.0.1:1", "10.0.0.1:2", "10.0.0.2:1") == ["hier", "ring"]
    assert env("[fd00::1]:1", "[fd00::1]:2", "10.0.0.2:1") == ["hier", "ring"]
    assert env("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1") == ["ring"]  # one rank per host
    assert env("127.0.0.1:1", "127.0.0.1:2") == ["shm", "ring"]  # one host
    # The launcher lets each rank choose across hosts.
    assert default_backend(None, remote=True) == "any"
    assert default_backend(None, remote=False) == "shm"
