"""A rank on another host: :class:`SshRank`, driven through :mod:`chorus.launch.agent`.

The launcher treats it like a local rank (:class:`~chorus.launch.process.RankProcess`):
stdin, stdout and stderr are the ssh channel's, a signal is a ``kill`` of the
agent run over the same connection (the agent relays it to the rank's process
group), the exit status is the one ssh reports. Before :meth:`start`, the
two-step hand-shake with the agent binds the rank's sockets on its host
(:meth:`prepare`) so every rank's address is known before any rank runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from chorus.launch import agent
from chorus.launch.process import RankProcess
from chorus.launch.threads import thread_limits

if TYPE_CHECKING:
    import asyncssh

__all__ = ["AgentError", "Prepared", "SshRank", "agent_command"]

# How long a host may take to answer the prepare step (python start-up there).
PREPARE_TIMEOUT = 30.0
# Signals the agent forwards to the rank's process group (names for kill -s).
_AGENT_SIGNALS = {
    signal.SIGINT: "INT",
    signal.SIGTERM: "TERM",
    signal.SIGHUP: "HUP",
    signal.SIGQUIT: "QUIT",
    signal.SIGURG: "URG",  # "where are you?" (chorus.where)
    # The agent turns USR1 into SIGKILL for the rank's whole group.
    signal.SIGKILL: "USR1",
}


class AgentError(Exception):
    """A host cannot run its rank; the message names the host and says why."""


@dataclass(frozen=True)
class Prepared:
    """What the agent reported after binding the rank's sockets."""

    hostname: str
    pid: int
    addresses: list[str]
    mlx_addresses: list[str]
    cwd: str | None
    free_ports: list[int]
    cores: int
    # Reserved for torch's and JAX's rank-0 services (rank 0's are used).
    rendezvous_ports: list[int]
    # The interface of the rank's (first) address, for gloo; None if not found.
    interface: str | None
    # The host's kernel boot id: hosts that share one are one machine ("": unknown).
    machine: str


def agent_command(python: str) -> str:
    """The remote shell command that runs the agent with ``python``."""
    source = Path(agent.__file__).read_text(encoding="utf-8")
    # exec: the agent's parent must be the ssh session, so it dies with it.
    return f"exec {shlex.quote(python)} -I -c {shlex.quote(source)}"


