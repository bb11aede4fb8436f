"""Run one job: start its ranks, watch them, tear them down.

The pieces, in the order :meth:`Job.run` uses them:

1. placement (:mod:`chorus.launch.placement`): each rank's addresses,
   inherited sockets (or its agent on another host) and environment;
2. the question port the ranks ask "where is every rank?" on
   (:mod:`chorus.launch.questions`);
3. the ranks themselves (:class:`~chorus.launch.process.LocalRank`, or
   :class:`~chorus.launch.remote.SshRank` over ssh), started concurrently;
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
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chorus.launch.io import OutputSink, broadcast_stdin, pump_output
from chorus.launch.placement import Placement, new_job, place_local, place_remote
from chorus.launch.process import LocalRank, RankProcess, describe_exit
from chorus.launch.questions import QuestionServer
from chorus.launch.spec import JobSpec, LaunchError
from chorus.launch.stall import WhereCollector, longest_wait, stall_key
from chorus.reporter import Reporter, SilentReporter
from chorus.together import run_together
from chorus.where import SNAPSHOT_MARKER, Report, WhereAnswers

if TYPE_CHECKING:
    from chorus.hostfile import Hostfile

__all__ = ["STALL_EXIT_CODE", "Job", "JobResult", "RankExit", "launch"]

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long a rank's last output may take to arrive after it exited (a process
# it started may still hold the pipe open).
OUTPUT_DRAIN_TIMEOUT = 0.5
# How long reaping may take after SIGKILL before we give up waiting.
KILL_TIMEOUT = 5.0


# Exit status of a job stopped by --stall-timeout (as timeout(1) uses).
STALL_EXIT_CODE = 124


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
        self.identity = new_job()
        self._placement: Placement | None = None
        self._where = WhereCollector(spec.nprocs)
        self._reports: set[asyncio.Task[None]] = set()
        # The ranks' questions (chorus.debug.where()); its token is the job's.
        self._questions = QuestionServer(self.identity.token, self._where_answers)

    # -- set-up ------------------------------------------------------------

    def _build_ranks(self) -> None:
        spec = self.spec
        self.reporter.progress(
            f"job {self.identity.job_id}: {spec.nprocs} rank(s), backend {spec.backend}"
        )
        placement = place_local(
            spec,
            self.identity,
            supervisor=self._questions.address,
            base=dict(os.environ),
            reporter=self.reporter,
        )
        self._placement = placement
        for rank, (env, fds) in enumerate(zip(placement.envs, placement.pass_fds, strict=True)):
            self.ranks.append(LocalRank(rank, spec.argv, env, cwd=spec.cwd, pass_fds=fds))

    async def _build_remote_ranks(self, hostfile: Hostfile) -> None:
        """Connect to every host and run each rank's agent (see :func:`place_remote`)."""
        placement = await place_remote(
            self.spec, hostfile, self.identity, self._questions, self.reporter
        )
        self._placement = placement
        self.ranks.extend(placement.remote)
        for rank, env in zip(placement.remote, placement.envs, strict=True):
            rank.configure(env, placement.argv, placement.mlx_hostfile)

    async def _start_all(self) -> None:
        started = time.monotonic()
        self.reporter.progress(f"starting {self.spec.nprocs} rank(s): {' '.join(self.spec.argv)}")

        async def start(rank: RankProcess) -> None:
            try:
                await rank.start()
            except Exception as exc:
                msg = f"cannot start rank {rank.rank} ({' '.join(self.spec.argv)}): {exc}"
                raise LaunchError(msg) from exc

        # Every start settles first: each process started must be known to be stopped.
        await run_together([start(rank) for rank in self.ranks], settle=True)
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
            try:
                if self.spec.hosts is not None:
                    await self._build_remote_ranks(self.spec.hosts)
                else:
                    try:
                        self._build_ranks()
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
            finally:
                # The ranks own their sockets and the hostfile memfd now.
                if self._placement is not None:
                    self._placement.close_inherited()
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
            if self._placement is not None:
                self._placement.close()
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
    if spec.backend == "mpi":
        msg = "mpirun starts MPI ranks: use chorus.launch.mpi_job.launch_mpirun"
        raise LaunchError(msg)
    return asyncio.run(Job(spec, reporter).run())
