"""chorus: one Python program as N ranks, with numpy collectives between them.

>>> import chorus, numpy as np
>>> group = chorus.init()
>>> chorus.all_sum(np.ones(3) * group.rank())
"""

from __future__ import annotations

from chorus._core import BackendUnavailableError, PeerError, PeerTimeoutError
from chorus.collectives import (
    all_gather,
    all_max,
    all_min,
    all_sum,
    average_gradients,
    barrier,
    broadcast,
    recv,
    recv_like,
    send,
    sum_scatter,
)
from chorus.group import Group, init, is_available

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext chorus``: register the chorus magics (see :mod:`chorus.magics`)."""
    from chorus.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext chorus``: stop the ranks the magics started."""
    from chorus.magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "BackendUnavailableError",
    "Group",
    "PeerError",
    "PeerTimeoutError",
    "__version__",
    "all_gather",
    "all_max",
    "all_min",
    "all_sum",
    "average_gradients",
    "barrier",
    "broadcast",
    "init",
    "is_available",
    "recv",
    "recv_like",
    "send",
    "sum_scatter",
]