def _frame(message: Mapping[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return f"{len(data)}\n".encode() + data


class SshRank(RankProcess):
    """One rank started over ssh.

    Parameters
    ----------
    rank
        The rank number.
    host
        The ssh name of its host (for messages).
    connection
        An open connection to that host.
    python
        The interpreter on the host that runs the agent.
    bind
        Addresses to listen on there (``0.0.0.0`` when the hostfile names none).
    advertise
        The address peers use for each entry of ``bind`` (differs for ``0.0.0.0``).
    """

    def __init__(
        self,
        rank: int,
        host: str,
        connection: asyncssh.SSHClientConnection,
        *,
        python: str,
        bind: Sequence[str],
        advertise: Sequence[str],
    ) -> None:
        super().__init__(rank, host)
        self.connection = connection
        self.python = python
        self.bind = list(bind)
        self.advertise = list(advertise)
        self.prepared: Prepared | None = None
        # Ranks of this job on the same machine (the agent divides its cores).
        self.ranks_on_machine = 1
        self._process: asyncssh.SSHClientProcess[bytes] | None = None
        self._started = False
        self._stdin: _ChannelStdin | None = None
        self._signal_tasks: set[asyncio.Task[None]] = set()
        self._lost = False

    # -- the hand-shake --------------------------------------------------------

    async def prepare(
        self,
        *,
        cwd: str | None,
        check_paths: Sequence[str],
        need_chorus: bool,
        free_ports: int = 0,
    ) -> Prepared:
        """Open the channel, run the agent, bind the rank's sockets there.

        Raises
        ------
        AgentError
            If the host cannot run the rank (no such python, chorus missing,
            a file missing, an address it cannot listen on).
        """
        from chorus.sshlib import asyncssh

        try:
            self._process = await self.connection.create_process(
                agent_command(self.python), encoding=None
            )
        except (asyncssh.Error, OSError) as exc:
            msg = f"{self.host}: cannot open an ssh session: {exc}"
            raise AgentError(msg) from exc
        request = {
            "bind": self.bind,
            "advertise": self.advertise,
            "cwd": cwd,
            "check_paths": list(check_paths),
            "need_chorus": need_chorus,
            "free_ports": free_ports,
        }
        self.stdin.write(_frame(request))
        try:
            async with asyncio.timeout(PREPARE_TIMEOUT):
                line = await self.stdout.readline()
        except TimeoutError:
            msg = f"{self.host}: {self.python} did not answer within {PREPARE_TIMEOUT:g} s"
            raise AgentError(msg) from None
        text = line.decode(errors="replace")
        if not text.startswith(agent.REPLY_TAG):
            raise AgentError(await self._no_agent(text))
        answer = json.loads(text[len(agent.REPLY_TAG) :])
        if not answer["ok"]:
            hint = ""
            if answer.get("kind") == "no-chorus":
                hint = (
                    f": install it there (`{self.python} -m pip install chorus`) or pass --python"
                )
            msg = f"{self.host}: {answer['error']}{hint}"
            raise AgentError(msg)
        addresses = [
            _join(ip, port) for ip, port in zip(self.advertise, answer["ports"], strict=True)
        ]
        mlx = [
            _join(ip, port) for ip, port in zip(self.advertise, answer["mlx_ports"], strict=True)
        ]
        self.prepared = Prepared(
            answer["hostname"],
            answer["pid"],
            addresses,
            mlx,
            answer["cwd"],
            answer["free_ports"],
            answer["cores"],
            answer["rendezvous_ports"],
            answer["interface"],
            answer.get("machine", ""),
        )
        return self.prepared

    async def _no_agent(self, first_line: str) -> str:
        """Explain why the agent did not answer (usually: no such python)."""
        assert self._process is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._process.wait()
        stderr = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(1):
                stderr = await self.stderr.read(4096)
        detail = (first_line + stderr.decode(errors="replace")).strip()
        if self._process.returncode == 127:
            return (
                f"{self.host}: {self.python} is not there (command not found); "
                "pass --python with the interpreter to use on the remote hosts"
            )
        return f"{self.host}: the chorus agent did not start with {self.python}: {detail or 'no output'}"

    def configure(
        self,
        env: Mapping[str, str],
        argv: Sequence[str],
        mlx_hostfile: str,
        memfds: Mapping[str, str] | None = None,
    ) -> None:
        """Remember what :meth:`start` sends: the rank's variables and command.

        ``memfds`` maps names to file contents the rank reads; the agent puts
        each in a memfd and replaces ``{memfd:NAME}`` in ``argv`` and ``env``
        with its path, so no file is written on the host.
        """
        cores = 1 if self.prepared is None else self.prepared.cores
        env = {**env, **thread_limits(self.ranks_on_machine, cores, env)}
        self._start_request = {
            "env": dict(env),
            "argv": list(argv),
            "cwd": None if self.prepared is None else self.prepared.cwd,
            "mlx_hostfile": mlx_hostfile,
            "memfds": dict(memfds or {}),
        }

    # -- RankProcess -----------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def where(self) -> str:
        pid = "" if self.prepared is None else f" pid {self.prepared.pid}"
        return f"rank {self.rank}: {self.host}{pid}"

    async def start(self) -> None:
        self.stdin.write(_frame(self._start_request))
        await self.stdin.drain()
        self._started = True

    @property
    def _proc(self) -> asyncssh.SSHClientProcess[bytes]:
        if self._process is None:
            msg = f"rank {self.rank} on {self.host} has not been prepared"
            raise RuntimeError(msg)
        return self._process

    @property
    def stdin(self) -> asyncio.StreamWriter:
        if self._stdin is None:
            self._stdin = _ChannelStdin(self._proc.stdin)
        return cast(asyncio.StreamWriter, self._stdin)

    @property
    def stdout(self) -> asyncio.StreamReader:
        return cast(asyncio.StreamReader, self._proc.stdout)

    @property
    def stderr(self) -> asyncio.StreamReader:
        return cast(asyncio.StreamReader, self._proc.stderr)

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def returncode(self) -> int | None:
        if self._process is None:
            return None
        if self._process.returncode is None and self._lost:
            return -int(signal.SIGKILL)
        return self._process.returncode

    async def wait(self) -> int:
        await self._proc.wait_closed()
        if self._proc.returncode is None:
            # The channel closed without an exit status: the host or the
            # connection is gone, and the agent with it.
            self._lost = True
        code = self.returncode
        assert code is not None
        return code

    def send_signal(self, signum: int) -> None:
        """Signal the rank's group with ``kill`` over a new ssh session.

        ssh's own signal request is not used: OpenSSH servers ignore it. On
        Linux the command signals the rank's group itself (the agent's only
        child leads it), so when it returns the signal is pending in the rank
        (:meth:`signals_delivered`); elsewhere the agent relays it. SIGKILL
        always goes through the agent, which kills the group and exits.
        """
        name = _AGENT_SIGNALS.get(signal.Signals(signum))
        if self.prepared is None or name is None or self.returncode is not None:
            return
        agent = self.prepared.pid
        command = f"kill -s {name} {agent}"
        if signum != signal.SIGKILL:
            children = f"/proc/{agent}/task/{agent}/children"
            command = (
                f'c=$(cat {children} 2>/dev/null) && [ -n "$c" ] '
                f"&& kill -s {name} -- -$c 2>/dev/null || {command}"
            )
        task = asyncio.get_running_loop().create_task(self._run_quietly(command))
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    async def signals_delivered(self) -> None:
        """Wait until every signal sent so far has reached the rank's host."""
        if self._signal_tasks:
            await asyncio.gather(*self._signal_tasks, return_exceptions=True)

    async def _run_quietly(self, command: str) -> None:
        from chorus.sshlib import asyncssh

        with contextlib.suppress(asyncssh.Error, OSError):
            await self.connection.run(command, check=False)

    def cleanup(self) -> None:
        """Kill what is left of the rank's group.

        The agent does that itself when the rank exits, and when the
        connection closes (its parent, the ssh session, dies); this covers a
        rank that is still running when the launcher gives up on it.
        """
        self.send_signal(signal.SIGKILL)


class _ChannelStdin:
    """A rank's stdin over ssh, shaped like :class:`asyncio.StreamWriter`.

    Closing it sends EOF only: closing asyncssh's writer would close the whole
    channel and lose the rank's remaining output and exit status.
    """

    def __init__(self, writer: asyncssh.SSHWriter[bytes]) -> None:
        self._writer = writer
        self._eof = False

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def is_closing(self) -> bool:
        return self._eof or self._writer.is_closing()

    def close(self) -> None:
        if not self.is_closing():
            self._eof = True
            with contextlib.suppress(OSError):
                self._writer.write_eof()


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
