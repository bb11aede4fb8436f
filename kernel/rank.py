"""Entry point of one rank kernel: ``python -m chorus.kernel.rank -f CONNECTION_FILE``.

A rank is a stock IPython kernel (so magics, rich display, completion and
input requests behave as users know them) with three changes:

- it dies with its parent (PR_SET_PDEATHSIG), so a killed chorus kernel
  leaves no orphans;
- ``breakpoint()`` uses pdb again: ipykernel 7 installs debugpy's hook,
  which does nothing without a debugger attached;
- ``chorus``, ``np``, ``rank`` and ``size`` are predefined in the namespace.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

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


def main() -> None:
    """Start an IPython kernel configured as a chorus rank."""
    die_with_parent()
    from ipykernel.kernelapp import IPKernelApp

    lines = "[" + ", ".join(repr(line) for line in STARTUP_LINES) + "]"
    argv = [
        *sys.argv[1:],
        f"--IPKernelApp.exec_lines={lines}",
        "--IPKernelApp.quiet=True",
        # N ranks writing one history.sqlite contend on its lock at every cell;
        # the frontend keeps the history of what the user typed.
        "--HistoryManager.enabled=False",
    ]
    IPKernelApp.launch_instance(argv=argv)


if __name__ == "__main__":
    main()
