"""The ``mpirun`` command line that starts a job for the ``mpi`` backend.

``chorus launch --backend mpi`` does not start MPI ranks itself: only the MPI
library's own launcher can, because ranks find each other through it. This
module builds that launcher's command line for the installed Open MPI, whose
flags changed between 4.x (Debian 12 ships 4.1) and 5.x:

=========================  ====================  ==========================
purpose                    Open MPI 4.x          Open MPI 5.x
=========================  ====================  ==========================
more ranks than cores      ``--oversubscribe``   ``--map-by :OVERSUBSCRIBE``
labelled output (opt-in)   ``--tag-output``      ``--output tag``
quieter without InfiniBand ``--mca btl ^openib``  (openib is gone)
=========================  ====================  ==========================

Every version gets ``--allow-run-as-root`` when run as root (mpirun refuses
root otherwise), ``--bind-to none`` (ranks of an interactive shell use numpy
threads, and binding several ranks to one core each starves them), ``--mca
mpi_yield_when_idle 1`` (a rank waiting in MPI yields the CPU instead of
busy-polling, which matters as soon as ranks outnumber cores), ``-x NAME`` per
environment variable and ``--host host:slots,...`` for several hosts.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

__all__ = ["MpirunError", "mpirun_command", "openmpi_version"]

_INSTALL_HINT = "install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin)"
_VERSION_RE = re.compile(r"\(Open MPI\)\s+(\d+)\.(\d+)(?:\.(\d+))?")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MpirunError(RuntimeError):
    """``mpirun`` is missing, does not run, or is not a supported Open MPI."""


def _resolve(mpirun: str) -> str:
    path = shutil.which(mpirun)
    if path is None:
        msg = f"{mpirun!r} not found (PATH={os.environ.get('PATH', '')!r}): {_INSTALL_HINT}"
        raise MpirunError(msg)
    return path


@functools.lru_cache(maxsize=8)
def _version_of(path: str) -> tuple[int, int, int]:
    # Cached per absolute path: the installed version does not change while
    # we run, and each probe costs a process start.
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"{path} --version failed: {exc}"
        raise MpirunError(msg) from exc
    output = done.stdout + done.stderr
    match = _VERSION_RE.search(output)
    if match is None:
        lines = output.strip().splitlines()
        said = repr(lines[0]) if lines else f"no output, exit status {done.returncode}"
        msg = (
            f"{path} is not Open MPI's mpirun ({path} --version says {said}); "
            "chorus launch --backend mpi supports Open MPI 4.x and 5.x"
        )
        raise MpirunError(msg)
    return int(match[1]), int(match[2]), int(match[3] or 0)


def openmpi_version(mpirun: str = "mpirun") -> tuple[int, int, int]:
    """The Open MPI version of ``mpirun`` as ``(major, minor, patch)``.

    Parameters
    ----------
    mpirun
        Command name (looked up on ``PATH``) or path of the launcher.

    Raises
    ------
    MpirunError
        ``mpirun`` is not found, does not run, or is not Open MPI's.
    """
    return _version_of(_resolve(mpirun))


def _host_slots(hosts: Sequence[str]) -> str:
    """``["a", "a", "b"]`` -> ``"a:2,b:1"``: one slot per rank, hosts in first-seen order."""
    slots: dict[str, int] = {}
    for host in hosts:
        if not host or any(c in host for c in ",: \t"):
            msg = f"bad host name {host!r} for mpirun --host"
            raise ValueError(msg)
        slots[host] = slots.get(host, 0) + 1
    return ",".join(f"{host}:{count}" for host, count in slots.items())


def mpirun_command(
    nprocs: int,
    argv: Sequence[str],
    *,
    hosts: list[str] | None,
    env: Mapping[str, str],
    mpirun: str = "mpirun",
    tag_output: bool = False,
) -> list[str]:
    """Build the Open MPI ``mpirun`` command that runs ``argv`` as ``nprocs`` ranks.

    The version is read from ``mpirun --version`` (once per path) and the
    flags chosen for it (see the module docstring). The command starts with
    mpirun's absolute path, so it runs the very mpirun that was probed.

    Environment values are not on the command line: ``-x NAME`` makes
    mpirun copy ``NAME`` from its own environment to every rank (on every
    host), so secrets such as ``CHORUS_TOKEN`` never show in ``ps``. Run the
    command with those values in its environment::

        command = mpirun_command(4, [sys.executable, "train.py"], hosts=None,
                                 env={"CHORUS_BACKEND": "mpi"})
        subprocess.run(command, env={**os.environ, "CHORUS_BACKEND": "mpi"})

    Parameters
    ----------
    nprocs
        Number of ranks.
    argv
        The program each rank runs, e.g. ``[sys.executable, "train.py"]``;
        use absolute paths when ranks run on other hosts.
    hosts
        One host name per rank (``["a", "a", "b", "b"]``), turned into
        ``--host a:2,b:2``; ``None`` or empty runs every rank on this host.
        Other hosts are reached by mpirun over ssh.
    env
        Variables every rank must see, typically ``CHORUS_BACKEND=mpi`` and
        what the program needs; only the names are used (see above).
    mpirun
        The launcher: a name looked up on ``PATH`` or a path.
    tag_output
        Add Open MPI's per-line rank labels (``[1,0]<stdout>:`` in 4.x).
        Off by default: mpirun merges every rank's output into one stream,
        and a launcher that relabels lines chorus-style can turn this on and
        parse the tags.

    Returns
    -------
    list[str]
        The argument vector, for :func:`subprocess.run` or
        :func:`asyncio.create_subprocess_exec`.

    Raises
    ------
    MpirunError
        ``mpirun`` is missing ("install openmpi-bin"), does not run, or is
        not Open MPI.
    ValueError
        ``nprocs < 1``, an empty ``argv``, or a malformed variable or host
        name.
    """
    if nprocs < 1:
        msg = f"nprocs must be at least 1, got {nprocs}"
        raise ValueError(msg)
    if not argv:
        msg = "argv is empty: give the program each rank runs"
        raise ValueError(msg)
    for name in env:
        if not _ENV_NAME_RE.fullmatch(name):
            msg = f"bad environment variable name {name!r} for mpirun -x"
            raise ValueError(msg)
    path = _resolve(mpirun)
    major, _, _ = _version_of(path)
    modern = major >= 5  # PRRTE-based runtime: new mapping and output options

    command = [path]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    command += ["-n", str(nprocs)]
    command += ["--map-by", ":OVERSUBSCRIBE"] if modern else ["--oversubscribe"]
    command += ["--bind-to", "none"]
    command += ["--mca", "mpi_yield_when_idle", "1"]
    if not modern:
        # 4.x probes InfiniBand through openib and warns when there is none.
        command += ["--mca", "btl", "^openib"]
    if tag_output:
        command += ["--output", "tag"] if modern else ["--tag-output"]
    if hosts:
        command += ["--host", _host_slots(hosts)]
    for name in env:
        command += ["-x", name]
    command += list(argv)
    return command
