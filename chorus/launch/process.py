"""One rank as a process: the seam between the launcher and where a rank runs.

:class:`RankProcess` is what the launcher sees (start, stdin, stdout, stderr,
wait, signal); :class:`LocalRank` runs a rank as a local asyncio subprocess.
A later ``SshRank`` (asyncssh) implements the same interface for remote hosts.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["PDEATHSIG_BOOTSTRAP", "LocalRank", "RankProcess", "describe_exit", "rank_exec_helper"]

# Run by a fresh ``python -I -S`` before the rank's own program (Linux only).
# It asks the kernel to SIGKILL this process when the launcher dies
# (PR_SET_PDEATHSIG survives execve), then closes the race where the launcher
# died before prctl ran: if our parent is no longer the launcher, die now.
# Finally it execs the rank's program, so the rank keeps this pid (which is
# also its process group and session id, from start_new_session).
# argv: -c <launcher pid> <program path> <program argv[0]> <args...>
PDEATHSIG_BOOTSTRAP = """\
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:
    err = ctypes.get_errno()
    sys.stderr.write(f"chorus: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}\\n")
if os.getppid() != int(sys.argv[1]):
    os.kill(os.getpid(), signal.SIGKILL)
try:
    os.execv(sys.argv[2], sys.argv[3:])
except OSError as exc:
    sys.stderr.write(f"chorus: cannot execute {sys.argv[2]}: {exc.strerror}\\n")
    os._exit(127)
"""


@functools.cache
def rank_exec_helper() -> str | None:
    """Path of ``chorus-rank-exec``, the compiled parent-death bootstrap.

    It does what :data:`PDEATHSIG_BOOTSTRAP` does (same arguments after the
    bootstrap itself) without starting an interpreter. It is installed next
    to ``chorus._core`` on Linux; ``None`` where it is missing.
    """
    spec = importlib.util.find_spec("chorus._core")
    if spec is None or spec.origin is None:
        return None
    helper = Path(spec.origin).with_name("chorus-rank-exec")
    return str(helper) if os.access(helper, os.X_OK) else None


def describe_exit(returncode: int) -> str:
    """Say in words how a process ended, from its ``returncode``.

    Parameters
    ----------
    returncode
        As asyncio and subprocess report it: ``-N`` for death by signal N.

    Returns
    -------
    str
        ``"exited with code 3"`` or ``"was killed by SIGKILL"``.
    """
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


class RankProcess(ABC):
    """One rank of a job, wherever it runs.

    The launcher starts every rank, broadcasts its stdin to :attr:`stdin`,
    gathers :attr:`stdout` and :attr:`stderr`, waits for the exit and sends
    signals; it never touches a pid or a host directly.
    """

    def __init__(self, rank: int, host: str = "") -> None:
        self.rank = rank
        self.host = host

    @property
    def lost(self) -> bool:
        """Whether contact with the rank's host was lost (no exit status came back)."""
        return False

    @property
    @abstractmethod
    def started(self) -> bool:
        """Whether :meth:`start` succeeded."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the rank runs, for progress messages (``"rank 0: pid 123"``)."""

    @abstractmethod
    async def start(self) -> None:
        """Start the rank; return once it runs (or raise ``OSError``)."""

    @property
    @abstractmethod
    def stdin(self) -> asyncio.StreamWriter:
        """The rank's standard input."""

    @property
    @abstractmethod
    def stdout(self) -> asyncio.StreamReader:
        """The rank's standard output."""

    @property
    @abstractmethod
    def stderr(self) -> asyncio.StreamReader:
        """The rank's standard error."""

    @property
    @abstractmethod
    def returncode(self) -> int | None:
        """The exit status once the rank has exited (``-N`` for signal N)."""

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the rank to exit and return its :attr:`returncode`."""

    @abstractmethod
    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the rank and everything it started.

        Does nothing once the rank is gone.
        """

    @abstractmethod
    def cleanup(self) -> None:
        """Kill whatever the rank left behind after it exited (if anything)."""


class LocalRank(RankProcess):
    """A rank as a local process, started by ``asyncio.create_subprocess_exec``.

    The rank is a fresh process (never a fork of a running interpreter) in its
    own session and process group (``start_new_session=True``): a Ctrl-C at
    the terminal reaches only the launcher, which forwards it deliberately to
    each rank's group, so no rank gets it twice. On Linux the rank runs under
    ``chorus-rank-exec`` (:func:`rank_exec_helper`; else the slower
    :data:`PDEATHSIG_BOOTSTRAP`), so it dies with the launcher even when the
    launcher is killed with SIGKILL.

    Parameters
    ----------
    rank
        The rank number, for messages.
    argv
        The program and its arguments; ``argv[0]`` must be a path.
    env
        The complete environment of the rank.
    cwd
        Working directory, or ``None`` for the launcher's.
    pass_fds
        File descriptors the rank inherits under the same numbers.
    pdeathsig
        Whether to run under the parent-death bootstrap (Linux only).
    """

    def __init__(
        self,
        rank: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
        pdeathsig: bool = sys.platform.startswith("linux"),
    ) -> None:
        super().__init__(rank)
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.pass_fds = tuple(pass_fds)
        self.pdeathsig = pdeathsig
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The rank's pid, which is also its process group id."""
        return self._started.pid

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def where(self) -> str:
        pid = "not started" if self._process is None else f"pid {self._process.pid}"
        return f"rank {self.rank}: {pid}"

    @property
    def _started(self) -> asyncio.subprocess.Process:
        if self._process is None:
            msg = f"rank {self.rank} has not been started"
            raise RuntimeError(msg)
        return self._process

    def command(self) -> list[str]:
        """The exact command line that :meth:`start` executes."""
        if not self.pdeathsig:
            return list(self.argv)
        helper = rank_exec_helper()
        if helper is not None:
            return [helper, str(os.getpid()), self.argv[0], *self.argv]
        return [
            sys.executable,
            "-I",
            "-S",
            "-c",
            PDEATHSIG_BOOTSTRAP,
            str(os.getpid()),
            self.argv[0],
            *self.argv,
        ]

    async def start(self) -> None:
        """Start the process with pipes for stdin, stdout and stderr."""
        command = self.command()
        self._process = await asyncio.create_subprocess_exec(
            command[0],
            *command[1:],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            pass_fds=self.pass_fds,
            start_new_session=True,
        )

    @property
    def stdin(self) -> asyncio.StreamWriter:
        stream = self._started.stdin
        assert stream is not None  # created with PIPE
        return stream

    @property
    def stdout(self) -> asyncio.StreamReader:
        stream = self._started.stdout
        assert stream is not None  # created with PIPE
        return stream

    @property
    def stderr(self) -> asyncio.StreamReader:
        stream = self._started.stderr
        assert stream is not None  # created with PIPE
        return stream

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def wait(self) -> int:
        return await self._started.wait()

    def send_signal(self, signum: int) -> None:
        """Signal the rank's whole process group (its pid is the group id).

        Once the rank has been reaped its group may live on in processes it
        started; they are signalled too. A pid is not reused while a process
        group of that id exists, so this never hits a stranger.
        """
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def cleanup(self) -> None:
        """SIGKILL what is left of the rank's process group."""
        self.send_signal(signal.SIGKILL)
