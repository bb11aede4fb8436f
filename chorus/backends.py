"""The backends by name: one table for chorus.init(), the launcher, the kernel, the CLI and config.

Importing it costs nothing (no numpy, no compiled module): the launcher and
the CLI use it too.
"""

from __future__ import annotations

__all__ = [
    "LAUNCH_BACKENDS",
    "MLX_BACKENDS",
    "NETWORK_BACKENDS",
    "RANK_BACKENDS",
    "default_backend",
]

# What chorus.init() can connect, in the order backend="any" tries them.
RANK_BACKENDS = ("shm", "ring", "mesh", "mpi", "hier")
# What joins ranks on several hosts over TCP (and what `chorus config` proposes).
NETWORK_BACKENDS = ("ring", "mesh")
# What `chorus launch` and the kernel take: "any" lets each rank choose; "mpi"
# jobs are handed to mpirun.
LAUNCH_BACKENDS = (*RANK_BACKENDS, "any")
# MLX's names (an MLX hostfile's "backend"), mapped to the chorus backend that
# plays the same part.
MLX_BACKENDS = {"ring": "ring", "jaccl": "mesh", "jaccl-ring": "ring", "mpi": "mpi"}


def default_backend(asked: str | None, *, remote: bool, hostfile_backend: str = "") -> str:
    """The backend of a job: ``asked`` if given, else the hostfile's, else shm on one host.

    Across hosts, ``"any"``: each rank then takes ``hier`` when some host has
    several ranks (shared memory inside hosts, TCP between), else ``ring``.
    """
    if asked:
        return asked
    if hostfile_backend:
        return MLX_BACKENDS.get(hostfile_backend, hostfile_backend)
    return "any" if remote else "shm"
