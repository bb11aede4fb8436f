"""What a job is: the program, how many ranks, which backend, how to watch it.

:class:`JobSpec` is what the CLI, the kernel and the magics hand to
placement (:mod:`chorus.launch.placement`) and supervision
(:mod:`chorus.launch.run`); :func:`build_command` turns what the user typed
into the command every rank runs; a :class:`~chorus.reporter.Reporter` receives what a job
has to say.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chorus.backends import LAUNCH_BACKENDS

if TYPE_CHECKING:
    from chorus.hostfile import Hostfile

__all__ = ["BACKENDS", "JobSpec", "LaunchError", "build_command"]

# "mpi" jobs are handed to mpirun (chorus.launch.mpi_job); the others are ours.
BACKENDS = LAUNCH_BACKENDS


class LaunchError(Exception):
    """The job cannot be started: bad program, bad directory, no resources."""


@dataclass(frozen=True)
class JobSpec:
    """What to run and how.

    Parameters
    ----------
    argv
        The program of every rank; ``argv[0]`` is a path (see
        :func:`build_command`).
    nprocs
        Number of ranks.
    backend
        ``CHORUS_BACKEND`` for the ranks: ``"shm"``, ``"ring"`` or ``"any"``.
    env
        Extra variables for every rank, applied last (they win).
    cwd
        Working directory of the ranks (default: the launcher's).
    timeout
        ``CHORUS_TIMEOUT``: seconds for set-up and for a peer to answer.
    verbose
        Sets ``CHORUS_VERBOSE=1`` in the ranks.
    prefix
        Label each output line with ``[rank] ``.
    grace
        Seconds the other ranks get to exit by themselves after one failed.
    term_timeout
        Seconds between SIGTERM and SIGKILL when stopping ranks.
    hosts
        Run rank ``i`` on ``hosts.hosts[i]`` over ssh (``nprocs`` must match);
        ``None`` runs every rank here.
    python
        The interpreter on remote hosts (default: this one's absolute path).
    accept_new_host_keys
        Record unknown ssh host keys instead of refusing them.
    stall_report
        Print where every rank is once some ranks have waited this many
        seconds in a call the others cannot join (``None``: never).
    stall_timeout
        The same, then stop the job and exit non-zero (``None``: never).
    gpus
        The GPU ids of each host, one per rank on it: the ``k``-th rank of a
        host gets ``CUDA_VISIBLE_DEVICES=gpus[k]`` (``None``: not set).
    """

    argv: tuple[str, ...]
    nprocs: int
    backend: str = "shm"
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float = 60.0
    verbose: bool = False
    prefix: bool = True
    grace: float = 2.0
    term_timeout: float = 2.0
    hosts: Hostfile | None = None
    python: str | None = None
    accept_new_host_keys: bool = False
    stall_report: float | None = None
    stall_timeout: float | None = None
    gpus: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.nprocs < 1:
            msg = f"the number of ranks must be at least 1, not {self.nprocs}"
            raise LaunchError(msg)
        if self.backend not in BACKENDS:
            msg = f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            raise LaunchError(msg)
        if not self.argv:
            msg = "no program to run"
            raise LaunchError(msg)
        for name in ("stall_report", "stall_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                msg = (
                    f"--{name.replace('_', '-')} must be a positive number of seconds, not {value}"
                )
                raise LaunchError(msg)
        if self.hosts is not None and len(self.hosts.hosts) != self.nprocs:
            msg = f"{self.nprocs} rank(s) but {len(self.hosts.hosts)} host entries"
            raise LaunchError(msg)
        if self.gpus is not None:
            per_host = (
                Counter(entry.ssh for entry in self.hosts.hosts)
                if self.hosts is not None
                else Counter({"this host": self.nprocs})
            )
            host, most = per_host.most_common(1)[0]
            if most > len(self.gpus):
                msg = (
                    f"{most} ranks on {host} but --gpus names {len(self.gpus)} device(s)"
                    f" ({','.join(self.gpus)}): one device per rank"
                )
                raise LaunchError(msg)


def build_command(
    *,
    script: str | None = None,
    module: str | None = None,
    code: str | None = None,
    args: Sequence[str] = (),
    cwd: str | None = None,
) -> tuple[str, ...]:
    """The command line every rank runs, with ``argv[0]`` as a path.

    Exactly one of ``script``, ``module`` and ``code`` is given. A ``.py``
    script runs with this interpreter (``sys.executable``); another file runs
    as a program if it is executable, as does a name found on ``PATH``.

    Raises
    ------
    LaunchError
        If the script does not exist, or none or several of the three are
        given.
    """
    given = [
        name
        for name, value in (("script", script), ("-m", module), ("-c", code))
        if value is not None
    ]
    if len(given) != 1:
        msg = "give exactly one of: a script, -m MODULE, -c CODE"
        raise LaunchError(msg)
    python = sys.executable
    if module is not None:
        if not module:
            msg = "-m needs a module name"
            raise LaunchError(msg)
        return (python, "-m", module, *args)
    if code is not None:
        return (python, "-c", code, *args)
    assert script is not None
    path = _find_script(script, cwd)
    if path.endswith(".py") or not os.access(path, os.X_OK):
        return (python, path, *args)
    return (path, *args)


def _find_script(script: str, cwd: str | None) -> str:
    """An absolute path to ``script``: relative to our cwd, then ``cwd``, then PATH."""
    candidates = [Path(script)]
    if cwd is not None:
        candidates.append(Path(cwd) / script)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.absolute())
    if os.sep not in script and not script.endswith(".py"):
        found = shutil.which(script)
        if found is not None:
            return found
    if Path(script).is_dir():
        msg = f"{script} is a directory, not a script"
        raise LaunchError(msg)
    msg = f"no such script: {script}"
    raise LaunchError(msg)
