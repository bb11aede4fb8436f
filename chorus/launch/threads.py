"""Default thread counts for numerical libraries when ranks share a machine.

numpy's BLAS (OpenBLAS, MKL) and OpenMP code start one thread per core in
every process. With several ranks on a host that is ranks x cores threads
fighting over the cores, and OpenBLAS alone spends ~0.15 s of CPU per
process starting its pool at ``import numpy``. Like torchrun, the launcher
therefore hands each rank its share of the cores, unless the user chose a
thread count: if any of these variables is set, none is touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["THREAD_VARIABLES", "thread_limits", "usable_cores"]

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, else the CPU count).

    The remote agent (agent.py, sent alone) reports the same for its host.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_limits(ranks_here: int, cores: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The thread-count variables to add for ``ranks_here`` ranks on ``cores`` cores.

    Empty when one rank has the host to itself or when ``environ`` already
    sets any of :data:`THREAD_VARIABLES`; otherwise each variable is
    ``max(1, cores // ranks_here)``.
    """
    if ranks_here <= 1 or any(name in environ for name in THREAD_VARIABLES):
        return {}
    share = str(max(1, cores // ranks_here))
    return dict.fromkeys(THREAD_VARIABLES, share)
