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

import os
import socket
from typing import Any

from chorus.backends import default_backend
from chorus.env import RankEnv
from chorus.launch.placement import new_job

# Listening sockets an engine keeps for chorus.init() (module state on the engine).
_LISTENERS: list[socket.socket] = []

_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")


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
    }


def _engine_init(env: dict[str, str]) -> tuple[int, int, str]:
    """On an engine: join the chorus job and predefine chorus, np, rank, size."""
    os.environ.update(env)
    import numpy as np

    import chorus

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
        pending.append((rank, engine, client[engine].apply_async(_engine_init, env)))
    for rank, engine, result in pending:
        try:
            result.get(timeout=timeout + 10)
        except Exception as err:
            host = infos[engine]["hostname"]
            msg = f"rank {rank} (engine {engine} on {host}) could not join chorus: {err}"
            raise RuntimeError(msg) from err
    return order
