"""chorus collectives on ipyparallel engines.

ipyparallel already starts engines everywhere users need them (locally, under
``mpiexec``, over SSH, in Slurm or PBS jobs); :func:`setup` turns a set of
engines into chorus ranks, so chorus scales to schedulers without a launcher
of its own::

    import ipyparallel as ipp
    from chorus.magics.ipp import setup

    cluster = ipp.Cluster(n=4, engines="mpi")       # or "local", "ssh", "slurm"
    client = cluster.start_and_connect_sync()
    ranks = setup(client)                            # engine ids in rank order
    client[:].execute("x = chorus.all_sum(np.ones(3) * rank)")

Each engine binds a listening socket (so no port can be taken between
choosing and using it), reports its address, and receives the job's
``CHORUS_*`` environment; all then call ``chorus.init()`` at once. Under
``mpiexec`` the chorus rank is the MPI rank. Engines cannot read stdin, so
``input()`` and pdb stay a feature of the chorus kernel and ``%%all``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import Any

from chorus.kernel.engine import CellResult
from chorus.kernel.labels import format_ranks, label_line, tagged
from chorus.kernel.output import OutputMerger
from chorus.magics.magics import RanksFailed, print_stream
from IPython.display import publish_display_data

from chorus.backends import default_backend
from chorus.env import RankEnv
from chorus.hostfile import host_of
from chorus.launch.agent import interface_of
from chorus.launch.placement import new_job
from chorus.launch.ports import reserved_ports
from chorus.rendezvous import (
    NodePosition,
    Rendezvous,
    framework_environment,
    node_positions,
)

# Listening sockets an engine keeps for chorus.init() (module state on the engine).
_LISTENERS: list[socket.socket] = []
# The environment variables chorus set on this engine (module state on the engine).
_SET_BY_CHORUS: set[str] = set()

_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")
# Seconds the interrupted engines get to finish the cell.
INTERRUPT_WAIT = 10.0


def _engine_listen(local: bool) -> dict[str, Any]:
    """On an engine: bind a listening socket and say where it is."""
    hostname = socket.gethostname()
    host = "127.0.0.1" if local else socket.gethostbyname(hostname)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(socket.SOMAXCONN)
    _LISTENERS.append(sock)
    mpi_rank = next((os.environ[v] for v in _MPI_RANK_VARS if os.environ.get(v)), None)
    return {
        "address": f"{host}:{sock.getsockname()[1]}",
        "fd": sock.fileno(),
        "hostname": hostname,
        "pid": os.getpid(),
        "mpi_rank": None if mpi_rank is None else int(mpi_rank),
        # gloo resolves the host name unless told its interface (loopback, on some hosts).
        "interface": None if local else interface_of(host),
        # For torch's and JAX's rank-0 services (rank 0's are used).
        "rendezvous_ports": reserved_ports(2, host),
    }


def _engine_init(
    env: dict[str, str], node: NodePosition, rendezvous: Rendezvous, interface: str | None
) -> tuple[int, int, str]:
    """On an engine: join the chorus job (and the frameworks'); predefine chorus, np, rank, size.

    ``interface``: the engine's network interface, for gloo (``GLOO_SOCKET_IFNAME``).
    """
    # What the engine had before chorus (a second setup must not keep the first's ports).
    inherited = {k: v for k, v in os.environ.items() if k not in _SET_BY_CHORUS}
    rank, size = int(env["CHORUS_RANK"]), int(env["CHORUS_WORLD_SIZE"])
    env = {**env, **framework_environment(rank, size, node, rendezvous, inherited, interface)}
    for name in _SET_BY_CHORUS - set(env):
        os.environ.pop(name, None)
    _SET_BY_CHORUS.update(env)
    os.environ.update(env)
    import numpy as np

    import chorus
    import chorus.startup

    chorus.startup.run()

    group = chorus.init(strict=True)
    try:
        from IPython.core.getipython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        shell.user_ns.update(chorus=chorus, np=np, rank=group.rank(), size=group.size())
    return group.rank(), group.size(), group.backend


def setup(client: Any, backend: str | None = None, timeout: float = 60.0) -> list[int]:
    """Make every engine of ``client`` a chorus rank.

    Parameters
    ----------
    client
        An ``ipyparallel.Client`` connected to the engines.
    backend
        ``"shm"`` when every engine is on this host, else ``"ring"``
        (default), or any backend name.
    timeout
        ``CHORUS_TIMEOUT`` for the engines' set-up.

    Returns
    -------
    list of int
        Engine ids in rank order: the MPI rank under ``mpiexec``, else the
        engine id order.

    Raises
    ------
    RuntimeError
        An engine failed to join; the message names its rank and host.
    """
    ids = sorted(client.ids)
    if not ids:
        msg = "the ipyparallel client has no engines"
        raise RuntimeError(msg)
    hostnames = client[ids].apply_sync(socket.gethostname)
    local = all(name == socket.gethostname() for name in hostnames)
    infos = dict(zip(ids, client[ids].apply_sync(_engine_listen, local), strict=True))
    if all(info["mpi_rank"] is not None for info in infos.values()):
        order = sorted(ids, key=lambda e: infos[e]["mpi_rank"])
    else:
        order = ids
    addresses = [[infos[e]["address"]] for e in order]
    nodes = node_positions([infos[e]["hostname"] for e in order])
    rendezvous = Rendezvous(host_of(addresses[0][0]), *infos[order[0]]["rendezvous_ports"])
    identity = new_job("ipp-")
    pending = []
    for rank, engine in enumerate(order):
        env = RankEnv(
            rank=rank,
            size=len(order),
            hosts=addresses,
            backend=default_backend(backend, remote=not local),
            token=identity.token,
            job_id=identity.job_id,
            timeout=timeout,
            coordinator=addresses[0][0],
            listen_fds=[infos[engine]["fd"]],
        ).to_environ()
        init = client[engine].apply_async(
            _engine_init, env, nodes[rank], rendezvous, infos[engine]["interface"]
        )
        pending.append((rank, engine, init))
    for rank, engine, result in pending:
        try:
            result.get(timeout=timeout + 10)
        except Exception as err:
            host = infos[engine]["hostname"]
            msg = f"rank {rank} (engine {engine} on {host}) could not join chorus: {err}"
            raise RuntimeError(msg) from err
    client[order].apply_sync(_note_interrupts)
    return order


def _note_interrupts() -> None:
    """On an engine: tell the backends of every SIGINT, as a chorus rank kernel does.

    A rank interrupted before it reached the call its peers were interrupted
    in must know it (``note_interrupt``): its next call then meets their next
    one. Without it, the first collective after an interrupt waited for ever.
    The engine's kernel raises KeyboardInterrupt only while it runs a request,
    as ipykernel does; between requests the signal is noted and nothing else.
    """
    import signal as signals

    from IPython import get_ipython

    from chorus import _core

    kernel = get_ipython().kernel
    running = [False]

    def on_sigint(_signum: int, _frame: object) -> None:
        _core.note_interrupt()
        if running[0]:
            raise KeyboardInterrupt

    def before_request() -> None:
        running[0] = True
        signals.signal(signals.SIGINT, on_sigint)

    def after_request() -> None:
        running[0] = False

    kernel.pre_handler_hook = before_request
    kernel.post_handler_hook = after_request
    signals.signal(signals.SIGINT, on_sigint)


class IppRanks:
    """Ranks that are ipyparallel engines (``%chorus start --ipp``)."""

    def __init__(self, cluster: Any, client: Any, order: list[int], backend: str) -> None:
        self.cluster = cluster
        self.client = client
        self.order = order
        self.backend = backend

    @classmethod
    def start(cls, n: int, engines: str, backend: str | None, timeout: float) -> IppRanks:
        import ipyparallel as ipp
        from chorus.magics.ipp import setup

        cluster = ipp.Cluster(n=n, engines=engines, log_level=40)
        client = cluster.start_and_connect_sync()
        try:
            order = setup(client, backend=backend, timeout=timeout)
            used = client[order[0]].apply_sync(lambda: __import__("chorus").init().backend)
        except BaseException:
            cluster.stop_cluster_sync()
            raise
        return cls(cluster, client, order, used)

    def stop(self) -> None:
        self.client.close()
        self.cluster.stop_cluster_sync()

    def execute(self, code: str, targets: list[int]) -> None:
        """Run ``code`` on the target ranks; show output labelled and collapsed."""
        import ipyparallel as ipp

        engines = [self.order[r] for r in targets]
        result = self.client[engines].execute(code, block=False)
        failures: dict[tuple[str, str], list[int]] = {}
        try:
            result.get()
        except KeyboardInterrupt:
            # This kernel was interrupted; ipyparallel cannot abort a task
            # that runs, so the engines must be interrupted too, or the next
            # cell would queue behind this one for ever.
            self.cluster.signal_engines_sync(signal.SIGINT)
            with contextlib.suppress(Exception):
                result.wait(timeout=INTERRUPT_WAIT)
            raise
        except ipp.CompositeError as error:
            # elist: (ename, evalue, traceback text, engine_info) per failed engine.
            rank_of = {engine: rank for rank, engine in enumerate(self.order)}
            for ename, evalue, traceback, info in error.elist:
                rank = rank_of.get(info.get("engine_id", -1), -1)
                failures.setdefault((ename, traceback or evalue), []).append(rank)
        # The reply can come before an engine's last output (another socket):
        # wait for every engine's output to be in before showing it.
        result.wait_for_output(timeout=10)
        merger = OutputMerger(targets, print_stream)
        for rank, out, err in zip(targets, result.stdout, result.stderr, strict=True):
            merger.feed(rank, "stdout", out)
            merger.feed(rank, "stderr", err)
        merger.flush()
        for rank, outputs in zip(targets, result.outputs, strict=True):
            for output in outputs:
                print_stream("stdout", label_line([rank]))
                shown = tagged(output, [rank])
                publish_display_data(shown["data"], shown["metadata"])
        for (_ename, text), ranks in failures.items():
            sys.stderr.write(f"{format_ranks(ranks)}\n{text}\n")
        if failures:
            ename, text = next(iter(failures))
            raise RanksFailed(CellResult(status="error", ename=ename, evalue=text.splitlines()[-1]))

    def command(self, action: str, rest: list[str], shell: Any) -> Any:
        """``%chorus status|where|pull|push`` for engine ranks."""
        view = self.client[self.order]
        if action == "status":
            infos = view.apply_sync(_host_and_pid)
            print("rank  engine  host              pid")
            for rank, (engine, (host, pid)) in enumerate(zip(self.order, infos, strict=True)):
                print(f"{rank:<5} {engine:<7} {host:<17} {pid}")
            return None
        if action == "where":
            # Engines run one task at a time: this answers between cells only.
            from chorus.debug import snapshot
            from chorus.where import merge

            print(merge(view.apply_sync(snapshot), size=len(self.order)).text())
            return None
        if not rest:
            msg = f"%chorus {action} needs an argument"
            raise ValueError(msg)
        if action == "pull":
            return view.pull(rest[0], block=True)
        name, _, expr = " ".join(rest).partition("=")
        view.push({name.strip(): shell.ev(expr)}, block=True)
        return None


def _host_and_pid() -> tuple[str, int]:
    import os
    import socket

    return socket.gethostname(), os.getpid()
