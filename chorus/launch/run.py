"""Run one job: start N local ranks, watch them, tear them down.

The pieces, in the order :meth:`Job.run` uses them:

1. addresses (:mod:`chorus.launch.ports`): a listening socket per rank,
   inherited by the rank (``CHORUS_LISTEN_FDS``); MLX ports in a memfd
   hostfile (``MLX_HOSTFILE``);
2. the environment of each rank (:func:`rank_environment`);
3. the ranks themselves (:class:`~chorus.launch.process.LocalRank`), started
   concurrently;
4. stdin broadcast and labelled output (:mod:`chorus.launch.io`);
5. supervision: the first rank that fails decides the exit code and the
   others are stopped after a grace period; SIGINT, SIGTERM and SIGHUP are
   forwarded to every rank, and a second one kills them;
6. cleanup: whatever a rank left in its process group is killed, every fd is
   closed; nothing is written to disk.

Library code never prints: set-up steps and failures go to a
:class:`Reporter`, and the caller (``chorus.cli``) decides how they appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from chorus.launch.hosts import Hostfile, describe
from chorus.launch.io import OutputSink, broadcast_stdin, pump_output
from chorus.launch.ports import (
    LOCALHOST,
    free_ports,
    hostfile_json,
    listening_sockets,
    memfd_hostfile,
)
from chorus.launch.process import LocalRank, RankProcess, describe_exit
from chorus.launch.questions import QuestionServer
from chorus.launch.stall import WhereCollector, longest_wait, stall_key
from chorus.launch.threads import thread_limits, usable_cores
from chorus.where import SNAPSHOT_MARKER, Report, WhereAnswers

if TYPE_CHECKING:
    from chorus.launch.remote import SshRank

__all__ = [
    "BACKENDS",
    "Job",
    "JobResult",
    "JobSpec",
    "LaunchError",
    "RankExit",
    "RemoteRanks",
    "Reporter",
    "build_command",
    "launch",
    "prepare_remote_ranks",
    "rank_environment",
]

BACKENDS = ("shm", "ring", "mesh", "any")
T = TypeVar("T")
# At most this many ranks share one ssh connection (sshd's MaxSessions is 10).
RANKS_PER_CONNECTION = 8
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long a rank's last output may take to arrive after it exited (a process
# it started may still hold the pipe open).
OUTPUT_DRAIN_TIMEOUT = 0.5
# How long reaping may take after SIGKILL before we give up waiting.
KILL_TIMEOUT = 5.0


# Exit status of a job stopped by --stall-timeout (as timeout(1) uses).
STALL_EXIT_CODE = 124


class LaunchError(Exception):
    """The job cannot be started: bad program, bad directory, no resources."""


class Reporter(Protocol):
    """Where a job tells what it does; implemented by the CLI."""

    def progress(self, message: str) -> None:
        """A set-up or teardown step, shown with ``--verbose``."""

    def event(self, message: str) -> None:
        """Something the user must see: a rank failed, ranks are stopped."""

    def status(self, line: str) -> None:
        """A live status line while a slow step runs (``""`` clears it)."""


class SilentReporter:
    """A :class:`Reporter` that drops everything."""

    def progress(self, message: str) -> None:
        """Drop ``message``."""

    def event(self, message: str) -> None:
        """Drop ``message``."""

    def status(self, line: str) -> None:
        """Drop ``line``."""


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


@dataclass(frozen=True)
class RankExit:
    """How one rank ended."""

    rank: int
    returncode: int
    host: str = ""
    # Contact with the host was lost (its ssh connection dropped): no exit
    # status came back, and returncode says SIGKILL, what the agent does to
    # the rank when its session ends.
    lost: bool = False

    def describe(self) -> str:
        """``"rank 2 exited with code 3"``, ``"rank 1 on h1 was killed by SIGKILL"``."""
        if self.lost:
            return f"rank {self.rank}: {self.ending()}"
        where = f" on {self.host}" if self.host else ""
        return f"rank {self.rank}{where} {self.ending()}"

    def ending(self) -> str:
        """What happened, without naming the rank: ``"exited with code 3"``."""
        if self.lost:
            return (
                f"lost contact with {self.host} (its ssh connection dropped: host down or"
                " network cut)"
            )
        return describe_exit(self.returncode)


@dataclass
class JobResult:
    """How a job ended.

    Attributes
    ----------
    exits
        Every rank's exit, in the order the launcher saw them.
    first_failure
        The first rank seen to exit non-zero (or by a signal), if any.
    signals
        Signals the launcher itself received (SIGINT, SIGTERM, SIGHUP).
    """

    exits: list[RankExit] = field(default_factory=list)
    first_failure: RankExit | None = None
    signals: list[int] = field(default_factory=list)
    # The job was stopped because it stalled (--stall-timeout): the verdict.
    stalled: str | None = None

    @property
    def exit_code(self) -> int:
        """0 when every rank exited 0; else the first failure's code.

        A job stopped by ``--stall-timeout`` exits with ``STALL_EXIT_CODE`` (124,
        as ``timeout(1)``).

        A rank killed by signal N counts as ``128 + N``, as in a shell. If the
        launcher was interrupted and every rank still exited 0, the result is
        ``128 +`` the launcher's first signal.
        """
        if self.stalled is not None:
            return STALL_EXIT_CODE
        if self.first_failure is not None:
            code = self.first_failure.returncode
            return code if code > 0 else 128 - code
        if self.signals:
            return 128 + self.signals[0]
        return 0


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


def rank_environment(
    spec: JobSpec,
    rank: int,
    *,
    base: Mapping[str, str],
    hostfile: str,
    listen_fds: Iterable[int],
    token: str,
    job_id: str,
    mlx_hostfile: str,
    coordinator: str,
    supervisor: str,
) -> dict[str, str]:
    """The complete environment of one rank.

    Parameters
    ----------
    spec
        The job.
    rank
        This rank.
    base
        The environment to start from (the launcher's).
    hostfile
        ``CHORUS_HOSTFILE`` text (JSON, one list of "ip:port" per rank).
    listen_fds
        This rank's inherited listening sockets, as the rank sees them.
    token
        The job's shared secret.
    job_id
        The job's unique id.
    mlx_hostfile
        The path the rank reads MLX's hostfile at.
    coordinator
        ``CHORUS_COORDINATOR``: rank 0's first address.
    supervisor
        ``CHORUS_SUPERVISOR``: where the rank asks the launcher (or kernel)
        questions (:mod:`chorus.launch.questions`).

    Returns
    -------
    dict
        ``base`` plus the ``CHORUS_*``, ``MLX_*`` and ``PYTHONUNBUFFERED``
        variables, the BLAS/OpenMP thread counts of
        :func:`~chorus.launch.threads.thread_limits`, then ``spec.env``.
    """
    env = dict(base)
    env.update(
        {
            "CHORUS_RANK": str(rank),
            "CHORUS_WORLD_SIZE": str(spec.nprocs),
            "CHORUS_HOSTFILE": hostfile,
            "CHORUS_BACKEND": spec.backend,
            "CHORUS_TOKEN": token,
            "CHORUS_JOB_ID": job_id,
            "CHORUS_TIMEOUT": f"{spec.timeout:g}",
            "CHORUS_COORDINATOR": coordinator,
            "CHORUS_LISTEN_FDS": ",".join(str(fd) for fd in listen_fds),
            # SIGURG asks the rank where it is; it answers on stderr (chorus.where).
            "CHORUS_REPORTS": "stderr",
            "CHORUS_SUPERVISOR": supervisor,
            "MLX_RANK": str(rank),
            "MLX_WORLD_SIZE": str(spec.nprocs),
            "MLX_HOSTFILE": mlx_hostfile,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if spec.verbose:
        env["CHORUS_VERBOSE"] = "1"
    # Every rank of the job is on this host: each gets its share of the cores.
    env.update(thread_limits(spec.nprocs, usable_cores(), {**base, **spec.env}))
    env.update(spec.env)
    return env


class Job:
    """One launch: N local ranks from start to the last exit.

    Parameters
    ----------
    spec
        What to run.
    reporter
        Receives progress and failure messages.
    stdin_fd, stdout_fd, stderr_fd
        The launcher's standard streams (tests may pass others).
    """

    def __init__(
        self,
        spec: JobSpec,
        reporter: Reporter | None = None,
        *,
        stdin_fd: int = 0,
        stdout_fd: int = 1,
        stderr_fd: int = 2,
    ) -> None:
        self.spec = spec
        self.reporter: Reporter = reporter if reporter is not None else SilentReporter()
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.ranks: list[RankProcess] = []
        self.result = JobResult()
        self._started = False
        self._stopper: asyncio.Task[None] | None = None
        self._connections: list[Any] = []
        self._where = WhereCollector(spec.nprocs)
        self._reports: set[asyncio.Task[None]] = set()
        # The ranks' questions (chorus.debug.where()); its token is the job's.
        self._questions = QuestionServer(secrets.token_hex(16), self._where_answers)

    # -- set-up ------------------------------------------------------------

    def _mlx_hostfile(self, stack: contextlib.ExitStack, text: str) -> tuple[str, list[int]]:
        """MLX's hostfile as a path the ranks can open, and the fds to pass.

        On Linux it is a memfd inherited by every rank under the same number,
        so ``/proc/self/fd/N`` (read by the rank: *self* is the rank) names
        it. Elsewhere it is a temporary file removed when the job ends.
        """
        if hasattr(os, "memfd_create"):
            fd = memfd_hostfile(text, "chorus-mlx-hostfile")
            stack.callback(os.close, fd)
            return f"/proc/self/fd/{fd}", [fd]
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - removed by the stack
            "w", prefix="chorus-mlx-hostfile-", suffix=".json", delete=False
        )
        stack.callback(os.unlink, handle.name)
        with handle:
            handle.write(text)
        return handle.name, []

    def _build_ranks(self, stack: contextlib.ExitStack) -> None:
        spec = self.spec
        token = self._questions.token
        job_id = f"{os.getpid()}-{secrets.token_hex(4)}"  # random: nothing of the token
        self.reporter.progress(f"job {job_id}: {spec.nprocs} rank(s), backend {spec.backend}")

        listeners = listening_sockets(spec.nprocs)
        for sock in listeners:
            stack.callback(sock.close)
        addresses = [[f"{LOCALHOST}:{sock.getsockname()[1]}"] for sock in listeners]
        hostfile = hostfile_json(addresses)
        self.reporter.progress(f"listening for the ranks on {hostfile}")

        mlx_addresses = [[f"{LOCALHOST}:{port}"] for port in free_ports(spec.nprocs)]
        mlx_path, mlx_fds = self._mlx_hostfile(stack, hostfile_json(mlx_addresses))
        self.reporter.progress(f"MLX hostfile at {mlx_path}: {hostfile_json(mlx_addresses)}")

        base = dict(os.environ)
        for rank, sock in enumerate(listeners):
            listen_fds = [sock.fileno()]
            env = rank_environment(
                spec,
                rank,
                base=base,
                hostfile=hostfile,
                listen_fds=listen_fds,
                token=token,
                job_id=job_id,
                mlx_hostfile=mlx_path,
                coordinator=addresses[0][0],
                supervisor=self._questions.address,
            )
            self.ranks.append(
                LocalRank(rank, spec.argv, env, cwd=spec.cwd, pass_fds=[*listen_fds, *mlx_fds])
            )

    async def _build_remote_ranks(self, hostfile: Hostfile) -> None:
        """Connect to every host and run each rank's agent (see :func:`prepare_remote_ranks`)."""
        remote = await prepare_remote_ranks(self.spec, hostfile, self.reporter, self._questions)
        self._connections = remote.connections
        self.ranks.extend(remote.ranks)
        for rank, env in zip(remote.ranks, remote.envs, strict=True):
            rank.configure(env, remote.argv, remote.mlx_hostfile)

    async def _start_all(self) -> None:
        started = time.monotonic()
        self.reporter.progress(f"starting {self.spec.nprocs} rank(s): {' '.join(self.spec.argv)}")
        outcomes = await asyncio.gather(
            *(rank.start() for rank in self.ranks), return_exceptions=True
        )
        errors = [
            (rank, exc) for rank, exc in zip(self.ranks, outcomes, strict=True) if exc is not None
        ]
        if errors:
            rank, exc = errors[0]
            msg = f"cannot start rank {rank.rank} ({' '.join(self.spec.argv)}): {exc}"
            raise LaunchError(msg) from exc
        self._started = True
        where = ", ".join(rank.where for rank in self.ranks)
        self.reporter.progress(f"started in {time.monotonic() - started:.3f} s ({where})")

    # -- signals and teardown ------------------------------------------------

    def _running(self) -> list[RankProcess]:
        return [rank for rank in self.ranks if rank.returncode is None]

    def _signal_ranks(self, signum: int, ranks: Iterable[RankProcess] | None = None) -> None:
        for rank in self._running() if ranks is None else ranks:
            rank.send_signal(signum)

    def _on_signal(self, signum: int) -> None:
        """Forward a signal the launcher got; a second one kills every rank.

        A signal that arrives while the ranks are being started is recorded
        and delivered by :meth:`run` once all of them run.
        """
        self.result.signals.append(signum)
        if self._started:
            self._deliver(signum, first=len(self.result.signals) == 1)

    def _deliver(self, signum: int, *, first: bool) -> None:
        name = signal.Signals(signum).name
        if not first:
            self.reporter.progress(f"received {name} again: killing all ranks")
            self._signal_ranks(signal.SIGKILL)
            return
        self.reporter.progress(f"received {name}: forwarding it to every rank")
        self._signal_ranks(signum)
        if signum != signal.SIGINT:
            # SIGTERM/SIGHUP mean "stop": do not wait for the ranks forever.
            self._start_stopping()

    # -- where is every rank ---------------------------------------------------

    def _exited(self) -> dict[int, str]:
        return {e.rank: e.ending() for e in self.result.exits}

    async def where(self) -> Report:
        """Ask every running rank where it is and merge the answers."""
        return await self._where.report(self.ranks, self._exited())

    async def _where_answers(self) -> WhereAnswers:
        return await self._where.answers(self.ranks, self._exited())

    def _on_quit(self) -> None:
        if not self._started:
            return
        task = asyncio.get_running_loop().create_task(self._print_where("SIGQUIT"))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _print_where(self, why: str) -> None:
        report = await self.where()
        self.reporter.event(f"where is every rank ({why}):\n{report.text()}")

    async def _watch_stalls(self) -> None:
        """Ask every few seconds; report (and with --stall-timeout stop) a stall once."""
        limits = [t for t in (self.spec.stall_report, self.spec.stall_timeout) if t is not None]
        every = max(0.5, min(2.0, min(limits) / 4))
        reported: set[tuple[object, ...]] = set()
        while True:
            await asyncio.sleep(every)
            report = await self.where()
            key = stall_key(report)
            if key is None:
                continue
            waited = longest_wait(report)
            timeout = self.spec.stall_timeout
            if timeout is not None and waited >= timeout:
                self.result.stalled = report.verdict.text
                self.reporter.event(
                    f"the job stalled for {waited:.0f} s (--stall-timeout {timeout:g}); "
                    f"stopping it:\n{report.text()}"
                )
                self._signal_ranks(signal.SIGTERM)
                self._start_stopping()
                return
            limit = self.spec.stall_report
            if limit is not None and waited >= limit and key not in reported:
                reported.add(key)
                self.reporter.event(
                    f"the job looks stalled ({waited:.0f} s; --stall-report {limit:g}):\n"
                    f"{report.text()}"
                )

    def _start_stopping(self) -> None:
        if self._stopper is None:
            self._stopper = asyncio.get_running_loop().create_task(self._stop_remaining())

    async def _all_exited(self, timeout: float) -> bool:
        running = self._running()
        if not running:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(rank.wait() for rank in running))
        except TimeoutError:
            return False
        return True

    async def _stop_remaining(self) -> None:
        """Stop the ranks that still run after one failed or a stop signal.

        1. Wait up to ``spec.grace`` seconds for them to exit by themselves
           (a rank whose peer died usually raises soon).
        2. Send SIGTERM to the process group of each rank still running.
        3. Wait up to ``spec.term_timeout`` seconds.
        4. Send SIGKILL to each remaining group; reaping happens in the
           supervision loop.
        """
        if await self._all_exited(self.spec.grace):
            return
        running = self._running()
        self.reporter.event(
            f"stopping rank(s) {_rank_list(running)} with SIGTERM after a grace of {self.spec.grace:g} s"
        )
        self._signal_ranks(signal.SIGTERM, running)
        if await self._all_exited(self.spec.term_timeout):
            return
        running = self._running()
        self.reporter.event(f"killing rank(s) {_rank_list(running)} with SIGKILL")
        self._signal_ranks(signal.SIGKILL, running)

    # -- supervision ---------------------------------------------------------

    def _on_exit(self, rank: RankProcess, returncode: int) -> None:
        exit_ = RankExit(rank.rank, returncode, rank.host, lost=rank.lost)
        self.result.exits.append(exit_)
        if returncode == 0:
            self.reporter.progress(exit_.describe())
            return
        if self.result.first_failure is None:
            self.result.first_failure = exit_
            self.reporter.event(exit_.describe())
            self._start_stopping()
        else:
            self.reporter.progress(exit_.describe())

    async def _watch(self, rank: RankProcess, pumps: Sequence[asyncio.Task[None]]) -> None:
        returncode = await rank.wait()
        # Let the rank's last words (a traceback) out before saying it failed.
        await asyncio.wait(pumps, timeout=OUTPUT_DRAIN_TIMEOUT)
        self._on_exit(rank, returncode)

    async def _supervise(self) -> None:
        prefix = self.spec.prefix
        stdout = OutputSink(self.stdout_fd)
        stderr = OutputSink(self.stderr_fd)
        pumps: list[asyncio.Task[None]] = []
        watchers: list[asyncio.Task[None]] = []
        for rank in self.ranks:
            label = f"[{rank.rank}] ".encode() if prefix else b""
            answers = self._where.on_answer(rank.rank)
            rank_pumps = [
                asyncio.create_task(pump_output(rank.stdout, stdout, label)),
                asyncio.create_task(
                    pump_output(rank.stderr, stderr, label, marker=SNAPSHOT_MARKER, divert=answers)
                ),
            ]
            pumps += rank_pumps
            watchers.append(asyncio.create_task(self._watch(rank, rank_pumps)))
        stdin = asyncio.create_task(
            broadcast_stdin(self.stdin_fd, [rank.stdin for rank in self.ranks], (stdout, stderr))
        )
        watch = None
        if self.spec.stall_report is not None or self.spec.stall_timeout is not None:
            watch = asyncio.create_task(self._watch_stalls())
        try:
            await asyncio.gather(*watchers)
        finally:
            if watch is not None:
                watch.cancel()
            for report in self._reports:
                report.cancel()
            stdin.cancel()
            for rank in self.ranks:
                rank.cleanup()
            _, late = await asyncio.wait(pumps, timeout=OUTPUT_DRAIN_TIMEOUT)
            for task in (*late, *watchers):
                task.cancel()
            if self._stopper is not None:
                self._stopper.cancel()
            await asyncio.gather(stdin, *pumps, *watchers, return_exceptions=True)
            if self._stopper is not None:
                await asyncio.gather(self._stopper, return_exceptions=True)

    async def run(self) -> JobResult:
        """Run the job to the end and say how it ended.

        Steps: build addresses and environments; install signal handlers;
        start every rank concurrently; close the launcher's copies of the
        inherited fds; supervise (output, stdin, exits, teardown); finally
        kill anything left in the ranks' process groups.

        Returns
        -------
        JobResult
            Exit statuses, the first failure and the signals received.

        Raises
        ------
        LaunchError
            If the ranks cannot be set up or started (nothing is left running).
        """
        _open_standard_fds()
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        try:
            await self._questions.start()
            with contextlib.ExitStack() as inherited:
                if self.spec.hosts is not None:
                    await self._build_remote_ranks(self.spec.hosts)
                else:
                    try:
                        self._build_ranks(inherited)
                    except OSError as exc:
                        msg = f"cannot set up the ranks' addresses: {exc}"
                        raise LaunchError(msg) from exc
                for signum in FORWARDED_SIGNALS:
                    with contextlib.suppress(ValueError, RuntimeError):
                        # Not the main thread, or no such signal: no forwarding.
                        loop.add_signal_handler(signum, self._on_signal, signum)
                        installed.append(signum)
                with contextlib.suppress(ValueError, RuntimeError):
                    # Ctrl-\: where is every rank (the job goes on).
                    loop.add_signal_handler(signal.SIGQUIT, self._on_quit)
                    installed.append(signal.SIGQUIT)
                await self._start_all()
            # The ranks own their sockets and the hostfile memfd now.
            for index, early in enumerate(self.result.signals[:2]):
                # Signals that arrived while the ranks were starting.
                self._deliver(early, first=index == 0)
            await self._supervise()
        finally:
            for installed_signum in installed:
                loop.remove_signal_handler(installed_signum)
            if not self._started:
                await self._abort_start()
            self._questions.close()
            for connection in self._connections:
                connection.close()
        return self.result

    async def _abort_start(self) -> None:
        for rank in self.ranks:
            rank.cleanup()
        started = [rank for rank in self.ranks if rank.started]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_TIMEOUT):
                await asyncio.gather(*(rank.wait() for rank in started), return_exceptions=True)


