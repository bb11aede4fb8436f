"""What the frameworks' own launchers would tell each rank: torchrun's variables, JAX's coordinator.

chorus starts the ranks, so it stands in for ``torchrun`` and for a cluster
JAX recognises. Every rank gets:

- torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``GROUP_WORLD_SIZE``, ``ROLE_RANK``,
  ``ROLE_WORLD_SIZE``, ``ROLE_NAME``, ``MASTER_ADDR``, ``MASTER_PORT``), so
  ``torch.distributed.init_process_group("gloo")`` needs no arguments and a
  script written for ``torchrun --nproc-per-node 4`` runs unchanged;
- ``GLOO_SOCKET_IFNAME``, the interface of the rank's address, when the rank
  is on another host: torch's gloo otherwise finds its address by resolving
  the host's name, and falls back to loopback where that fails;
- ``JAX_COORDINATOR_ADDRESS``, which ``jax.distributed.initialize()`` reads;
  the process count and id come from the cluster :mod:`chorus.startup`
  registers with JAX in every rank (JAX has no variables for them).

MLX's variables are written by :mod:`chorus.launch.placement`, as before.

A rendezvous address the user already set (``MASTER_ADDR``/``MASTER_PORT``
as a pair, ``JAX_COORDINATOR_ADDRESS``) is kept. The rank's identity is
always chorus's: inherited from the launcher's environment it would be the
same on every rank. Variables given for the job (``chorus launch -x``) are
applied after all of this and win.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# torchrun's role: one role, every rank in it.
ROLE_NAME = "default"


@dataclass(frozen=True)
class Rendezvous:
    """Where the frameworks' rank-0 services listen: a port each, reserved on rank 0's host."""

    host: str  # rank 0's address, as the other ranks reach it
    torch_port: int
    jax_port: int


@dataclass(frozen=True)
class NodePosition:
    """A rank's place among the ranks of its host, and its host's among the hosts."""

    local_rank: int
    local_size: int
    node_rank: int
    nodes: int


def node_positions(hosts: Sequence[str]) -> list[NodePosition]:
    """Each rank's position, given each rank's host (in rank order).

    Hosts are numbered by their first rank, as torchrun's ``GROUP_RANK``
    numbers nodes; ranks of a host by rank.
    """
    order: dict[str, int] = {}
    seen: dict[str, int] = {}
    counts: dict[str, int] = {}
    for host in hosts:
        order.setdefault(host, len(order))
        counts[host] = counts.get(host, 0) + 1
    positions = []
    for host in hosts:
        local = seen.get(host, 0)
        seen[host] = local + 1
        positions.append(NodePosition(local, counts[host], order[host], len(order)))
    return positions


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def framework_environment(
    rank: int,
    size: int,
    node: NodePosition,
    rendezvous: Rendezvous,
    inherited: Mapping[str, str],
    interface: str | None = None,
) -> dict[str, str]:
    """The frameworks' variables for one rank (see the module's docstring).

    ``inherited`` is the environment the rank starts from: rendezvous
    addresses found there are kept. ``interface``: the network interface
    of the rank's address (ranks on other hosts).
    """
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LOCAL_RANK": str(node.local_rank),
        "LOCAL_WORLD_SIZE": str(node.local_size),
        "GROUP_RANK": str(node.node_rank),
        "GROUP_WORLD_SIZE": str(node.nodes),
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(size),
        "ROLE_NAME": ROLE_NAME,
    }
    if "MASTER_ADDR" not in inherited and "MASTER_PORT" not in inherited:
        env["MASTER_ADDR"] = rendezvous.host
        env["MASTER_PORT"] = str(rendezvous.torch_port)
    if interface and "GLOO_SOCKET_IFNAME" not in inherited:
        env["GLOO_SOCKET_IFNAME"] = interface
    if "JAX_COORDINATOR_ADDRESS" not in inherited:
        env["JAX_COORDINATOR_ADDRESS"] = _host_port(rendezvous.host, rendezvous.jax_port)
    return env
