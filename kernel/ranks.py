"""N rank kernels behind one chorus kernel (or behind the %chorus magics).

:class:`RankSet` starts one IPython kernel per rank as a fresh process (never
a fork of the running kernel: a forked child's ``input()`` hangs), each in its
own session so that the frontend's interrupt reaches only the chorus kernel,
which forwards it deliberately. Every rank gets the environment
``chorus launch`` gives its ranks (placed by :mod:`chorus.launch.placement`),
so ``chorus.init()`` in a cell connects them. Each rank is an ordinary
jupyter_client kernel manager; where it runs, here or on another host, is
its provisioner's business (:mod:`chorus.kernel.provisioning`).

Each rank's iopub and stdin channels are read by one task that hands messages
to whoever runs the current request (:class:`RankListener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chorus.kernel.provisioning import (
    RANK_ARGV,
    RankKernelManager,
    SocketDir,
    local_rank_manager,
    remote_rank_manager,
)
from chorus.kernel.rank import EXECUTION_COUNT_KEY
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_core.paths import jupyter_runtime_dir

from chorus.launch.placement import JobIdentity, Placement, new_job, place_local
from chorus.launch.process import describe_exit
from chorus.launch.questions import QuestionServer
from chorus.launch.spec import JobSpec
from chorus.reporter import SilentReporter
from chorus.together import run_together
from chorus.where import Report, WhereAnswers, merge_answers

if TYPE_CHECKING:
    from chorus.hostfile import Hostfile

Message = dict[str, Any]
# Called with (rank, message) for every iopub or stdin message of a rank.
Listener = Callable[[int, Message], None]

# Seconds a rank kernel may take to start and answer kernel_info.
START_TIMEOUT = 60.0
# How long the next cell waits for the last interrupt to reach remote ranks:
# a host that does not answer must not hold every later cell.
INTERRUPT_DELIVERY_WAIT = 5.0


class _SayReporter:
    """The launcher's Reporter, told through the kernel's progress callback."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def progress(self, message: str) -> None:
        self.say(message)

    def event(self, message: str) -> None:
        self.say(message)

    def status(self, line: str) -> None:
        if line:
            self.say(line)


@dataclass
class Rank:
    """One rank kernel: its manager (whose provisioner knows where it runs), client, readers."""

    rank: int
    manager: RankKernelManager
    env: dict[str, str]
    pass_fds: list[int] = field(default_factory=list)
    client: AsyncKernelClient | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    exit_reported: bool = False

    @property
    def host(self) -> str:
        return self.manager.rank_provisioner.host

    @property
    def pid(self) -> int | None:
        """The local kernel's pid, or the pid of the rank's agent on its host."""
        return self.manager.rank_provisioner.rank_pid

    def alive(self) -> bool:
        return self.exit_code() is None

    def exit_code(self) -> int | None:
        return self.manager.rank_provisioner.exit_code()

    def interrupt(self) -> None:
        """SIGINT to the rank's process group (it leads its own session), here or remote."""
        self.manager.rank_provisioner.signal_now(signal.SIGINT)


