"""Where the ranks go and what each gets before it starts: the one place that prepares ranks.

The launcher (:mod:`chorus.launch.run`), the kernel's and the magics' rank
sets (``kernel/ranks.py``) all prepare their ranks here:

- the job's identity (:func:`new_job`): its token, the secret every
  connection between ranks proves, and its id, which names shared memory;
- addresses: on this host a listening socket per rank, bound here and
  inherited by the rank (``CHORUS_LISTEN_FDS``; nobody can take the port in
  between); on other hosts the rank's agent binds them there
  (:mod:`chorus.launch.remote`) before any rank starts, so every rank gets
  the complete list;
- MLX's hostfile: a memfd here, the agent's memfd there (no file written);
- the other frameworks' rendezvous (:mod:`chorus.rendezvous`): torchrun's
  variables and JAX's coordinator, on ports reserved on rank 0's host;
- the environment of every rank (:func:`rank_environment`), with where the
  rank asks its supervisor questions (``CHORUS_SUPERVISOR``,
  :mod:`chorus.launch.questions`).

Nothing here starts or watches a process: the launcher supervises, the
kernel starts rank kernels.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chorus.env import RankEnv
from chorus.hostfile import Hostfile, describe, host_of
from chorus.launch.ports import (
    LOCALHOST,
    free_ports,
    hostfile_json,
    listening_sockets,
    memfd_hostfile,
    reserved_ports,
)
from chorus.launch.spec import JobSpec, LaunchError
from chorus.launch.threads import thread_limits, usable_cores
from chorus.rendezvous import (
    NodePosition,
    Rendezvous,
    framework_environment,
    node_positions,
)
from chorus.reporter import Reporter
from chorus.together import run_together

if TYPE_CHECKING:
    from chorus.launch.questions import QuestionServer
    from chorus.launch.remote import SshRank

__all__ = ["JobIdentity", "Placement", "new_job", "place_local", "place_remote", "rank_environment"]

T = TypeVar("T")
# At most this many ranks share one ssh connection (sshd's MaxSessions is 10).
RANKS_PER_CONNECTION = 8


@dataclass(frozen=True)
class JobIdentity:
    """A job's shared secret and its unique id."""

    token: str
    job_id: str


def new_job(kind: str = "") -> JobIdentity:
    """A fresh identity; ``kind`` prefixes the id (``"k"``: the kernel's ranks)."""
    # The id is random, nothing of the token: it names files in /dev/shm.
    return JobIdentity(secrets.token_hex(16), f"{kind}{os.getpid()}-{secrets.token_hex(4)}")


@dataclass
class Placement:
    """Ranks ready to start: each one's environment and what it inherits or runs through."""

    identity: JobIdentity
    envs: list[dict[str, str]]
    addresses: list[list[str]]  # each rank's "ip:port" list (CHORUS_HOSTFILE)
    # Here: the fds each rank inherits (its listening socket, MLX's hostfile).
    pass_fds: list[list[int]] = field(default_factory=list)
    # Elsewhere: each rank's agent (in rank order), the ssh connections, the
    # program with the hosts' interpreter, and MLX's hostfile text.
    remote: list[SshRank] = field(default_factory=list)
    connections: list[Any] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    mlx_hostfile: str = ""
    _inherited: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close_inherited(self) -> None:
        """Close this process's copies of what the local ranks inherited (once they started)."""
        self._inherited.close()

    def close(self) -> None:
        """Close every ssh connection (each agent then stops its rank) and every inherited fd."""
        for connection in self.connections:
            connection.close()
        self._inherited.close()


