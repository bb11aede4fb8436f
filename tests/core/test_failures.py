"""Every failure case: dead peer, missing peer, mismatch, stranger, Ctrl-C, bad env."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, RankRunner


def _wait_for(job_procs: list[subprocess.Popen[str]], marker_file: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        path = Path(marker_file)
        if path.exists() and len(path.read_text().split()) >= count:
            return
        if any(p.poll() is not None for p in job_procs):
            return
        time.sleep(0.05)
    pytest.fail("ranks never reached the marker")


@pytest.mark.parametrize("backend", [*BACKENDS, "mesh", "hier"])
def test_killed_rank_makes_every_other_rank_raise_naming_it(
    ranks: RankRunner, backend: str, tmp_path: Path
) -> None:
    marker = str(tmp_path / "ready")
    code = f"""
    import time, numpy as np, chorus
    g = chorus.init(strict=True)
    x = np.ones(1 << 20, np.float32)
    with open({marker!r}, "a") as f:
        f.write(f"{{g.rank()}} ")
    start = None
    try:
        while True:
            chorus.all_sum(x)
            chorus.all_sum(np.ones(2))  # and the small-message path
            if g.rank() == 2:
                time.sleep(0.001)
    except chorus.PeerError as err:
        assert str(err).endswith(err.cause) and not err.cause.startswith("[chorus"), err.cause
        print("RAISED", repr(str(err)), "DATA", err.reason, err.rank, err.op, "AT", time.time(),
              "CAUSE", repr(err.cause), flush=True)
    # Survivors leave at once: a mesh rank still reconnecting to one of them
    # finds it gone too, and then names every rank that is gone, rank 2 included.
    """
    job = ranks.start(code, 4, backend=backend)
    _wait_for(job.procs, marker, 4)
    time.sleep(0.5)
    killed_at = time.time()
    job.procs[2].kill()
    results = job.wait(timeout=30)
    for result in results:
        if result.rank == 2:
            continue
        assert result.returncode == 0, result.stderr
        assert "RAISED" in result.stdout, result.stdout + result.stderr
        named = "rank 2" if backend == "shm" else f"rank 2 ({job.hosts[2][0]})"
        assert named in result.stdout, result.stdout
        # The failure as data: who, why, in which call (a rank that came to
        # the failed call after the others left it says it was late for it).
        assert re.search(r"DATA (died|late) 2 all_sum", result.stdout), result.stdout
        # What happened, without the group's prefix and the failed call.
        cause = result.stdout.split("CAUSE", 1)[1]
        assert named in cause, result.stdout
        assert "all_sum" in cause, result.stdout
        raised_at = float(result.stdout.rsplit("AT", 1)[1].split("CAUSE")[0])
        assert raised_at - killed_at < 5.0, f"rank {result.rank} took {raised_at - killed_at} s"


@pytest.mark.parametrize("backend", [*BACKENDS, "hier"])
def test_rank_that_never_starts_is_named_on_every_rank(ranks: RankRunner, backend: str) -> None:
    code = """
    import time, chorus
    t0 = time.monotonic()
    try:
        chorus.init(strict=True)
    except chorus.PeerTimeoutError as err:
        print("TIMEOUT", round(time.monotonic() - t0, 1), str(err))
    """
    job = ranks.start(code, 3, backend=backend, env={"CHORUS_TIMEOUT": "3"}, ranks=[0, 1])
    results = job.wait(timeout=30)
    for result in results:
        assert "TIMEOUT" in result.stdout, result.stdout + result.stderr
        assert "rank 2" in result.stdout, result.stdout


@pytest.mark.parametrize("backend", [*BACKENDS, "hier"])
def test_shape_and_dtype_mismatch_raise_everywhere_then_group_works(
    ranks: RankRunner, backend: str
) -> None:
    code = """
    import numpy as np, chorus
    g = chorus.init(strict=True)
    r = g.rank()
    cases = [np.ones(10 + (r == 1)), np.ones(10, np.float32 if r == 2 else np.float64),
             np.ones((2, 5) if r == 0 else (5, 2)), np.ones(1 << 18, np.float32 if r else np.int32),
             np.ones(7, np.float32 if r < 2 else np.int64)]
    for x in cases:
        try:
            chorus.all_sum(x)
        except ValueError as err:
            print("MISMATCH", str(err).replace(chr(10), " "))
        else:
            raise AssertionError("no error for mismatched inputs")
        assert chorus.all_sum(np.ones(3) * r).tolist() == [6.0] * 3
    print("OK")
    """
    results = ranks.run(code, 4, backend=backend)
    # A hierarchical group compares the calls inside each host (and hosts
    # with each other): it names the ranks of the host that disagreed. When
    # hosts disagree (the last case), every backend names every rank.
    expected = ["ranks 0,1 have all_sum of (7,) float32, ranks 2,3 have all_sum of (7,) int64"] + (
        [
            "ranks 0,1 on host 127.0.0.1 disagree on the call: rank 0 has all_sum of (10,) float64, "
            + "rank 1 has all_sum of (11,) float64",
            "ranks 2,3 on host 127.0.0.2 disagree on the call: rank 2 has all_sum of (10,) float32",
            "rank 0 has all_sum of (2, 5) float64, rank 1 has all_sum of (5, 2) float64",
        ]
        if backend == "hier"
        else [
            "ranks 0,2,3 have all_sum of (10,) float64, rank 1 has all_sum of (11,) float64",
            "rank 0 has all_sum of (2, 5) float64, ranks 1,2,3 have all_sum of (5, 2)",
        ]
    )
    for result in results:
        assert result.stdout.count("MISMATCH") == 5, result.stdout
        assert "OK" in result.stdout
        # Every rank, grouped, and shapes as shapes.
        for text in expected:
            assert text in result.stdout, result.stdout


@pytest.mark.parametrize("backend", [*BACKENDS, "mesh", "hier"])
def test_a_disagreement_raises_everywhere_before_anyone_calls_again(
    ranks: RankRunner, backend: str
) -> None:
    # Each rank raises from the disagreement without the others' next call:
    # here none makes one until every rank has raised (a marker file each).
    # A rank whose record stayed queued in a link would leave its neighbour
    # waiting in the failed call, and this job stuck until the deadline.
    code = f"""
    import os, time, numpy as np, chorus
    g = chorus.init(strict=True)
    r, n = g.rank(), g.size()
    for case in range(12):
        x = np.ones(10 + (r == case % n), np.float32 if case % 3 else np.float64)
        try:
            chorus.all_sum(x)
        except ValueError:
            pass
        else:
            raise AssertionError("no error for mismatched inputs")
        open(os.path.join({str(ranks.tmp_path)!r}, f"raised.{{case}}.{{r}}"), "w").close()
        deadline = time.monotonic() + 10
        while not all(
            os.path.exists(os.path.join({str(ranks.tmp_path)!r}, f"raised.{{case}}.{{k}}"))
            for k in range(n)
        ):
            assert time.monotonic() < deadline, f"case {{case}}: a rank never raised"
            time.sleep(0.01)
    assert chorus.all_sum(np.ones(3) * r).tolist() == [6.0] * 3
    print("OK")
    """
    for result in ranks.run(code, 4, backend=backend):
        assert "OK" in result.stdout, result.stdout + result.stderr


def _wrong_token_handshake(address: str) -> int:
    """Dial like a chorus rank that holds the wrong token; returns the verdict status."""
    host, port = address.rsplit(":", 1)
    hello = struct.pack("<IHHiIQQ16s", 0x48524843, 1, 0, 0, 0, 1, 0, os.urandom(16))
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(hello)
        challenge = b""
        while len(challenge) < 56:
            challenge += sock.recv(56 - len(challenge))
        nonce = challenge[8:24]
        proof = hmac.new(b"not-the-token", b"chorus-connector" + hello + nonce, hashlib.sha256)
        sock.sendall(proof.digest())
        verdict = sock.recv(8)
    return int(struct.unpack("<II", verdict)[1])


@pytest.mark.parametrize("backend", ["ring", "mesh"])
def test_strangers_are_dropped_and_the_job_carries_on(
    ranks: RankRunner, tmp_path: Path, backend: str
) -> None:
    """Garbage and a wrong token at a rank's listener: refused, logged, the job unaffected."""
    marker = str(tmp_path / "ready")
    code = f"""
    import time, numpy as np, chorus
    g = chorus.init(strict=True)
    chorus.barrier()
    with open({marker!r}, "a") as f:
        f.write(f"{{g.rank()}} ")
    for i in range(40):
        assert chorus.all_sum(np.ones(1000) * g.rank())[0] == 3.0
        time.sleep(0.05)
    print("OK")
    """
    job = ranks.start(code, 3, backend=backend)
    _wait_for(job.procs, marker, 3)
    assert _wrong_token_handshake(job.hosts[2][0]) == 1  # Verdict::BadProof
    host, port = job.hosts[1][0].rsplit(":", 1)
    for payload in (b"GET / HTTP/1.0\r\n\r\n" + b"\x00" * 64, b"\x00" * 64, b""):
        with socket.create_connection((host, int(port)), timeout=5) as stranger:
            stranger.sendall(payload)
            time.sleep(0.2)
    results = job.wait(timeout=60)
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout
    assert "rejected connection" in results[2].stderr, results[2].stderr
    assert "token proof failed" in results[2].stderr, results[2].stderr
    assert "not a chorus handshake" in results[1].stderr, results[1].stderr


