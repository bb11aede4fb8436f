"""Process exit for the mpi backend: free communicators, then finalise or abort MPI.

MPI must be finalised once, after every communicator chorus created is freed,
or Open MPI's mpirun reports the job as failed (and an MPI call after
``MPI_Finalize`` aborts: MLX's backend dies at exit after a split for that
reason). Group objects live until the interpreter tears its modules down, too
late and in no particular order, so chorus does not wait for them:
:func:`register_exit` adds an :mod:`atexit` handler when the first mpi group
is created, and that handler frees every communicator chorus still holds
(groups used afterwards raise ``ValueError``) and then calls ``MPI_Finalize``
if chorus initialised MPI. If mpi4py initialised it, mpi4py finalises it
later, from ``Py_AtExit``, which runs after every :mod:`atexit` handler.

Ordering with the program's own exit handlers: :mod:`atexit` runs handlers
last-registered first, so a handler registered after ``chorus.init("mpi")``
may still communicate; one registered before it may not.

An uncaught exception is different. ``MPI_Finalize`` waits for every rank,
and the other ranks may be blocked in a collective waiting for this one: the
job would hang. So when an uncaught exception ends the program (seen through
:data:`sys.excepthook`, which this module wraps), the handler calls
``MPI_Abort`` instead, and mpirun ends every rank with a non-zero exit
status. A rank that calls ``sys.exit()`` with a failure status while others
wait in a collective cannot be told apart from a normal exit here: it
finalises, and the job waits until the others reach their own exit.
"""

from __future__ import annotations

import atexit
import sys
import threading
from types import TracebackType

from chorus import _core

_lock = threading.Lock()
_registered = False
_uncaught = False


def register_exit() -> None:
    """Arrange for MPI to be shut down at interpreter exit (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
    previous = sys.excepthook

    def note_uncaught(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        global _uncaught
        _uncaught = True
        previous(exc_type, exc, tb)

    sys.excepthook = note_uncaught
    atexit.register(_shutdown)


def _shutdown() -> None:
    if _uncaught:
        # MPI_Abort ends the process: get the traceback out first.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    _core.shutdown_backend("mpi", abort=_uncaught)
