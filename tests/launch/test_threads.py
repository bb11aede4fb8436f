"""Ranks sharing a host share its cores: BLAS/OpenMP thread defaults."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from chorus.launch.threads import THREAD_VARIABLES, thread_limits, usable_cores
from tests.launch.helpers import CHORUS

pytestmark = pytest.mark.timeout(60)

SHOW = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {list(THREAD_VARIABLES)!r}}}))"


def test_thread_limits_divides_the_cores() -> None:
    assert thread_limits(4, 16, {}) == dict.fromkeys(THREAD_VARIABLES, "4")
    assert thread_limits(3, 16, {}) == dict.fromkeys(THREAD_VARIABLES, "5")
    # More ranks than cores: one thread each, never zero.
    assert thread_limits(4, 2, {}) == dict.fromkeys(THREAD_VARIABLES, "1")
    # One rank keeps the whole host; a user's choice is never overridden.
    assert thread_limits(1, 16, {}) == {}
    assert thread_limits(4, 16, {"MKL_NUM_THREADS": "8"}) == {}


def _launch_show(nprocs: int, env: dict[str, str]) -> list[dict[str, str | None]]:
    done = subprocess.run(
        [*CHORUS, "launch", "-n", str(nprocs), "--no-prefix", "-c", SHOW],
        capture_output=True, text=True, timeout=30, check=False,
        stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_local_ranks_get_their_share_of_the_cores() -> None:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    share = str(max(1, usable_cores() // 4))
    seen = _launch_show(4, clean)
    assert seen == [dict.fromkeys(THREAD_VARIABLES, share)] * 4
    # A rank alone on the host keeps the libraries' own defaults.
    assert _launch_show(1, clean) == [dict.fromkeys(THREAD_VARIABLES)]
    # The user's setting wins, and then nothing else is added.
    seen = _launch_show(2, {**clean, "OMP_NUM_THREADS": "3"})
    expected = dict.fromkeys(THREAD_VARIABLES)
    expected["OMP_NUM_THREADS"] = "3"
    assert seen == [expected] * 2
