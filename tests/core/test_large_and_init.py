"""Messages over 2 GiB, and init() caching / backend choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import BACKENDS, RankRunner


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_sum_over_2_gib_at_n2(ranks: RankRunner, backend: str) -> None:
    # 2 GiB + 24 bytes of uint8: past every 32-bit length in the stack.
    code = """
    import numpy as np, chorus
    g = chorus.init(strict=True)
    n = (1 << 31) + 24
    x = np.full(n, g.rank() + 1, dtype=np.uint8)
    x[-1] = 7 * (g.rank() + 1)
    y = chorus.all_sum(x)
    del x
    assert y.nbytes > 2**31
    assert y[0] == 3 and y[n // 2] == 3 and y[-2] == 3 and y[-1] == 21, (y[:2], y[-2:])
    # spot checks on strided samples: a wrong offset anywhere shows up
    assert np.all(y[:-1:4099] == 3)
    print("OK")
    """
    results = ranks.run(code, 2, backend=backend, timeout=300)
    assert all("OK" in r.stdout for r in results)


def test_init_is_cached_and_reports_backend(ranks: RankRunner) -> None:
    code = """
    import chorus
    a = chorus.init()
    assert chorus.init() is a and chorus.init("any") is a
    assert a.backend == "shm", a.backend
    assert chorus.is_available("shm") and chorus.is_available("ring")
    assert chorus.is_available()
    try:
        chorus.init("carrier-pigeon")
    except ValueError as err:
        assert "carrier-pigeon" in str(err)
    else:
        raise AssertionError("unknown backend accepted")
    print("OK", repr(a))
    """
    results = ranks.run(code, 2, backend="any")
    assert all("OK <chorus.Group rank=" in r.stdout for r in results)


def test_strict_init_outside_a_job_raises() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    code = (
        "import chorus\n"
        "assert not chorus.is_available()\n"
        "assert chorus.init().size() == 1\n"
        "try:\n"
        "    chorus.init('shm', strict=True)\n"
        "except chorus.BackendUnavailableError as err:\n"
        "    print('RAISED', err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "RAISED" in done.stdout
    assert "not part of a job" in done.stdout
