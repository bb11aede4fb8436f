"""``python -m chorus.kernel -f CONNECTION_FILE [--ranks N] [--backend B] [--hosts H|--hostfile F]``."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Start the chorus kernel; ``--ranks``, ``--backend``, ``--hosts``... are shorthands."""
    # debugpy's "frozen modules may hide breakpoints" warning would land over
    # a terminal's first prompt, for a debugger nobody attached (the ranks
    # inherit this too).
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    from chorus.kernel.app import KernelApp
    from chorus.kernel.kernel import ChorusKernel

    args = list(sys.argv[1:] if argv is None else argv)
    aliases = {
        "--ranks": "--ChorusKernel.ranks_count",
        "--backend": "--ChorusKernel.backend",
        "--timeout": "--ChorusKernel.rank_timeout",
        "--hosts": "--ChorusKernel.hosts",
        "--hostfile": "--ChorusKernel.hostfile",
        "--python": "--ChorusKernel.python",
    }
    translated: list[str] = []
    iterator = iter(args)
    for arg in iterator:
        name, eq, value = arg.partition("=")
        if name in aliases:
            translated.append(f"{aliases[name]}={value if eq else next(iterator)}")
        else:
            translated.append(arg)
    KernelApp.launch_instance(argv=translated, kernel_class=ChorusKernel)


if __name__ == "__main__":
    main()
