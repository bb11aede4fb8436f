"""Where a rank kernel runs: jupyter_client kernel provisioners for chorus ranks.

Every rank kernel is an ordinary :class:`~jupyter_client.manager.AsyncKernelManager`
(:class:`RankKernelManager`); its provisioner is the only thing that knows
where the process lives:

- :class:`LocalRankProvisioner`: a child process on this host (jupyter_client's
  own :class:`~jupyter_client.provisioning.LocalProvisioner`, plus a last
  SIGKILL for whatever the rank left in its process group);
- :class:`SshRankProvisioner`: a process on another host, run by the
  launcher's agent (:class:`chorus.launch.remote.SshRank`) over ssh.

Both offer the same small synchronous view (:class:`RankProvisioner`: host,
pid, exit status, an immediate signal), so the rank set has no local or
remote branches. The rank set creates the provisioner itself instead of
naming one in a kernelspec: a remote one holds a live ssh connection, which
no configuration could carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from jupyter_core.paths import jupyter_runtime_dir

if TYPE_CHECKING:
    from jupyter_client.connect import KernelConnectionInfo

    from chorus.launch.remote import SshRank

__all__ = [
    "RANK_ARGV",
    "LocalRankProvisioner",
    "RankKernelManager",
    "RankProvisioner",
    "SocketDir",
    "SshRankProvisioner",
    "local_rank_manager",
    "remote_rank_manager",
]

RANK_ARGV = [sys.executable, "-m", "chorus.kernel.rank", "-f", "{connection_file}"]
# The five ZMQ ports of a kernel, in the order an agent reports its free ports.
_ZMQ_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class RankKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is a chorus rank (no kernelspec on disk)."""

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(
            argv=RANK_ARGV,
            display_name="chorus rank",
            language="python",
            interrupt_mode="signal",
        )

    @property
    def rank_provisioner(self) -> RankProvisioner:
        """The provisioner the rank set gave this manager."""
        return cast(RankProvisioner, self.provisioner)


class RankProvisioner(KernelProvisionerBase):
    """What the rank set asks of any rank's provisioner, synchronously."""

    host: str = "localhost"

    @property
    @abstractmethod
    def rank_pid(self) -> int | None:
        """The rank kernel's pid here, or its agent's pid on its host."""

    @abstractmethod
    def exit_code(self) -> int | None:
        """The exit status once the kernel has exited (``-N`` for signal N)."""

    @abstractmethod
    def signal_now(self, signum: int) -> None:
        """Send ``signum`` to the rank's process group at once; nothing once it is gone."""

    async def signals_delivered(self) -> None:
        """Wait until the signals sent so far are pending in the rank (here: at once)."""


class LocalRankProvisioner(RankProvisioner, LocalProvisioner):
    """A rank kernel on this host, in its own session (jupyter_client starts it so)."""

    _returncode: int | None = None
    _group: int | None = None

    @property
    def rank_pid(self) -> int | None:
        return None if self.process is None else int(self.process.pid)

    def exit_code(self) -> int | None:
        if self.process is not None:
            code = self.process.poll()
            if code is not None:
                self._returncode = code
        elif self._returncode is None and self._group is not None:
            # Waited for and cleared by jupyter_client without an exit status.
            self._returncode = -int(signal.SIGKILL)
        return self._returncode

    def signal_now(self, signum: int) -> None:
        if self.process is not None and self.exit_code() is None and self._group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._group, signum)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        info = await super().launch_kernel(cmd, **kwargs)
        self._group = self.pgid
        return info

    async def wait(self) -> int | None:
        process = self.process
        code = await super().wait()
        if process is not None and code is not None:
            self._returncode = code
        return code

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        # Whatever the rank started and left behind in its group goes with it.
        if self._group is not None and not restart:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._group, signal.SIGKILL)