@pytest.mark.parametrize("backend", [*BACKENDS, "mesh", "hier"])
def test_ctrl_c_inside_a_collective_then_a_working_collective(
    ranks: RankRunner, backend: str, tmp_path: Path
) -> None:
    marker = str(tmp_path / "ready")
    left = str(tmp_path / "left")
    code = f"""
    import time, numpy as np, chorus
    g = chorus.init(strict=True)
    r = g.rank()
    chorus.barrier()
    with open({marker!r}, "a") as f:
        f.write(f"{{r}} ")
    t0 = time.monotonic()
    try:
        if r == 0:
            time.sleep(60)                    # never joins: the others block
        chorus.all_sum(np.ones(1 << 22, np.float32))
        print("FINISHED")
    except KeyboardInterrupt:
        print("INTERRUPTED", round(time.monotonic() - t0, 2))
    except chorus.PeerError as err:
        print("PEER", err)
    # The contract: once every rank has left the interrupted call, the next
    # collective works. (The kernel sends the next cell only when every rank
    # is idle; a loaded machine may take more than a second to deliver the
    # signal to every rank.) Rank 0 was never in the call: without this, its
    # next all_sum could meet the others' interrupted one.
    with open({left!r}, "a") as f:
        f.write(f"{{r}} ")
    deadline = time.monotonic() + 30
    while len(open({left!r}).read().split()) < g.size():
        assert time.monotonic() < deadline, "the other ranks never left the call"
        time.sleep(0.01)
    x = chorus.all_sum(np.ones(1 << 20, np.float32) * r)
    assert np.all(x == sum(range(g.size()))), x[:4]
    y = chorus.all_sum(np.arange(3) + r)
    if r == 1:                                # point to point works again too
        chorus.send(y, 2)
    elif r == 2:
        assert chorus.recv(3, y.dtype, 1).tolist() == y.tolist()
    print("RECOVERED", y.tolist())
    """
    job = ranks.start(code, 4, backend=backend)
    _wait_for(job.procs, marker, 4)
    time.sleep(1.0)
    sent = time.monotonic()
    job.signal_all(signal.SIGINT)
    results = job.wait(timeout=60)
    assert time.monotonic() - sent < 30
    everything = "\n".join(f"--- rank {r.rank}\n{r.stdout}{r.stderr}" for r in results)
    for result in results:
        assert result.returncode == 0, everything
        assert "INTERRUPTED" in result.stdout, result.stdout + result.stderr
        assert "RECOVERED [6, 10, 14]" in result.stdout, result.stdout


