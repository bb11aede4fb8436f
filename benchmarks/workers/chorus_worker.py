"""chorus rank: ``chorus launch -n N --backend shm|ring chorus_worker.py``.

See ``_harness.py`` for what a rank does and how the driver configures it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import _harness
import numpy as np

import chorus


class ChorusComm:
    """chorus's world group; the backend comes from CHORUS_BACKEND (set by the launcher)."""

    def __init__(self) -> None:
        self.group = chorus.init(strict=True)
        self.rank = self.group.rank()
        self.size = self.group.size()
        self.peer = "chorus"

    def prepare(self, op: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[], Any]]:
        # Into a preallocated result (out=), as the mpi4py worker does; with
        # CHORUS_BENCH_FRESH_RESULT=1, a fresh result per call, the previous
        # one dropped (y = chorus.all_sum(x)): what the result's memory costs.
        calls = {"all_sum": chorus.all_sum, "sum_scatter": chorus.sum_scatter}
        if os.environ.get("CHORUS_BENCH_FRESH_RESULT") == "1":
            call = calls.get(op, chorus.all_gather)
            last: list[Any] = [None]

            def fresh() -> None:
                last[0] = call(x)

            return fresh, lambda: last[0]
        if op == "all_sum":
            out = np.empty_like(x)
            return (lambda: chorus.all_sum(x, out=out)), lambda: out
        if op == "sum_scatter":
            out = np.empty(x.shape[0] // self.size, dtype=x.dtype)
            return (lambda: chorus.sum_scatter(x, out=out)), lambda: out
        out = np.empty(self.size * x.shape[0], dtype=x.dtype)
        return (lambda: chorus.all_gather(x, out=out)), lambda: out

    def gather(self, values: np.ndarray) -> np.ndarray:
        return chorus.all_gather(values).reshape(self.size, -1)

    def barrier(self) -> None:
        chorus.barrier()


if __name__ == "__main__":
    _harness.main(ChorusComm)
