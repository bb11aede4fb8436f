"""Open MPI rank through mpi4py: ``mpirun -n N python mpi_worker.py``.

Uses the buffer (upper-case) methods on preallocated numpy arrays:
``Allreduce(x, out, op=MPI.SUM)``, ``Allgather(x, out)`` and
``Reduce_scatter_block(x, out, op=MPI.SUM)`` (sum_scatter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _harness
import numpy as np
from mpi4py import MPI


class MpiComm:
    """``MPI.COMM_WORLD``."""

    def __init__(self) -> None:
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.peer = "openmpi"

    def prepare(self, op: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[], Any]]:
        x = x.copy()
        if op == "all_sum":
            out = np.empty_like(x)
            return (lambda: self.comm.Allreduce(x, out, op=MPI.SUM)), lambda: out
        if op == "sum_scatter":
            out = np.empty(x.size // self.size, dtype=x.dtype)
            return (lambda: self.comm.Reduce_scatter_block(x, out, op=MPI.SUM)), lambda: out
        out = np.empty(self.size * x.size, dtype=x.dtype)
        return (lambda: self.comm.Allgather(x, out)), lambda: out

    def gather(self, values: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty((self.size, x.size), dtype=np.float64)
        self.comm.Allgather(x, out)
        return out

    def barrier(self) -> None:
        self.comm.Barrier()


if __name__ == "__main__":
    _harness.main(MpiComm)