def test_malformed_environment_is_a_clear_error(tmp_path: Path) -> None:
    cases = {
        "not json": ({"CHORUS_HOSTFILE": "[1, 2"}, "not valid JSON"),
        "bad port": (
            {"CHORUS_HOSTFILE": json.dumps([["127.0.0.1:x"], ["127.0.0.1:2"]])},
            "bad port",
        ),
        "count": ({"CHORUS_HOSTFILE": json.dumps([["127.0.0.1:1"]])}, "has 1 entries"),
        "rank": ({"CHORUS_RANK": "5"}, "not a valid rank"),
        "timeout": ({"CHORUS_TIMEOUT": "soon"}, "CHORUS_TIMEOUT"),
        "peer timeout": ({"CHORUS_PEER_TIMEOUT": "soon"}, "CHORUS_PEER_TIMEOUT='soon'"),
        "peer timeout 0": ({"CHORUS_PEER_TIMEOUT": "0"}, "CHORUS_PEER_TIMEOUT='0' must be"),
        "peer timeout -1": ({"CHORUS_PEER_TIMEOUT": "-1"}, "CHORUS_PEER_TIMEOUT='-1' must be"),
        "peer timeout nan": ({"CHORUS_PEER_TIMEOUT": "nan"}, "CHORUS_PEER_TIMEOUT='nan' must be"),
        "peer timeout inf": ({"CHORUS_PEER_TIMEOUT": "inf"}, "CHORUS_PEER_TIMEOUT='inf' must be"),
        "shm spin": ({"CHORUS_SHM_SPIN_US": "abc"}, "CHORUS_SHM_SPIN_US='abc' is not an integer"),
        "shm yield -1": ({"CHORUS_SHM_YIELD_US": "-1"}, "CHORUS_SHM_YIELD_US='-1' must be"),
        "tcp spin": ({"CHORUS_TCP_SPIN_US": "fast"}, "CHORUS_TCP_SPIN_US='fast' is not"),
        "old spin name": ({"CHORUS_RING_SPIN_US": "50"}, "CHORUS_RING_SPIN_US is now CHORUS_TCP"),
        "shm cma": ({"CHORUS_SHM_CMA": "off"}, "CHORUS_SHM_CMA='off' must be 0 or 1"),
        "shm cma bytes": ({"CHORUS_SHM_CMA_BYTES": "-5"}, "CHORUS_SHM_CMA_BYTES='-5' must be"),
        "stream bytes": ({"CHORUS_STREAM_BYTES": "4M"}, "CHORUS_STREAM_BYTES='4M' is not"),
    }
    for name, (extra, expected) in cases.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
        env.update({"CHORUS_RANK": "0", "CHORUS_WORLD_SIZE": "2", **extra})
        done = subprocess.run(
            [sys.executable, "-c", "import chorus; chorus.init()"],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0, name
        assert expected in done.stderr, (name, done.stderr)


# Rank 2 exits after the first call; the others then wait for it in the
# second: their error says that it never reached that call (shm reads what
# each rank published when it entered a call).
DIED_BEFORE = """
import os, numpy as np, chorus
g = chorus.init(strict=True)
chorus.barrier()
if g.rank() == 2:
    os._exit(3)
try:
    chorus.all_sum(np.ones(2))
except chorus.PeerError as err:
    print("RAISED", err, flush=True)
"""


@pytest.mark.parametrize("backend", [*BACKENDS, "mesh", "hier"])
def test_a_dead_rank_s_last_call_explains_the_failure(ranks: RankRunner, backend: str) -> None:
    results = ranks.start(DIED_BEFORE, 3, backend=backend).wait(timeout=60)
    everything = "\n".join(f"--- rank {r.rank}\n{r.stdout}{r.stderr}" for r in results)
    # shm reads the call it was in (ranks publish it); ring and mesh from the
    # last Sync it sent (its number and op).
    last = "barrier #1"
    for result in (results[0], results[1]):
        assert result.returncode == 0, everything
        assert f"(the last call it entered was {last}: it never reached this one)" in (
            result.stdout
        ), everything
