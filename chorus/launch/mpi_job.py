"""``chorus launch --backend mpi``: the job handed to Open MPI's mpirun, watched like our own.

Only mpirun can start MPI ranks, so it places and starts them; this module
builds its command (:func:`~chorus.launch.mpirun.mpirun_command`) from the
same :class:`~chorus.launch.spec.JobSpec` as a chorus job, and then does what
the launcher does for its own ranks: relabels each output line ``[rank]``
(:class:`~chorus.launch.mpi_output.TagRelabeler` on mpirun's tags), writes it
through an :class:`~chorus.launch.io.OutputSink`, and passes SIGINT, SIGTERM
and SIGHUP on to mpirun. mpirun's exit status and its teardown (a failing
rank or Ctrl-C stops every rank) are the job's. stdin goes to rank 0 only:
Open MPI 4.1's ``--stdin all`` loses input (measured here), so we keep its
default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from chorus.env import RankEnv
from chorus.launch.io import READ_SIZE, OutputSink
from chorus.launch.mpi_output import TagRelabeler
from chorus.launch.mpirun import MpirunError, mpirun_command
from chorus.launch.ports import LOCALHOST, reserved_ports
from chorus.launch.spec import JobSpec, LaunchError
from chorus.reporter import Reporter

__all__ = ["launch_mpirun", "mpirun_environment"]

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long output may take to arrive after mpirun exited.
OUTPUT_DRAIN_TIMEOUT = 5.0


def mpirun_environment(spec: JobSpec) -> dict[str, str]:
    """What mpirun exports to every rank (it sets rank and size itself).

    A job on this host also gets torch's ``MASTER_ADDR``/``MASTER_PORT`` (a
    port reserved here; the ranks write the rest of torchrun's variables
    from Open MPI's, :mod:`chorus.startup`), unless they are set already.
    """
    rank_env = RankEnv(backend="mpi", timeout=spec.timeout, verbose=spec.verbose)
    env = {**rank_env.to_environ(with_rank=False), "PYTHONUNBUFFERED": "1"}
    if spec.hosts is None and "MASTER_ADDR" not in os.environ and "MASTER_PORT" not in os.environ:
        (port,) = reserved_ports(1)
        env.update({"MASTER_ADDR": LOCALHOST, "MASTER_PORT": str(port)})
    return {**env, **spec.env}


async def _relabel(stream: asyncio.StreamReader, sink: OutputSink, prefix: bool) -> None:
    relabeler = TagRelabeler(lambda data: sink.write(None, b"", data), prefix=prefix)
    while chunk := await stream.read(READ_SIZE):
        relabeler.feed(chunk)
    relabeler.close()


async def run_mpirun(
    spec: JobSpec, reporter: Reporter, *, stdout_fd: int = 1, stderr_fd: int = 2
) -> int:
    """Run the job under mpirun to the end; its exit status (``128 + N`` for signal N).

    Raises
    ------
    LaunchError
        mpirun is missing, is not Open MPI, or cannot take this job.
    """
    if spec.stall_report is not None or spec.stall_timeout is not None:
        msg = (
            "--stall-report and --stall-timeout watch chorus's own ranks; under mpirun"
            " (--backend mpi) nothing can ask the ranks where they are"
        )
        raise LaunchError(msg)
    env = mpirun_environment(spec)
    hostnames = None if spec.hosts is None else [entry.ssh for entry in spec.hosts.hosts]
    try:
        command = mpirun_command(spec.nprocs, spec.argv, hosts=hostnames, env=env, tag_output=True)
    except (MpirunError, ValueError) as exc:
        raise LaunchError(str(exc)) from None
    if spec.cwd is not None:
        command[1:1] = ["--wdir", spec.cwd]
    reporter.progress("running " + " ".join(command))
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # our handlers decide what reaches mpirun
    )
    assert process.stdout is not None
    assert process.stderr is not None

    def forward(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    loop = asyncio.get_running_loop()
    installed = []
    pumps = [
        asyncio.create_task(_relabel(process.stdout, OutputSink(stdout_fd), spec.prefix)),
        asyncio.create_task(_relabel(process.stderr, OutputSink(stderr_fd), spec.prefix)),
    ]
    try:
        for signum in FORWARDED_SIGNALS:
            with contextlib.suppress(ValueError, RuntimeError):
                # Not the main thread: no forwarding.
                loop.add_signal_handler(signum, forward, signum)
                installed.append(signum)
        code = await process.wait()
        # The ranks' last words; a process they left may hold the pipes open.
        await asyncio.wait(pumps, timeout=OUTPUT_DRAIN_TIMEOUT)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        if process.returncode is None:
            forward(signal.SIGKILL)
            await process.wait()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    return code if code >= 0 else 128 - code


def launch_mpirun(spec: JobSpec, reporter: Reporter) -> int:
    """:func:`run_mpirun` from synchronous code (the CLI's entry point)."""
    return asyncio.run(run_mpirun(spec, reporter))
