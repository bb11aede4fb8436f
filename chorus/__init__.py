"""chorus: one Python program as N ranks, with numpy collectives between them.

>>> import chorus, numpy as np
>>> group = chorus.init()
>>> chorus.all_sum(np.ones(3) * group.rank())

Names are imported on first use: ``chorus launch`` and ``python -m chorus``
import this package and must not pay for numpy and the compiled module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chorus._core import BackendUnavailableError, PeerError, PeerTimeoutError, note_interrupt
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

_LAZY = {
    "BackendUnavailableError": "chorus._core",
    "PeerError": "chorus._core",
    "PeerTimeoutError": "chorus._core",
    "note_interrupt": "chorus._core",
    "all_gather": "chorus.collectives",
    "all_max": "chorus.collectives",
    "all_min": "chorus.collectives",
    "all_sum": "chorus.collectives",
    "average_gradients": "chorus.collectives",
    "barrier": "chorus.collectives",
    "broadcast": "chorus.collectives",
    "recv": "chorus.collectives",
    "recv_like": "chorus.collectives",
    "send": "chorus.collectives",
    "sum_scatter": "chorus.collectives",
    "Group": "chorus.group",
    "init": "chorus.group",
    "is_available": "chorus.group",
}

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
    "debug",
    "init",
    "is_available",
    "note_interrupt",
    "recv",
    "recv_like",
    "send",
    "sum_scatter",
]


def __getattr__(name: str) -> Any:
    if name == "debug":  # a submodule: chorus.debug.flight_record(), ...
        return importlib.import_module("chorus.debug")
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'chorus' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _answer_reports_early() -> None:
    """Under ``chorus launch``, answer "where are you?" from the moment chorus is imported.

    A rank that never reaches ``chorus.init()`` (a collective inside ``if
    rank == 0:`` on the others) is the one a report most needs to show.
    Only the rank process itself, which leads its process group: the
    launcher signals the whole group, and a worker the rank started (and
    that imports chorus) must not answer in its place. A rank started
    through a wrapper (a shell script) answers from ``chorus.init()`` on.
    """
    import os

    if os.environ.get("CHORUS_REPORTS") == "stderr" and os.getpid() == os.getpgrp():
        from chorus.debug import install_report_signal

        install_report_signal()


_answer_reports_early()


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext chorus``: register the chorus magics (see :mod:`chorus.magics`)."""
    from chorus.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext chorus``: stop the ranks the magics started."""
    from chorus.magics import unload_ipython_extension as unload

    unload(ipython)
