"""The rank side of the collectives benchmark, shared by every peer's worker.

A worker wraps one library in a :class:`Comm` and calls :func:`main`. The
driver (``benchmarks/collectives.py``) passes the cases in the environment
variable ``BENCH_CONFIG`` (JSON), so no launcher's own argument parsing gets
in the way. For each case every rank

1. checks one result against numpy (inputs that sum exactly in float32),
2. warms up, then agrees with the other ranks on an iteration count that
   makes a trial last about ``target_s`` seconds,
3. runs ``trials`` trials of back-to-back operations with no barrier inside
   (one barrier before each trial lines the ranks up),
4. gathers its per-trial times with the library's own all_gather, so rank 0
   can take the slowest rank of each trial.

Rank 0 prints one line per case, ``BENCH_JSON {...}``; the driver finds the
marker anywhere in a line, so launchers that label output still work.
``BENCH_CONFIG={"trivial": true}`` is the launch-to-exit probe: one 8-byte
all_sum and exit.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

MARKER = "BENCH_JSON "


class Comm(Protocol):
    """What the harness needs from a library: rank, size and four operations.

    ``prepare`` knows all_sum and all_gather, and sum_scatter where the
    driver's peer lists it (``Peer.ops`` in multihost.py).
    """

    peer: str
    rank: int
    size: int

    def prepare(self, op: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[], Any]]:
        """Return ``(run, result)``: one blocking collective on ``x``, and its last output."""
        ...

    def gather(self, values: np.ndarray) -> np.ndarray:
        """All-gather a 1-d float array; returns shape ``(size, len(values))``."""
        ...

    def barrier(self) -> None:
        """Wait for every rank."""
        ...


def _inputs(nbytes: int, rank: int) -> np.ndarray:
    """Small integers as float32, so any summation order gives the exact result."""
    count = max(1, nbytes // 4)
    return (np.arange(count, dtype=np.int64) % 13 + rank + 1).astype(np.float32)


def _expected(op: str, nbytes: int, size: int, rank: int) -> np.ndarray:
    parts = [_inputs(nbytes, r) for r in range(size)]
    if op == "all_sum":
        return np.sum(parts, axis=0, dtype=np.float32)
    if op == "sum_scatter":  # rank r's block of the sum; the count divides by the size
        return np.array_split(np.sum(parts, axis=0, dtype=np.float32), size)[rank]
    return np.concatenate(parts)


def _check(comm: Comm, op: str, nbytes: int) -> str:
    if not getattr(comm, "checks_results", True):
        return "reference"  # moves bytes, computes nothing (tcp_floor_worker.py)
    run, result = comm.prepare(op, _inputs(nbytes, comm.rank))
    run()
    got = np.asarray(result(), dtype=np.float32).reshape(-1)
    want = _expected(op, nbytes, comm.size, comm.rank)
    if got.shape != want.shape:
        return f"FAIL: shape {got.shape}, expected {want.shape}"
    if not np.array_equal(got, want):
        bad = int(np.count_nonzero(got != want))
        return f"FAIL: {bad} of {want.size} elements differ"
    return "ok"


def _slowest(comm: Comm, seconds: float) -> float:
    return float(comm.gather(np.array([seconds], dtype=np.float64)).max())


def _calibrate(comm: Comm, run: Callable[[], None], target_s: float, max_iters: int) -> int:
    """Double the op count until a batch lasts 1/10 of the target on the slowest rank."""
    count = 1
    while True:
        comm.barrier()
        start = time.perf_counter()
        for _ in range(count):
            run()
        elapsed = _slowest(comm, time.perf_counter() - start)
        if elapsed >= target_s / 10 or count >= max_iters:
            per_op = elapsed / count
            return max(1, min(max_iters, math.ceil(target_s / max(per_op, 1e-9))))
        count *= 2


def run_case(comm: Comm, op: str, nbytes: int, config: dict[str, Any]) -> dict[str, Any]:
    """Check, warm up, calibrate and time one (op, bytes per rank) case."""
    t_start = time.time()
    check = _check(comm, op, nbytes)
    # Time on zeros: the values do not change the cost, and in-place APIs
    # (torch's all_reduce) then never overflow over thousands of iterations.
    run, _ = comm.prepare(op, np.zeros(max(1, nbytes // 4), dtype=np.float32))
    for _ in range(int(config.get("warmup", 3))):
        run()
    iters = _calibrate(comm, run, float(config["target_s"]), int(config.get("max_iters", 100000)))
    mine = []
    for _ in range(int(config["trials"])):
        comm.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            run()
        mine.append((time.perf_counter() - start) / iters)
    per_rank = comm.gather(np.array(mine, dtype=np.float64)) * 1e6
    return {
        "peer": comm.peer,
        "op": op,
        "bytes": nbytes,
        "n": comm.size,
        "check": check,
        "iters": iters,
        "trials_us": [float(v) for v in per_rank.max(axis=0)],
        "per_rank_us": per_rank.tolist(),
        "t_start": t_start,
        "t_end": time.time(),
    }


def emit(record: dict[str, Any]) -> None:
    """Print one result line (rank 0 only) and flush it through the launcher."""
    sys.stdout.write(MARKER + json.dumps(record) + "\n")
    sys.stdout.flush()


def main(make_comm: Callable[[], Comm]) -> None:
    """Run the cases in ``BENCH_CONFIG`` with the comm that ``make_comm`` builds."""
    config: dict[str, Any] = json.loads(os.environ.get("BENCH_CONFIG", '{"trivial": true}'))
    comm = make_comm()
    if config.get("trivial"):
        run, _ = comm.prepare("all_sum", _inputs(8, comm.rank))
        run()
        return
    for op, nbytes in config["cases"]:
        record = run_case(comm, op, int(nbytes), config)
        if comm.rank == 0:
            emit(record)
