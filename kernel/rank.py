"""Entry point of one rank kernel: ``python -m chorus.kernel.rank -f CONNECTION_FILE``.

A rank is a stock IPython kernel (so magics, rich display, completion and
input requests behave as users know them) with these changes:

- it dies with its parent (PR_SET_PDEATHSIG), so a killed chorus kernel
  leaves no orphans;
- ``breakpoint()`` uses pdb again: ipykernel 7 installs debugpy's hook,
  which does nothing without a debugger attached;
- ``chorus``, ``np``, ``rank`` and ``size`` are predefined in the namespace;
- SIGINT interrupts the cell's code only, never the sending of its reply
  (see :func:`rank_kernel_class`);
- a ``chorus_where_request`` on the control channel is answered, also while
  a cell runs, with :func:`chorus.debug.snapshot`; every call's line and cell
  go into the flight record.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chorus.where import RankSnapshot

# The execute_request metadata with the chorus kernel's cell number (kernel/ranks.py).
EXECUTION_COUNT_KEY = "chorus_execution_count"

STARTUP_LINES = [
    "import sys as _chorus_sys",
    "_chorus_sys.breakpointhook = _chorus_sys.__breakpointhook__",
    "del _chorus_sys",
    "import os as _chorus_os, numpy as np, chorus",
    "rank = int(_chorus_os.environ.get('CHORUS_RANK', '0'))",
    "size = int(_chorus_os.environ.get('CHORUS_WORLD_SIZE', '1'))",
    "del _chorus_os",
]


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the chorus kernel dies.

    The parent's pid comes from ``JPY_PARENT_PID`` (jupyter_client sets it);
    if the parent is already gone when we get here, exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    parent = os.environ.get("JPY_PARENT_PID", "")
    if parent.isdigit() and os.getppid() != int(parent):
        os._exit(1)


def _interrupt_traceback(
    shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None
) -> Any:
    """Show a KeyboardInterrupt as ipykernel does: without the SIGINT handler's frame.

    The rank's handler raises it (:func:`rank_kernel_class`), so its frame is
    the last; IPython never hides the last frame.
    """
    last, before = tb, None
    while last is not None and last.tb_next is not None:
        before, last = last, last.tb_next
    if before is not None and last.tb_frame.f_code.co_name == "_on_sigint":
        before.tb_next = None
    return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def _mend_debugger_tracing() -> None:
    """Let the debugger stop this thread again after an interrupt hit it while stopped.

    SIGINT while the debugger holds the thread at a breakpoint raises inside
    debugpy's wait loop: Python drops a trace function that raises, and
    debugpy still counts the thread as suspended, so no breakpoint would
    stop it again (ipykernel#821 in a plain ipykernel). Put both right.
    """
    if sys.gettrace() is not None:
        return
    debugpy = sys.modules.get("debugpy")
    if debugpy is None or not debugpy.is_client_connected():
        return
    import threading

    info = getattr(threading.current_thread(), "additional_info", None)
    if info is not None:
        info.pydev_state = 1  # pydevd's STATE_RUN
        info.pydev_step_cmd = info.pydev_original_step_cmd = -1
        info.pydev_step_stop = None
    debugpy.trace_this_thread(True)


def rank_kernel_class() -> type:
    """ipykernel's IPythonKernel, but SIGINT interrupts only a running cell.

    ipykernel turns SIGINT into KeyboardInterrupt for the whole handling of an
    execute_request, reply included; one that lands after the cell's code has
    finished aborts the handler, and the reply is never sent ("KeyboardInterrupt
    caught in kernel"). The chorus kernel interrupts every rank at once (the
    interrupt button, or a rank that died mid-cell), so a rank that had just
    finished would leave the cell waiting forever. Here a SIGINT outside the
    cell's own code is dropped.
    """
    from ipykernel.ipkernel import IPythonKernel

    class RankKernel(IPythonKernel):
        _in_cell = False
        # "Where are you?" from the chorus kernel, answered on the control
        # thread while a cell runs (chorus.where).
        control_msg_types = [*IPythonKernel.control_msg_types, "chorus_where_request"]  # noqa: RUF012 - ipykernel reads the class attribute

        async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
            # The chorus kernel numbers the cells the frontend shows; a rank
            # may have skipped some (%%ranks, the kernel's own directives), so
            # it takes the number given rather than counting its own.
            count = parent.get("metadata", {}).get(EXECUTION_COUNT_KEY)
            if isinstance(count, int) and count > 0 and self.shell is not None:
                self.shell.execution_count = count
            await super().execute_request(stream, ident, parent)  # type: ignore[no-untyped-call]

        def chorus_where_request(self, stream: Any, ident: Any, parent: Any) -> None:
            from chorus.debug import snapshot

            try:
                content: dict[str, Any] = {"status": "ok", "snapshot": self._with_cells(snapshot())}
            except Exception as err:  # noqa: BLE001 - the answer says what went wrong
                content = {"status": "error", "evalue": repr(err)}
            assert self.session is not None
            self.session.send(stream, "chorus_where_reply", content, parent, ident)

        def _with_cells(self, snap: RankSnapshot) -> RankSnapshot:
            """Name each cell's frames by the cell's number, not its per-rank temporary file."""
            assert self.shell is not None
            cells: dict[str, int] = getattr(self.shell.compile, "_filename_map", {})
            for thread in snap["threads"]:
                for frame in thread["frames"]:
                    number = cells.get(frame["file"])
                    if number is not None:
                        frame["cell"] = number
            return snap

        def start(self) -> None:
            super().start()  # type: ignore[no-untyped-call]
            assert self.shell is not None
            self.shell.events.register("pre_run_cell", self._cell_starts)
            self.shell.events.register("post_run_cell", self._cell_ends)
            from chorus import _core

            # Interactive: every call's line and cell go into the flight
            # record (the 0.1 us it costs a call does not matter here).
            _core.set_call_sites(True)
            signal.signal(signal.SIGINT, self._on_sigint)
            self.shell.set_custom_exc((KeyboardInterrupt,), _interrupt_traceback)

        def _cell_starts(self, *_args: object) -> None:
            self._in_cell = True
            from chorus import _core

            assert self.shell is not None
            _core.set_call_site_cell(self.shell.execution_count)

        def _cell_ends(self, *_args: object) -> None:
            self._in_cell = False
            _mend_debugger_tracing()

        def _on_sigint(self, _signum: int, _frame: object) -> None:
            from chorus import _core

            # The backends tell "interrupted on the way to a call its peers
            # aborted" from "late for it" by this (note_interrupt). A rank
            # that had finished the cell was interrupted on its way too: the
            # call its peers were in is one it never made, and its next call
            # must meet their next one.
            _core.note_interrupt()
            if self._in_cell:
                raise KeyboardInterrupt
            self.log.debug("SIGINT outside a cell's code: noted, not raised")

        def pre_handler_hook(self) -> None:
            # Installed for good (also between requests, where ipykernel
            # would ignore SIGINT): every interrupt must be noted.
            signal.signal(signal.SIGINT, self._on_sigint)

        def post_handler_hook(self) -> None:
            """Keep :meth:`_on_sigint` (see :meth:`pre_handler_hook`)."""

    return RankKernel


def main() -> None:
    """Start an IPython kernel configured as a chorus rank."""
    die_with_parent()
    # debugpy (imported by ipykernel) warns on every rank, at the first cell,
    # that frozen modules may hide breakpoints: N copies of it over a
    # terminal's first prompt, for a debugger nobody attached.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    from chorus.kernel.app import KernelApp

    lines = "[" + ", ".join(repr(line) for line in STARTUP_LINES) + "]"
    argv = [
        *sys.argv[1:],
        f"--IPKernelApp.exec_lines={lines}",
        "--IPKernelApp.quiet=True",
        # N ranks writing one history.sqlite contended on its lock at every
        # cell: each keeps its session's (%history, In, _i) in memory, and the
        # chorus kernel writes every cell once (kernel/history.py).
        "--HistoryManager.hist_file=:memory:",
    ]
    KernelApp.launch_instance(argv=argv, kernel_class=rank_kernel_class())


if __name__ == "__main__":
    main()