class SshRankProvisioner(RankProvisioner):
    """A rank kernel on another host, run by the rank's agent over ssh.

    The agent has bound the rank's chorus sockets and reported five free
    ports on the rank's address for ZMQ (:attr:`SshRank.prepared`). The
    kernel reads its connection file (those ports, a fresh HMAC key and a
    CurveZMQ key pair) from a memfd, so nothing is written on the host, and
    the traffic between the hosts is signed and encrypted. Signals travel as
    ``kill`` run by the agent; the kernel's own stderr is copied to ours,
    labelled with the rank and host.
    """

    def __init__(
        self,
        agent: SshRank,
        argv: Sequence[str],
        mlx_hostfile: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.agent = agent
        self.host = agent.host
        self._argv = list(argv)
        self._mlx_hostfile = mlx_hostfile
        self._launched = False
        self._waited = False
        self._drains: list[asyncio.Task[None]] = []

    # -- RankProvisioner --------------------------------------------------------

    @property
    def rank_pid(self) -> int | None:
        return None if self.agent.prepared is None else self.agent.prepared.pid

    def exit_code(self) -> int | None:
        return self.agent.returncode

    def signal_now(self, signum: int) -> None:
        self.agent.send_signal(signum)

    async def signals_delivered(self) -> None:
        await self.agent.signals_delivered()

    # -- KernelProvisionerBase ---------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self._launched and not self._waited

    async def poll(self) -> int | None:
        return self.agent.returncode

    async def wait(self) -> int | None:
        code = await self.agent.wait()
        self._waited = True
        return code

    async def send_signal(self, signum: int) -> None:
        self.agent.send_signal(signum)

    async def kill(self, restart: bool = False) -> None:
        self.agent.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        self.agent.send_signal(signal.SIGTERM)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        prepared = self.agent.prepared
        if prepared is None:
            msg = f"rank {self.agent.rank} on {self.host} has not been prepared"
            raise RuntimeError(msg)
        ip = self.agent.advertise[0]
        info: dict[str, Any] = dict(zip(_ZMQ_PORTS, prepared.free_ports, strict=True))
        public, secret = zmq.curve_keypair()
        info |= {
            "ip": ip,
            "transport": "tcp",
            # bytes, as jupyter_client holds its session key.
            "key": secrets.token_hex(32).encode(),
            "signature_scheme": "hmac-sha256",
            "kernel_name": "",
            "curve_publickey": public.decode(),
            "curve_secretkey": secret.decode(),
        }
        self.connection_info = cast("KernelConnectionInfo", info)
        kwargs.pop("pass_fds", None)  # sockets are inherited from the agent there
        cmd = [*self._argv, "-f", "{memfd:connection}", f"--ip={ip}"]
        return await super().pre_launch(cmd=cmd, **kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        info: dict[str, Any] = dict(self.connection_info)
        connection = json.dumps({**info, "key": info["key"].decode()})
        env = kwargs.get("env") or {}
        self.agent.configure(env, cmd, self._mlx_hostfile, {"connection": connection})
        await self.agent.start()
        self._launched = True
        self._drains = [
            asyncio.create_task(self._drain(self.agent.stdout, forward=False)),
            asyncio.create_task(self._drain(self.agent.stderr, forward=True)),
        ]
        return self.connection_info

    async def _drain(self, stream: asyncio.StreamReader, forward: bool) -> None:
        """Read the kernel's own stdout/stderr; copy stderr to ours.

        Unread, the ssh channel's window would fill and block the rank. Its
        stdout holds only ipykernel's start-up banner (cell output travels
        over iopub); its stderr has warnings and crashes worth seeing.
        """
        label = f"[rank {self.agent.rank} on {self.host}] ".encode()
        with contextlib.suppress(OSError):
            while chunk := await stream.read(65536):
                if forward:
                    lines = chunk.splitlines(keepends=True)
                    os.write(2, b"".join(label + line for line in lines))

    async def cleanup(self, restart: bool = False) -> None:
        for task in self._drains:
            task.cancel()
        self._drains = []
        # The agent kills the rank's group when the rank or the connection
        # ends; this covers a rank still running when we give up on it.
        self.agent.cleanup()


class SocketDir:
    """The private directory of a job's local rank kernels' unix sockets.

    ZMQ removes a socket file when its kernel closes it, and jupyter_client
    when it cleans up; a kernel killed outright leaves them behind. So each
    job's sockets share one directory, removed with the job, and the next
    job on this host removes those of jobs whose chorus kernel is gone.
    Names carry the host: a runtime directory on a shared home is seen by
    other hosts, whose pids mean nothing here.
    """

    def __init__(self, job_id: str) -> None:
        base = Path(jupyter_runtime_dir())
        prefix = f"chorus-{socket.gethostname()}-"
        # Unix socket paths are limited to 107 bytes; "/rank-NN-N" follows.
        if len(str(base / (prefix + job_id))) > _MAX_SOCKET_DIR:
            base = Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        _remove_stale(base, prefix)
        self.path = base / (prefix + job_id)
        self.path.mkdir(mode=0o700)

    def socket_base(self, rank: int) -> str:
        """The path jupyter_client appends ``-<port>`` to for ``rank``'s sockets."""
        return str(self.path / f"rank-{rank}")

    def connection_file(self, rank: int) -> str:
        """Where ``rank``'s connection file goes (jupyter_client's default is /tmp)."""
        return str(self.path / f"rank-{rank}.json")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


_MAX_SOCKET_DIR = 96
_JOB_PID = re.compile(r"k(\d+)-[0-9a-f]+$")


def _remove_stale(base: Path, prefix: str) -> None:
    """Remove the socket directories of this host's jobs whose kernel has exited."""
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            if not entry.name.startswith(prefix):
                continue
            match = _JOB_PID.match(entry.name[len(prefix) :])
            if match is None or _alive(int(match.group(1))):
                continue
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_rank_manager(sockets: SocketDir, rank: int) -> RankKernelManager:
    """A manager for ``rank``'s kernel on this host, talking over unix sockets in ``sockets``.

    IPC transport: rank kernels talk to this process only, over private unix
    sockets (and no "TCP without encryption" warning at every start).
    """
    manager = RankKernelManager(
        transport="ipc", ip=sockets.socket_base(rank), connection_file=sockets.connection_file(rank)
    )
    manager.provisioner = LocalRankProvisioner(
        kernel_id="", kernel_spec=manager.kernel_spec, parent=manager
    )
    return manager


def remote_rank_manager(
    agent: SshRank, argv: Sequence[str], mlx_hostfile: str, connection_file: str
) -> RankKernelManager:
    """A manager for a rank kernel that ``agent`` runs on its host with ``argv``.

    ``connection_file`` is where this side keeps the rank's connection info
    (the rank reads its own copy from a memfd there).
    """
    manager = RankKernelManager(
        transport="tcp", ip=agent.advertise[0], connection_file=connection_file
    )
    manager.provisioner = SshRankProvisioner(
        agent, argv, mlx_hostfile, kernel_id="", kernel_spec=manager.kernel_spec, parent=manager
    )
    return manager
