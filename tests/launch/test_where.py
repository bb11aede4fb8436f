"""Where is every rank: the launcher's report on Ctrl-\\ and on a stall, with a verdict."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.launch.helpers import launch, start_launcher

pytestmark = pytest.mark.timeout(120)

# Every rank makes a first all_sum together; then the hang of the scenario.
HANGS = {
    # (a) rank 0 makes a collective the others skip (they go on sleeping).
    "skipped": """
if r == 0:
    chorus.all_sum(np.ones(3))                 # LINE stuck
else:
    time.sleep(60)                             # LINE others
""",
    # (b) rank 1 spins in pure Python while the others wait in all_sum.
    "spinning": """
if r == 1:
    x = 0
    while True: x += 1                         # LINE others
else:
    chorus.all_sum(np.ones(3))                 # LINE stuck
""",
    # (c) rank 2 waits for input while the others wait in all_sum.
    "input": """
if r == 2:
    input()                                    # LINE others
else:
    chorus.all_sum(np.ones(3))                 # LINE stuck
""",
}
ODD = {"skipped": [1, 2, 3], "spinning": [1], "input": [2]}
ACTIVITY = {
    "skipped": "running <module>",
    "spinning": "running <module>",
    "input": "waiting for input",
}

HEAD = """import time, numpy as np, chorus
g = chorus.init(strict=True)
r = g.rank()
chorus.all_sum(np.ones(2))
"""


def _program(tmp_path: Path, body: str) -> tuple[str, dict[str, int]]:
    code = HEAD + body.lstrip("\n")
    path = tmp_path / "hang.py"
    path.write_text(code)
    lines = {
        line.split("# LINE ")[1].strip(): n
        for n, line in enumerate(code.splitlines(), start=1)
        if "# LINE " in line
    }
    return str(path), lines


@pytest.mark.parametrize("backend", ["shm", "ring", "mesh"])
@pytest.mark.parametrize("scenario", ["skipped", "spinning", "input"])
def test_a_stall_is_reported_with_a_verdict_and_stops_the_job(
    tmp_path: Path, backend: str, scenario: str
) -> None:
    path, lines = _program(tmp_path, HANGS[scenario])
    started = time.monotonic()
    # stdin stays open (and empty) so that input() waits.
    read_end, write_end = os.pipe()
    try:
        done = launch(
            "-n", "4", "--backend", backend, "--stall-timeout", "3", path,
            stdin=read_end, timeout=60,
        )  # fmt: skip
    finally:
        os.close(read_end)
        os.close(write_end)
    elapsed = time.monotonic() - started
    err = done.stderr
    assert done.returncode == 124, err
    assert elapsed < 40, err
    waiting = sorted({0, 1, 2, 3} - set(ODD[scenario]))
    waits = "rank 0 waits" if len(waiting) == 1 else f"ranks {_ranks(waiting)} wait"
    never = _ranks(ODD[scenario])
    never = f"rank {never}" if len(ODD[scenario]) == 1 else f"ranks {never}"
    verdict = f"verdict: {waits} in all_sum #2 (float64 (3,)), which {never} never made"
    assert verdict in err, err
    assert "their last call there was all_sum #1" in err, err
    assert ACTIVITY[scenario] in err, err
    # Each rank's line: the call and its site, or what it does instead.
    assert "waits in all_sum #2 (float64 (3,)) for " in err, err
    assert f"at {path}:{lines['stuck']}" in err, err
    assert f"{path}:{lines['others']}" in err, err
    # No snapshot leaks into the output.
    assert "chorus-snapshot" not in err + done.stdout


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(str(r) for r in ranks)


SLOW_JOIN = (
    HEAD
    + """
if r == 0:
    chorus.all_sum(np.ones(3))
else:
    time.sleep(6)
    chorus.all_sum(np.ones(3))
print("DONE", r, flush=True)
"""
)


def test_ctrl_backslash_prints_the_report_and_the_job_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "slow.py"
    path.write_text(SLOW_JOIN)
    proc = start_launcher("-n", "3", str(path))
    try:
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGQUIT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "where is every rank (SIGQUIT)" in err, err
    assert "verdict: rank 0 waits in all_sum #2 (float64 (3,)), which ranks 1,2 never made" in err
    for r in range(3):
        assert f"[{r}] DONE {r}" in out, out


FIRST = """import time, numpy as np, chorus
import os
if os.environ["CHORUS_RANK"] == "0":
    chorus.all_sum(np.ones(3))                 # its first collective: chorus.init() waits
