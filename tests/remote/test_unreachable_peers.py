"""Bounded waits: a peer whose host stops answering is named within CHORUS_PEER_TIMEOUT;
a peer process that is merely stopped (a debugger, SIGSTOP) is never declared dead."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import RankRunner
from tests.hosts.fixtures import EmulatedHostsFactory

PEER_TIMEOUT = 4.0

# Large all_sums in a loop (data always in flight), every result checked.
LOOP = """
import time, numpy as np, chorus
g = chorus.init(strict=True)
r, n = g.rank(), g.size()
with open({marker!r}, "a") as f:
    f.write(f"{{r}} ")
x = np.full({count}, 1.0 + r, np.float32)
want = np.full({count}, sum(1.0 + q for q in range(n)), np.float32)
t_end = time.monotonic() + {seconds}
calls = 0
try:
    # Every rank stops at the same call: the loop goes on while all say so.
    while chorus.all_min(np.array([time.monotonic() < t_end], np.int32))[0]:
        got = chorus.all_sum(x)
        assert np.array_equal(got, want), got[:4]
        calls += 1
    chorus.barrier()
    print("DONE", calls, flush=True)
except chorus.PeerError as err:
    print("RAISED", time.time(), "REASON", err.reason, "RANK", err.rank, err, flush=True)
"""


def _wait_for_marker(marker: Path, count: int, procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 60
    while not marker.exists() or len(marker.read_text().split()) < count:
        assert time.monotonic() < deadline, "ranks never started"
        assert all(p.poll() is None for p in procs), "a rank exited early"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["ring", "mesh"])
def test_stopped_rank_is_not_declared_dead(ranks: RankRunner, tmp_path: Path, backend: str) -> None:
    marker = tmp_path / "ready"
    # 64 MiB per call: the peers' sends to the stopped rank fill its socket
    # buffers, and the window probes they send back off to gaps of more than
    # a peer timeout, which must not count as silence.
    code = LOOP.format(marker=str(marker), seconds=5 * PEER_TIMEOUT + 4, count=1 << 24)
    job = ranks.start(code, 4, backend=backend, env={"CHORUS_PEER_TIMEOUT": str(PEER_TIMEOUT)})
    _wait_for_marker(marker, 4, job.procs)
    time.sleep(0.5)
    # Stopped for five peer timeouts, mid-loop: its peers' sends to it stall
    # on a full window, but its kernel keeps answering.
    os.kill(job.procs[2].pid, signal.SIGSTOP)
    time.sleep(5 * PEER_TIMEOUT)
    os.kill(job.procs[2].pid, signal.SIGCONT)
    results = job.wait(timeout=90)
    everything = "\n".join(f"--- rank {r.rank}\n{r.stdout}{r.stderr}" for r in results)
    for result in results:
        assert result.returncode == 0, everything
        assert "DONE" in result.stdout, everything


@pytest.mark.parametrize("backend", ["ring", "mesh"])
@pytest.mark.parametrize("stopped", [False, True], ids=["running", "stopped-first"])
def test_host_cut_off_mid_collective_is_named_within_the_peer_timeout(
    emulated_hosts: EmulatedHostsFactory, tmp_path: Path, backend: str, stopped: bool
) -> None:
    hosts = emulated_hosts(4, "switch")
    marker = tmp_path / "ready"
    script = tmp_path / "loop.py"
    # stopped-first: rank 2 stops reading (SIGSTOP) so its peers' sends stall on
    # a zero window, answered only by window probes; then its host goes away.
    count = 1 << 24 if stopped else 1 << 20
    script.write_text(textwrap.dedent(LOOP.format(marker=str(marker), seconds=120, count=count)))
    env = {
        **os.environ,
        "CHORUS_WORLD_SIZE": "4",
        "CHORUS_HOSTFILE": json.dumps([[f"{h.address}:29650"] for h in hosts.hosts]),
        "CHORUS_BACKEND": backend,
        "CHORUS_TOKEN": secrets.token_hex(16),
        "CHORUS_JOB_ID": f"unreachable-{secrets.token_hex(4)}",
        "CHORUS_TIMEOUT": "30",
        "CHORUS_PEER_TIMEOUT": str(PEER_TIMEOUT),
        "PYTHONUNBUFFERED": "1",
    }
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", host.netns, sys.executable, str(script)],
            env={**env, "CHORUS_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for rank, host in enumerate(hosts.hosts)
    ]
    try:
        _wait_for_marker(marker, 4, procs)
        time.sleep(1.0)
        if stopped:
            os.kill(procs[2].pid, signal.SIGSTOP)
            time.sleep(2.0)
        cut_at = time.time()
        hosts.hosts[2].exec(["ip", "link", "set", hosts.hosts[2].mgmt_if, "down"])
        outputs = {}
        for rank in (0, 1, 3):
            out, err = procs[rank].communicate(timeout=60)
            outputs[rank] = (procs[rank].returncode, out, err)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=30)  # reaps it and closes its pipes
    everything = "\n".join(f"--- rank {r}\n{o[1]}{o[2]}" for r, o in outputs.items())
    for returncode, out, _err in outputs.values():
        assert returncode == 0, everything
        assert "RAISED" in out, everything
        raised_at = float(out.split("RAISED", 1)[1].split()[0])
        print(f"raised {raised_at - cut_at:.1f} s after the cut: {out.strip()[-160:]}")
        # The bound: the peer timeout, plus a keepalive round and a forward;
        # behind a zero window, two unanswered window probes (their backoff).
        bound = 2 * PEER_TIMEOUT + 4 + (2 * PEER_TIMEOUT if stopped else 0)
        assert raised_at - cut_at < bound, everything
        assert "rank 2" in out, everything
    named = [o[1] for o in outputs.values() if "unreachable" in o[1]]
    assert named, "no survivor said that rank 2 is unreachable:\n" + everything
    # The failure as data: every survivor blames rank 2; the ones that saw it
    # stop acknowledging say why.
    for _code, out, _err in outputs.values():
        assert "RANK 2 " in out, everything
    assert any("REASON unreachable" in o[1] for o in outputs.values()), everything


def test_launcher_names_a_lost_host_as_lost(emulated_hosts: EmulatedHostsFactory) -> None:
    hosts = emulated_hosts(4, "switch")
    script = (
        "import time, chorus\nchorus.init(strict=True)\nprint('up', flush=True)\ntime.sleep(120)\n"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "chorus", "launch", "--hosts", "h0,h1,h2,h3", "-c", script],
        env=hosts.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdout is not None
        for _ in range(4):
            assert "up" in launcher.stdout.readline()
        hosts.hosts[2].exec(["ip", "link", "set", hosts.hosts[2].mgmt_if, "down"])
        _out, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
        launcher.communicate()
    assert launcher.returncode != 0
    assert "rank 2: lost contact with h2" in err, err
    assert "rank 2 on h2 was killed by SIGKILL" not in err, err
