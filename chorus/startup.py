"""Run at the start of every Python process of a chorus rank (``chorus-ranks.pth``).

JAX finds its process count and id only through the cluster environments
it knows (Slurm, Open MPI, Kubernetes, ...), never from variables of its
own: so that ``jax.distributed.initialize()`` works with no arguments in a
chorus rank, this module tells JAX about chorus's ranks, as one more such
environment, first in its list. It does so when JAX's cluster module is
imported, so a rank that never imports JAX pays nothing but this module.

Ranks that mpirun started (``chorus launch --backend mpi``) learn their
rank from Open MPI's variables; torch's ``env://`` rendezvous reads
torchrun's, so they are written here from Open MPI's (``chorus launch``
gives the job ``MASTER_ADDR``/``MASTER_PORT``). JAX recognises Open MPI by
itself.

The ``.pth`` file installed beside chorus imports this module only in a
chorus rank (``CHORUS_RANK`` or ``CHORUS_BACKEND`` set), and nothing here
may fail the process: a JAX whose internals moved keeps its own behaviour.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

# The module whose import registers JAX's cluster environments.
JAX_CLUSTERS = "jax._src.clusters"


# torchrun's variables from Open MPI's, for ranks mpirun started.
_FROM_OPEN_MPI = {
    "RANK": "OMPI_COMM_WORLD_RANK",
    "WORLD_SIZE": "OMPI_COMM_WORLD_SIZE",
    "LOCAL_RANK": "OMPI_COMM_WORLD_LOCAL_RANK",
    "LOCAL_WORLD_SIZE": "OMPI_COMM_WORLD_LOCAL_SIZE",
    "ROLE_RANK": "OMPI_COMM_WORLD_RANK",
    "ROLE_WORLD_SIZE": "OMPI_COMM_WORLD_SIZE",
}


def run() -> None:
    """Set up this rank's process for the frameworks (called from the .pth file)."""
    environ = os.environ
    if "CHORUS_RANK" not in environ:
        if environ.get("CHORUS_BACKEND") == "mpi" and "OMPI_COMM_WORLD_RANK" in environ:
            for name, source in _FROM_OPEN_MPI.items():
                if source in environ:
                    environ[name] = environ[source]
        return
    if JAX_CLUSTERS in sys.modules:
        _register_jax_cluster(sys.modules[JAX_CLUSTERS])
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(JAX_CLUSTERS, _register_jax_cluster))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` right after module ``name`` is first imported."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; the other finders find the module
        spec: importlib.machinery.ModuleSpec | None = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None:
            return None
        if spec.loader is None:
            return spec
        spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self.loader.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.then(module)


def _register_jax_cluster(clusters: ModuleType) -> None:
    """Add chorus's ranks to JAX's cluster environments, ahead of the others.

    Ahead: a chorus job started inside a Slurm allocation is also "Slurm"
    to JAX, whose process ids would then be Slurm's, not the ranks'.
    """
    base = getattr(clusters, "ClusterEnv", None)
    known = getattr(base, "_cluster_types", None)
    if base is None or not isinstance(known, list):
        return

    class ChorusCluster(base):  # type: ignore[misc, valid-type]
        """The ranks of a chorus job (``chorus launch``, the chorus kernel, the magics)."""

        name = "chorus"

        @classmethod
        def is_env_present(cls) -> bool:
            return "CHORUS_RANK" in os.environ and "CHORUS_WORLD_SIZE" in os.environ

        @classmethod
        def get_coordinator_address(
            cls, timeout_secs: int | None, override_coordinator_port: str | None
        ) -> str:
            # chorus sets JAX_COORDINATOR_ADDRESS, which JAX reads before asking.
            address = os.environ.get("JAX_COORDINATOR_ADDRESS", "")
            if override_coordinator_port and address:
                address = f"{address.rsplit(':', 1)[0]}:{override_coordinator_port}"
            return address

        @classmethod
        def get_process_count(cls) -> int:
            return int(os.environ["CHORUS_WORLD_SIZE"])

        @classmethod
        def get_process_id(cls) -> int:
            return int(os.environ["CHORUS_RANK"])

        @classmethod
        def get_local_process_id(cls) -> int | None:
            return None  # devices are chosen by CUDA_VISIBLE_DEVICES, not by JAX

    # Defining the subclass appended it (ClusterEnv.__init_subclass__): move it first.
    if ChorusCluster in known:
        known.remove(ChorusCluster)
    known.insert(0, ChorusCluster)