else:
    import chorus.group                        # chorus, but no init: it answers all the same
    time.sleep(60)
"""


def test_a_first_collective_the_others_skip_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "first.py"
    path.write_text(FIRST)
    done = launch("-n", "3", "--stall-timeout", "3", str(path), timeout=60)
    err = done.stderr
    assert done.returncode == 124, err
    assert "[0]    waits in chorus.init() for the other ranks for" in err, err
    assert "verdict: rank 0 waits in chorus.init() (a rank's first collective calls it)," in err
    assert "which ranks 1,2 never called" in err, err


ASKS = (
    HEAD
    + """
if r == 0:
    for _ in range(100):                       # until the others are in all_sum #2
        report = chorus.debug.where()          # LINE asks
        # Not just waiting: a ring's last rank may still be leaving all_sum #1.
        if report.verdict.waiting == [1, 2, 3] and report.verdict.kind == "missing-call":
            break
        time.sleep(0.1)
    print("KIND", report.verdict.kind, report.verdict.waiting, report.verdict.others, flush=True)
    print(report.text(), flush=True)
chorus.all_sum(np.ones(3))                     # LINE joined
print("DONE", r, flush=True)
"""
)


@pytest.mark.parametrize("backend", ["shm", "ring", "mesh"])
def test_a_rank_asks_where_every_rank_is(tmp_path: Path, backend: str) -> None:
    # Ranks 1-3 wait in all_sum #2 for rank 0, which asks (through the launcher).
    path = tmp_path / "asks.py"
    path.write_text(ASKS)
    lines = {
        line.split("# LINE ")[1].strip(): n
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if "# LINE " in line
    }
    done = launch("-n", "4", "--backend", backend, str(path), timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[0] KIND missing-call [1, 2, 3] [0]" in out, out
    assert f"not in a chorus call: runs <module> at {path}:{lines['asks']}" in out, out
    assert "verdict: ranks 1-3 wait in all_sum #2 (float64 (3,)), which rank 0 never made" in out
    assert f"at {path}:{lines['joined']}" in out, out
    for r in range(4):
        assert f"[{r}] DONE {r}" in out, out


def test_a_set_up_timeout_says_where_the_missing_ranks_are(tmp_path: Path) -> None:
    path = tmp_path / "first.py"
    path.write_text(FIRST)
    done = launch("-n", "3", "--timeout", "3", str(path), timeout=60)
    err = done.stderr
    assert done.returncode == 1, err
    assert "PeerTimeoutError" in err, err
    assert "ranks 1, 2 did not attach" in err, err
    assert "[0] Where every rank is now (chorus.debug.where()):" in err, err
    assert "[0] [1,2]  not in a chorus call: runs <module> at " in err, err
    assert "which ranks 1,2 never called (they are running <module> at" in err, err


def test_where_without_a_supervisor_says_so() -> None:
    import subprocess
    import sys

    code = (
        "import chorus.debug\n"
        "try:\n"
        "    chorus.debug.where()\n"
        "except chorus.debug.WhereUnavailableError as err:\n"
        "    print(err.reason, err)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("no-supervisor rank 0 on "), out
    assert "nothing that can was (no CHORUS_SUPERVISOR)" in out, out


WORKER = """import multiprocessing, os, time
import numpy as np, chorus

def work():
    import chorus  # a worker of the rank imports chorus too (and gets the signal)
    time.sleep(30)

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    worker = multiprocessing.Process(target=work)
    worker.start()
    r = int(os.environ["CHORUS_RANK"])
    if r == 0:
        chorus.all_sum(np.ones(3))             # the others never come
    else:
        time.sleep(30)                         # LINE others
"""


def test_a_worker_of_a_rank_does_not_answer_for_it(tmp_path: Path) -> None:
    path = tmp_path / "workers.py"
    path.write_text(WORKER)
    done = launch("-n", "2", "--stall-timeout", "4", str(path), timeout=90)
    err = done.stderr
    assert done.returncode == 124, err
    # Rank 1's own stack (in its main module), not its worker's (in work()).
    assert "[1]  not in a chorus call: runs <module> at " in err, err
    assert "in work" not in err, err
