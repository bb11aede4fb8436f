"""The benchmark driver's own logic: rounds pooling, the reference column, the floor worker.

Speed is never asserted here; these check that the numbers the driver
reports are put together correctly and that the TCP floor worker moves the
bytes it claims to (it needs only numpy, not the peers' venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import collectives


def _record(peer: str, trials: list[float], check: str = "ok", rnd: int = 0) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "peer": peer,
        "op": "all_sum",
        "bytes": 16 << 20,
        "n": 4,
        "check": check,
        "trials_us": trials,
        "per_rank_us": [trials] * 4,
        "round": rnd,
        "background_cores": 0.0,
        "attempt": 1,
    }
    rec.update(collectives.summarise(rec))
    return rec


def test_rounds_pool_trials_and_keep_each_round() -> None:
    merged = collectives.merge_rounds(
        [
            _record("openmpi", [10.0, 11.0, 12.0], rnd=0),
            _record("openmpi", [30.0, 31.0, 32.0], rnd=1),
            _record("chorus shm", [5.0], "FAIL: 3 of 4 elements differ", rnd=0),
            _record("chorus shm", [6.0], rnd=1),
        ]
    )
    by = {m["peer"]: m for m in merged}
    assert len(merged) == 2
    mpi = by["openmpi"]
    assert mpi["trials_us"] == [10.0, 11.0, 12.0, 30.0, 31.0, 32.0]
    assert mpi["median_us"] == pytest.approx(21.0)
    assert [r["median_us"] for r in mpi["rounds"]] == [11.0, 31.0]
    assert mpi["busbw_gbs"] == pytest.approx((16 << 20) / 21e-6 / 1e9 * 1.5)
    # A wrong result in any round marks the cell.
    assert by["chorus shm"]["check"].startswith("FAIL")


def test_reference_column_is_never_the_best_peer() -> None:
    cases = [
        {**_record("chorus ring", [20.0]), "n": 4},
        {**_record("torch gloo", [30.0]), "n": 4},
        {**_record("tcp floor", [10.0], "reference"), "n": 4},
    ]
    text = collectives.table(
        4, ["chorus ring", "torch gloo", "tcp floor"], cases, [("all_sum", 16 << 20)]
    )
    row = text.splitlines()[-1]
    assert "0.67 (ring / torch gloo)" in row
    assert row.rstrip(" |").endswith("2.00")  # chorus ring / tcp floor
    assert "✗" not in row


def test_tcp_floor_worker_moves_a_ring_collectives_bytes(tmp_path: Path) -> None:
    n = 3
    port = collectives._free_ports(n)
    config = {
        "cases": [["all_sum", 1 << 16], ["all_gather", 1 << 12]],
        "trials": 2,
        "target_s": 0.01,
    }
    procs = []
    for rank in range(n):
        env = {
            **os.environ,
            "FLOOR_RANK": str(rank),
            "FLOOR_SIZE": str(n),
            "FLOOR_PORT": str(port),
            "BENCH_CONFIG": json.dumps(config),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(BENCH / "workers" / "tcp_floor_worker.py")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    lines = [ln for ln in outputs[0][0].splitlines() if ln.startswith(collectives.MARKER)]
    records = [json.loads(ln[len(collectives.MARKER) :]) for ln in lines]
    assert [(r["op"], r["bytes"]) for r in records] == [
        ("all_sum", 1 << 16),
        ("all_gather", 1 << 12),
    ]
    for rec in records:
        assert rec["check"] == "reference"
        assert rec["n"] == n
        assert len(rec["trials_us"]) == 2
        assert all(t > 0 for t in rec["trials_us"])
        # Every rank's per-trial times came back through the ring's gather.
        assert len(rec["per_rank_us"]) == n
    assert not outputs[1][0]
    assert not outputs[2][0]