def rank_environment(
    spec: JobSpec,
    rank: int,
    *,
    base: Mapping[str, str],
    addresses: list[list[str]],
    listen_fds: Sequence[int],
    identity: JobIdentity,
    mlx_hostfile: str,
    supervisor: str,
    node: NodePosition,
    rendezvous: Rendezvous,
    machine_ranks: int,
    interface: str | None = None,
) -> dict[str, str]:
    """The complete environment of one rank.

    Parameters
    ----------
    spec
        The job.
    rank
        This rank.
    base
        The environment to start from (the launcher's, or nothing for a rank
        on another host).
    addresses
        Every rank's "ip:port" list (``CHORUS_HOSTFILE``; rank 0's first is
        ``CHORUS_COORDINATOR``).
    listen_fds
        This rank's inherited listening sockets, as the rank sees them.
    identity
        The job's token and id.
    mlx_hostfile
        The path the rank reads MLX's hostfile at.
    supervisor
        ``CHORUS_SUPERVISOR``: where the rank asks the launcher (or kernel)
        questions (:mod:`chorus.launch.questions`).
    node, rendezvous, interface
        The rank's place on its host, where the frameworks meet, and the
        network interface of the rank's address (ranks on other hosts).
    machine_ranks
        The job's ranks on this rank's machine (``CHORUS_MACHINE_RANKS``).

    Returns
    -------
    dict
        ``base`` plus the ``CHORUS_*`` variables (:meth:`RankEnv.to_environ`,
        their one writer), ``MLX_*``, torchrun's and JAX's
        (:func:`~chorus.rendezvous.framework_environment`),
        ``PYTHONUNBUFFERED``, the BLAS/OpenMP thread counts of
        :func:`~chorus.launch.threads.thread_limits`, then ``spec.env``.
    """
    rank_env = RankEnv(
        rank=rank,
        size=spec.nprocs,
        hosts=addresses,
        backend=spec.backend,
        token=identity.token,
        job_id=identity.job_id,
        timeout=spec.timeout,
        coordinator=addresses[0][0],
        verbose=spec.verbose,
        listen_fds=list(listen_fds),
        supervisor=supervisor,
        # SIGURG asks the rank where it is; it answers on stderr (chorus.where).
        reports="stderr",
        machine_ranks=machine_ranks,
    )
    env = dict(base)
    env.update(rank_env.to_environ())
    env.update(
        {
            "MLX_RANK": str(rank),
            "MLX_WORLD_SIZE": str(spec.nprocs),
            "MLX_HOSTFILE": mlx_hostfile,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(framework_environment(rank, spec.nprocs, node, rendezvous, base, interface))
    if spec.gpus is not None:  # one device per rank of a host (checked by JobSpec)
        env["CUDA_VISIBLE_DEVICES"] = spec.gpus[node.local_rank]
    # Every rank of the job is on this host: each gets its share of the cores.
    env.update(thread_limits(spec.nprocs, usable_cores(), {**base, **spec.env}))
    env.update(spec.env)
    return env


def place_local(
    spec: JobSpec,
    identity: JobIdentity,
    *,
    supervisor: str,
    base: Mapping[str, str],
    reporter: Reporter,
) -> Placement:
    """Every rank on this host: sockets bound here, MLX's hostfile in a memfd.

    The sockets and the memfd stay open in this process until
    :meth:`Placement.close_inherited` (call it once the ranks started).

    Raises
    ------
    OSError
        A socket or the memfd cannot be made.
    """
    placement = Placement(identity, envs=[], addresses=[])
    try:
        listeners = listening_sockets(spec.nprocs)
        for sock in listeners:
            placement._inherited.callback(sock.close)
        addresses = [[f"{LOCALHOST}:{sock.getsockname()[1]}"] for sock in listeners]
        hostfile = hostfile_json(addresses)
        reporter.progress(f"listening for the ranks on {hostfile}")

        mlx_text = hostfile_json([[f"{LOCALHOST}:{port}"] for port in free_ports(spec.nprocs)])
        mlx_path, mlx_fds = _mlx_hostfile(placement._inherited, mlx_text)
        reporter.progress(f"MLX hostfile at {mlx_path}: {mlx_text}")
        rendezvous = Rendezvous(LOCALHOST, *reserved_ports(2))
    except BaseException:
        placement.close()
        raise
    placement.addresses = addresses
    nodes = node_positions([LOCALHOST] * spec.nprocs)
    for rank, sock in enumerate(listeners):
        listen_fds = [sock.fileno()]
        placement.envs.append(
            rank_environment(
                spec,
                rank,
                base=base,
                addresses=addresses,
                listen_fds=listen_fds,
                identity=identity,
                mlx_hostfile=mlx_path,
                supervisor=supervisor,
                node=nodes[rank],
                rendezvous=rendezvous,
                machine_ranks=spec.nprocs,
            )
        )
        placement.pass_fds.append([*listen_fds, *mlx_fds])
    return placement


def _mlx_hostfile(stack: contextlib.ExitStack, text: str) -> tuple[str, list[int]]:
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


async def place_remote(
    spec: JobSpec,
    hostfile: Hostfile,
    identity: JobIdentity,
    questions: QuestionServer,
    reporter: Reporter,
    *,
    free_ports: int = 0,
) -> Placement:
    """Connect to every host, run each rank's agent, learn every address.

    Nothing runs the user's program yet: each agent has bound its rank's
    listening sockets, so the hostfile every rank gets is complete and no
    port can be taken in between. ``free_ports`` more ports per rank are
    reported (the kernel's ZMQ ports). Each connection forwards a port on
    its host back to ``questions``. On failure every connection is closed.

    Raises
    ------
    LaunchError
        A host cannot be reached or cannot run its rank; the message names it.
    """
    from chorus.launch.remote import AgentError, SshRank
    from chorus.ssh import SshError, connect_all

    reporter.progress(f"job {identity.job_id}: {spec.nprocs} rank(s) on {describe(hostfile.hosts)}")
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
        cwd = spec.cwd or str(Path.cwd())
        steps = [
            rank.prepare(
                cwd=cwd, check_paths=check_paths, need_chorus=runs_python, free_ports=free_ports
            )
            for rank in ranks
        ]
        try:
            prepared = await run_together(
                steps,
                progress=lambda done, total: reporter.status(
                    f"starting agents: {done}/{total} ready"
                ),
            )
        except AgentError as exc:
            raise LaunchError(str(exc)) from exc
        finally:
            reporter.status("")
        supervisors = [await questions.address_over(r.connection, r.host) for r in ranks]
    except BaseException:
        for connection in connections:
            connection.close()
        raise
    # Ranks on one machine share its cores, whatever host each is listed as
    # (network namespaces, containers): the agents report the kernel's boot id.
    machine_of = [p.machine or f"ssh {r.host}" for r, p in zip(ranks, prepared, strict=True)]
    on_machine = Counter(machine_of)
    for rank, machine in zip(ranks, machine_of, strict=True):
        rank.ranks_on_machine = on_machine[machine]
    addresses = [p.addresses for p in prepared]
    hostfile_text = hostfile_json(addresses)
    reporter.progress(f"ranks listen on {hostfile_text}")
    rendezvous = Rendezvous(host_of(addresses[0][0]), *prepared[0].rendezvous_ports)
    nodes = node_positions([entry.ssh for entry in hostfile.hosts])
    envs = []
    for rank, supervisor in zip(ranks, supervisors, strict=True):
        env = rank_environment(
            spec,
            rank.rank,
            base={},
            addresses=addresses,
            listen_fds=[],
            identity=identity,
            mlx_hostfile="",
            supervisor=supervisor,
            node=nodes[rank.rank],
            rendezvous=rendezvous,
            machine_ranks=rank.ranks_on_machine,
            interface=rank.prepared.interface if rank.prepared is not None else None,
        )
        env.update(hostfile.envs)
        env.update(spec.env)
        envs.append(env)
    return Placement(
        identity,
        envs=envs,
        addresses=addresses,
        remote=ranks,
        connections=connections,
        argv=argv,
        mlx_hostfile=hostfile_json([p.mlx_addresses[:1] for p in prepared]),
    )


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