class RankSet:
    """Start, talk to, interrupt and stop N rank kernels.

    Parameters
    ----------
    size
        Number of ranks.
    backend
        ``CHORUS_BACKEND`` of the ranks (``"shm"`` by default on one host).
    env
        Extra environment for every rank.
    cwd
        Working directory of the ranks.
    timeout
        ``CHORUS_TIMEOUT`` of the ranks.
    hosts
        Run rank ``i`` on ``hosts.hosts[i]`` over ssh (the launcher's agents);
        ``size`` is then the number of entries.
    python
        The interpreter on remote hosts (default: this one's path).
    listener
        Called with ``(rank, message)`` for every iopub and stdin message.
    """

    def __init__(
        self,
        size: int,
        backend: str = "shm",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 60.0,
        hosts: Hostfile | None = None,
        python: str | None = None,
        listener: Listener | None = None,
    ) -> None:
        if hosts is not None:
            size = len(hosts.hosts)
        self.size = size
        self.backend = backend
        self.hosts = hosts
        self.python = python
        self._remote: Placement | None = None
        self.extra_env = dict(env or {})
        self.cwd = cwd
        self.timeout = timeout
        self.ranks: list[Rank] = []
        # Every iopub and stdin message of a rank goes here (the Engine's).
        self.listener = listener
        self._waiters: dict[str, asyncio.Future[Message]] = {}
        # The ranks' questions (chorus.debug.where() in a cell); its token is the job's.
        self._questions: QuestionServer | None = None
        # Where local rank kernels' unix sockets live.
        self._sockets: SocketDir | None = None
        # Ranks held by a debugger, with where they are: not asked where they are.
        self.held: Callable[[], dict[int, str]] = dict

    # -- lifecycle -------------------------------------------------------------

    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Start every rank kernel concurrently and wait until all answer.

        Raises
        ------
        RuntimeError
            A rank did not start within :data:`START_TIMEOUT`; the ones that
            did are shut down again.
        """
        say = progress or (lambda _message: None)
        identity = new_job("k")
        questions = QuestionServer(identity.token, self.where_answers)
        self._questions = questions
        try:
            await questions.start()
            if self.hosts is not None:
                await self._start_remote(self.hosts, say, identity, questions)
            else:
                await self._start_local(say, identity, questions)
        except BaseException:
            # Placement failed before any rank ran (a failed rank start has
            # shut down already): the question port must not outlive it.
            questions.close()
            self._questions = None
            self._remove_sockets()
            raise

    async def _start_local(
        self, say: Callable[[str], None], identity: JobIdentity, questions: QuestionServer
    ) -> None:
        """Rank kernels on this host, placed by :func:`~chorus.launch.placement.place_local`."""
        spec = JobSpec(
            argv=tuple(RANK_ARGV),
            nprocs=self.size,
            backend=self.backend,
            env=self.extra_env,
            cwd=self.cwd,
            timeout=self.timeout,
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CHORUS_", "MLX_"))}
        placement = place_local(
            spec,
            identity,
            supervisor=questions.address,
            base=base,
            reporter=SilentReporter(),
        )
        try:
            sockets = self._sockets = SocketDir(identity.job_id)
            for rank, (env, fds) in enumerate(zip(placement.envs, placement.pass_fds, strict=True)):
                manager = local_rank_manager(sockets, rank)
                self.ranks.append(Rank(rank, manager, env, pass_fds=fds))
            say(f"starting {self.size} rank kernels (backend {self.backend})")
            await self._start_all()
        finally:
            # The ranks own their sockets and MLX's hostfile now.
            placement.close_inherited()
        say(f"{self.size} rank kernels ready")

    async def _start_remote(
        self,
        hosts: Hostfile,
        say: Callable[[str], None],
        identity: JobIdentity,
        questions: QuestionServer,
    ) -> None:
        """Rank kernels on other hosts, each run by its agent (:class:`SshRankProvisioner`).

        :func:`~chorus.launch.placement.place_remote` has each agent bind the
        rank's chorus sockets and report five free ports for ZMQ there.
        """
        from chorus.launch.placement import place_remote
        from chorus.launch.spec import LaunchError

        spec = JobSpec(
            argv=tuple(RANK_ARGV[:3]),
            nprocs=self.size,
            backend=self.backend,
            env=self.extra_env,
            cwd=self.cwd,
            timeout=self.timeout,
            hosts=hosts,
            python=self.python,
        )
        say(f"starting {self.size} rank kernels on {', '.join(hosts.distinct_hosts)}")
        try:
            remote = await place_remote(
                spec, hosts, identity, questions, _SayReporter(say), free_ports=5
            )
        except LaunchError as exc:
            raise RuntimeError(str(exc)) from exc
        self._remote = remote
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        for agent, env in zip(remote.remote, remote.envs, strict=True):
            connection_file = str(runtime / f"chorus-{identity.job_id}-rank-{agent.rank}.json")
            manager = remote_rank_manager(agent, remote.argv, remote.mlx_hostfile, connection_file)
            self.ranks.append(Rank(agent.rank, manager, env))
        await self._start_all()
        say(f"{self.size} rank kernels ready")

    async def _start_all(self) -> None:
        """Start every rank kernel; if one fails, all are stopped and its failure raised."""

        async def start(rank: Rank) -> None:
            try:
                await self._start_one(rank)
            except Exception as exc:
                where = "" if self._remote is None else f" on {rank.host}"
                msg = f"rank {rank.rank} kernel{where} did not start: {exc}"
                raise RuntimeError(msg) from exc

        try:
            # Every start settles first: each kernel started must be known to be stopped.
            await run_together([start(rank) for rank in self.ranks], settle=True)
        except BaseException:
            await self.shutdown()
            raise

    async def _start_one(self, rank: Rank) -> None:
        await rank.manager.start_kernel(env=rank.env, cwd=self.cwd, pass_fds=rank.pass_fds)
        client = rank.manager.client()
        client.start_channels()
        await asyncio.wait_for(client.wait_for_ready(timeout=START_TIMEOUT), START_TIMEOUT + 5)
        await self._wait_iopub_subscribed(rank, client)
        rank.client = client
        rank.tasks = [
            asyncio.create_task(self._pump(rank, client.get_iopub_msg, self._to_listener)),
            asyncio.create_task(self._pump(rank, client.get_stdin_msg, self._to_listener)),
            asyncio.create_task(self._pump(rank, client.get_shell_msg, self._to_waiter)),
            asyncio.create_task(self._pump(rank, client.get_control_msg, self._to_waiter)),
        ]

    async def _wait_iopub_subscribed(self, rank: Rank, client: AsyncKernelClient) -> None:
        """Return once this rank's iopub messages reach us, with the kernel idle again.

        A shell reply proves the kernel runs, not that our iopub subscription
        has reached its publisher: ZMQ drops what a PUB socket sends before
        the subscription arrives, and over TCP with CurveZMQ to a busy host
        that can take longer than a shell round trip. A cell run then would
        lose its output and its idle status, and wait forever. Every
        kernel_info request makes the kernel publish busy, then idle; ask
        until an idle of ours arrives, then collect that request's shell
        reply, so that no request of ours is still in flight when the first
        cell is sent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        asked: list[str] = []
        answered = ""
        while not answered:
            if not rank.alive():
                msg = f"it exited ({rank.exit_code()}) before its output could be read"
                raise RuntimeError(msg)
            if loop.time() > deadline:
                msg = f"its output did not reach the chorus kernel within {START_TIMEOUT:g} s"
                raise RuntimeError(msg)
            asked.append(client.kernel_info())
            end = loop.time() + 0.5
            while not answered and (left := end - loop.time()) > 0:
                try:
                    message = await asyncio.wait_for(client.get_iopub_msg(), left)
                except TimeoutError:
                    break
                parent = message.get("parent_header", {}).get("msg_id")
                content = message.get("content", {})
                if parent in asked and content.get("execution_state") == "idle":
                    answered = parent
        # Every request asked so far was handled before that idle: its replies
        # are on their way. Take them off the shell socket (the first cell's
        # reply must be the first thing the shell reader sees of this rank).
        waiting = set(asked)
        while waiting and loop.time() < deadline:
            try:
                reply = await asyncio.wait_for(client.get_shell_msg(), deadline - loop.time())
            except TimeoutError:
                break
            waiting.discard(reply.get("parent_header", {}).get("msg_id", ""))

    async def _pump(
        self,
        rank: Rank,
        get: Callable[[], Awaitable[Message]],
        deliver: Callable[[int, Message], None],
    ) -> None:
        while rank.client is not None:
            try:
                message = await get()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a channel closing during shutdown
                await asyncio.sleep(0.05)
                continue
            deliver(rank.rank, message)

    def _to_listener(self, rank: int, message: Message) -> None:
        if self.listener is not None:
            self.listener(rank, message)

    def _to_waiter(self, rank: int, message: Message) -> None:
        parent_id = message.get("parent_header", {}).get("msg_id")
        waiter = self._waiters.pop(parent_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def expect_reply(self, msg_id: str) -> asyncio.Future[Message]:
        """A future for the shell reply to request ``msg_id`` (register before awaiting)."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters[msg_id] = future
        return future

    def forget_reply(self, msg_id: str) -> None:
        """Stop waiting for ``msg_id`` (its rank died or the request was abandoned)."""
        waiter = self._waiters.pop(msg_id, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def shutdown(self, restart: bool = False) -> None:
        """Stop every rank: ask nicely, then SIGTERM, then SIGKILL.

        1. cancel the channel readers;
        2. ``shutdown_kernel(now=False)``: a shutdown_request, then jupyter_client's
           own wait / SIGTERM / SIGKILL escalation, under a deadline; the
           provisioner's clean-up kills what is left of the rank's group;
        3. close the ssh connections of remote ranks.
        """
        for rank in self.ranks:
            for task in rank.tasks:
                task.cancel()
            if rank.client is not None:
                rank.client.stop_channels()
                rank.client = None

        async def stop(rank: Rank) -> None:
            try:
                await asyncio.wait_for(rank.manager.shutdown_kernel(now=False), 10)
            except Exception:  # noqa: BLE001 - stopping what is left, whatever state it is in
                rank.manager.rank_provisioner.signal_now(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await rank.manager.cleanup_resources()

        await asyncio.gather(*(stop(r) for r in self.ranks))
        if self._remote is not None:
            await asyncio.sleep(0)  # the agents' last kill requests go out first
            self._remote.close()
            self._remote = None
        self.ranks = []
        if self._questions is not None:
            self._questions.close()
            self._questions = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        if self._sockets is not None:
            self._sockets.remove()
            self._sockets = None

    # -- requests --------------------------------------------------------------

    def client(self, rank: int) -> AsyncKernelClient:
        client = self.ranks[rank].client
        if client is None:
            msg = f"rank {rank} is not running"
            raise RuntimeError(msg)
        return client

    def execute(
        self,
        rank: int,
        code: str,
        *,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, Any],
        allow_stdin: bool,
        execution_count: int | None = None,
    ) -> str:
        """Send an execute_request to ``rank``; returns its msg_id.

        ``execution_count`` travels in the request's metadata: the rank runs
        the cell under the number the frontend shows (``kernel/rank.py``).
        """
        client = self.client(rank)
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions,
            "allow_stdin": allow_stdin,
            "stop_on_error": True,
        }
        metadata = {} if execution_count is None else {EXECUTION_COUNT_KEY: execution_count}
        message = client.session.msg("execute_request", content, metadata=metadata)
        client.shell_channel.send(message)
        return str(message["header"]["msg_id"])

    def send_shell(
        self,
        rank: int,
        msg_type: str,
        content: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
    ) -> str:
        """Send a shell message (a comm's, with its binary buffers) to ``rank``; its msg_id."""
        client = self.client(rank)
        message = client.session.msg(msg_type, content, metadata=metadata or {})
        client.session.send(client.shell_channel.socket, message, buffers=list(buffers))
        return str(message["header"]["msg_id"])

    async def where(self, timeout: float = 3.0) -> Report:
        """Ask every running rank where it is (control channel) and merge the answers."""
        return merge_answers(await self.where_answers(timeout))

    async def reply_within(self, msg_id: str, timeout: float) -> Message | None:
        """The reply to the request ``msg_id`` (sent or about to be), or None after ``timeout`` s."""
        try:
            return await asyncio.wait_for(self.expect_reply(msg_id), timeout)
        except asyncio.TimeoutError:
            self.forget_reply(msg_id)
            return None

    async def where_answers(
        self, timeout: float = 3.0, only: Collection[int] | None = None
    ) -> WhereAnswers:
        """Ask every running rank (or those in ``only``) where it is: the snapshots, and who did not answer."""
        asked: dict[int, asyncio.Future[Message]] = {}
        missing: dict[str, str] = {}
        # A rank stopped in the debugger is where the debugger says. Asking it
        # too was harmful: ipykernel's debugger lost a response now and then
        # when these requests came between its own, and waited for it for ever.
        held = self.held()
        for rank in self.ranks:
            if only is not None and rank.rank not in only:
                continue
            code = rank.exit_code()
            if rank.client is None or code is not None:
                missing[str(rank.rank)] = "not running" if code is None else describe_exit(code)
                continue
            if rank.rank in held:
                missing[str(rank.rank)] = held[rank.rank]
                continue
            request = rank.client.session.msg("chorus_where_request", {})
            asked[rank.rank] = self.expect_reply(request["header"]["msg_id"])
            rank.client.control_channel.send(request)
        if asked:
            await asyncio.wait(asked.values(), timeout=timeout)
        snapshots = []
        for number, future in asked.items():
            content = future.result()["content"] if future.done() else None
            if content is not None and content.get("status") == "ok":
                snapshots.append(content["snapshot"])
            else:
                if not future.done():
                    future.cancel()
                missing[str(number)] = (
                    content.get("evalue", "error") if content else f"no answer within {timeout:g} s"
                )
        return WhereAnswers(size=len(self.ranks), snapshots=snapshots, missing=missing)

    def interrupt(self, ranks: Sequence[int] | None = None) -> None:
        """SIGINT to every rank (or the given ones), wherever each is blocked."""
        for rank in self.ranks:
            if ranks is None or rank.rank in ranks:
                rank.interrupt()

    async def interrupts_delivered(self, timeout: float = INTERRUPT_DELIVERY_WAIT) -> list[Rank]:
        """Wait (up to ``timeout``) until every interrupt sent so far is pending in its rank.

        A remote rank's SIGINT travels as a ``kill`` over ssh; one still on its
        way when the next cell starts would interrupt that cell instead.
        Returns the ranks whose interrupt is still on its way (their host does
        not answer); it goes on and may still land.
        """
        if not self.ranks:
            return []
        waits = {
            asyncio.ensure_future(r.manager.rank_provisioner.signals_delivered()): r
            for r in self.ranks
        }
        _, pending = await asyncio.wait(waits, timeout=timeout)
        return sorted((waits[task] for task in pending), key=lambda r: r.rank)

    def dead(self) -> list[Rank]:
        """Ranks whose process has exited."""
        return [r for r in self.ranks if not r.alive()]