def _open_standard_fds() -> None:
    """Put ``/dev/null`` on fds 0, 1 and 2 where they are closed.

    Otherwise the first pipe or socket we create would take a closed
    standard fd's number, and we would read our own rank's pipe as stdin.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


@dataclass
class RemoteRanks:
    """Ranks whose agents run and hold their sockets, ready to be configured and started."""

    ranks: list[SshRank]
    connections: list[Any]
    envs: list[dict[str, str]]
    argv: list[str]
    mlx_hostfile: str
    addresses: list[list[str]]

    def close(self) -> None:
        """Close every ssh connection (each agent then stops its rank)."""
        for connection in self.connections:
            connection.close()


async def _with_status(reporter: Reporter, what: str, steps: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``steps`` concurrently with a live "what: k/n ready" status line."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        pending: set[asyncio.Future[T]] = set(tasks)
        while pending:
            _, pending = await asyncio.wait(
                pending, timeout=0.5, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            reporter.status(f"{what}: {len(tasks) - len(pending)}/{len(tasks)} ready")
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        reporter.status("")


async def prepare_remote_ranks(
    spec: JobSpec,
    hostfile: Hostfile,
    reporter: Reporter,
    questions: QuestionServer,
    *,
    free_ports: int = 0,
) -> RemoteRanks:
    """Connect to every host, run each rank's agent, learn every address.

    Nothing runs the user's program yet: each agent has bound its rank's
    listening sockets, so the hostfile every rank gets is complete and no
    port can be taken in between. ``free_ports`` more ports per rank are
    reported (the kernel's ZMQ ports). ``questions`` answers the ranks (its
    token is the job's; each connection forwards a port on its host back to
    it). On failure every connection is closed.

    Raises
    ------
    LaunchError
        A host cannot be reached or cannot run its rank; the message names it.
    """
    from chorus.launch.remote import AgentError, SshRank
    from chorus.launch.ssh import SshError, connect_all

    token = questions.token
    job_id = f"{os.getpid()}-{secrets.token_hex(4)}"  # random: nothing of the token
    reporter.progress(f"job {job_id}: {spec.nprocs} rank(s) on {describe(hostfile.hosts)}")
    try:
        connections = await connect_all(
            _connection_slots(hostfile),
            accept_new_host_keys=spec.accept_new_host_keys,
            progress=reporter.status,
        )
    except SshError as exc:
        raise LaunchError(str(exc)) from exc
    finally:
        reporter.status("")
    try:
        python = spec.python or sys.executable
        argv = [python if arg == sys.executable else arg for arg in spec.argv[:1]]
        argv += spec.argv[1:]
        runs_python = argv[0] == python
        script = argv[1] if runs_python and len(argv) > 1 else ""
        check_paths = [script] if script.startswith("/") else []
        slot_of = _slot_indices(hostfile)
        ranks = []
        for index, entry in enumerate(hostfile.hosts):
            connection = connections[slot_of[index]]
            peer = connection.get_extra_info("peername")[0]
            bind = list(entry.ips) or ["0.0.0.0"]
            advertise = list(entry.ips) or [peer]
            ranks.append(
                SshRank(index, entry.ssh, connection, python=python, bind=bind, advertise=advertise)
            )
        per_host = Counter(entry.ssh for entry in hostfile.hosts)
        for rank in ranks:
            rank.ranks_on_host = per_host[rank.host]
        cwd = spec.cwd or str(Path.cwd())
        steps = [
            rank.prepare(
                cwd=cwd, check_paths=check_paths, need_chorus=runs_python, free_ports=free_ports
            )
            for rank in ranks
        ]
        try:
            prepared = await _with_status(reporter, "starting agents", steps)
        except AgentError as exc:
            raise LaunchError(str(exc)) from exc
        supervisors = [await questions.address_over(r.connection, r.host) for r in ranks]
    except BaseException:
        for connection in connections:
            connection.close()
        raise
    addresses = [p.addresses for p in prepared]
    hostfile_text = hostfile_json(addresses)
    reporter.progress(f"ranks listen on {hostfile_text}")
    envs = []
    for rank, supervisor in zip(ranks, supervisors, strict=True):
        env = rank_environment(
            spec,
            rank.rank,
            base={},
            hostfile=hostfile_text,
            listen_fds=[],
            token=token,
            job_id=job_id,
            mlx_hostfile="",
            coordinator=addresses[0][0],
            supervisor=supervisor,
        )
        env.update(hostfile.envs)
        env.update(spec.env)
        envs.append(env)
    mlx_text = hostfile_json([p.mlx_addresses[:1] for p in prepared])
    return RemoteRanks(ranks, connections, envs, argv, mlx_text, addresses)


def _slot_indices(hostfile: Hostfile) -> list[int]:
    """For each rank, the index of its ssh connection in :func:`_connection_slots`."""
    slots: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = {}
    indices = []
    for entry in hostfile.hosts:
        nth = seen.get(entry.ssh, 0)
        seen[entry.ssh] = nth + 1
        key = (entry.ssh, nth // RANKS_PER_CONNECTION)
        indices.append(slots.setdefault(key, len(slots)))
    return indices


def _connection_slots(hostfile: Hostfile) -> list[str]:
    """The host of each ssh connection to open (a host with many ranks gets several)."""
    names: dict[int, str] = {}
    for entry, index in zip(hostfile.hosts, _slot_indices(hostfile), strict=True):
        names[index] = entry.ssh
    return [names[index] for index in range(len(names))]


def _rank_list(ranks: Iterable[RankProcess]) -> str:
    return ", ".join(str(rank.rank) for rank in ranks)


def launch(spec: JobSpec, reporter: Reporter | None = None) -> JobResult:
    """Run ``spec`` to the end from synchronous code (the CLI's entry point).

    Parameters
    ----------
    spec
        What to run.
    reporter
        Receives progress and failure messages.

    Returns
    -------
    JobResult
        How the job ended; ``exit_code`` is what the launcher should exit with.

    Raises
    ------
    LaunchError
        If the job cannot start.
    """
    return asyncio.run(Job(spec, reporter).run())
