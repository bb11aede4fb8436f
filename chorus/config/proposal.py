"""The hostfile ``chorus config`` proposes, for a backend over the cables or the switch.

The file is MLX's JSON in its object form, so both ``chorus launch --hostfile`` and
``mlx.launch --hostfile`` read it::

    {"backend": "ring", "hosts": [{"ssh": "h0", "ips": ["10.0.0.2"]}, ...]}

Each entry is one rank, in rank order; ``ips`` are the addresses that rank listens on for
its peers.

**Ring over cables.** The ring backend has rank ``i`` dial rank ``i+1`` at every address
rank ``i+1`` lists (one striped socket per address), so the addresses a rank lists are
the ones its *left* neighbour must reach. Ranks therefore follow the cabled ring (the
order :func:`~chorus.config.topology.check_ring` found, which starts at the first host and
keeps the given order where the cables allow), and rank ``i`` lists its addresses on the
cable(s) towards rank ``i-1``. Over a point-to-point cable that address is only reachable
from the neighbour at the other end, which is exactly the one that dials it; with two
cables between neighbours both are listed and traffic is striped over both. This is the
choice MLX's ``mlx.distributed_config`` makes for its ring.

**Mesh over cables.** The mesh backend has every rank dial every other rank at the same
addresses, but a point-to-point address is only reachable from one neighbour. So each rank
lists one address (the one on its cable to the first other host in the given order), and
every other host needs a host route that sends that address down its own cable to the
rank: ``ip route replace 10.0.0.6/32 dev eth2``. Those routes are part of the set-up
(:mod:`chorus.config.setup`), printed, or applied with ``--auto-setup``.

**Over the switch** (``--over ethernet``) every rank lists its address on the shared subnet
and ranks keep the given order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chorus.backends import NETWORK_BACKENDS
from chorus.config.errors import ConfigError
from chorus.config.topology import Cable, Topology
from chorus.hostfile import HostEntry, Hostfile

__all__ = ["Proposal", "Route", "propose"]

BACKENDS = NETWORK_BACKENDS
OVER = ("thunderbolt", "ethernet")


@dataclass(frozen=True)
class Route:
    """A host route a mesh over cables needs: on ``host``, ``address`` goes out ``device``."""

    host: str
    address: str
    device: str
    via: str  # the rank's host the address belongs to, for messages


@dataclass(frozen=True)
class Proposal:
    """A hostfile and what it runs over.

    Attributes
    ----------
    backend
        ``ring`` or ``mesh``.
    over
        ``thunderbolt`` (the point-to-point cables) or ``ethernet`` (the switch).
    entries
        One per rank, in rank order.
    routes
        Host routes the mesh over cables needs (empty otherwise).
    """

    backend: str
    over: str
    entries: tuple[HostEntry, ...]
    routes: tuple[Route, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The hostfile's JSON object (MLX's format, with ``backend``)."""
        return Hostfile(self.entries, self.backend).to_json()


def _ordered(cables: list[Cable], host: str) -> list[str]:
    """``host``'s addresses on these cables, ordered by interface name."""
    ends = sorted((cable.end(host) for cable in cables), key=lambda end: end.interface)
    return [end.address.ip for end in ends if end.address is not None]


def _cable_problem(topology: Topology, backend: str) -> str:
    verdict = topology.ring if backend == "ring" else topology.mesh
    shape = "a ring" if backend == "ring" else "a full mesh"
    problems = list(verdict.problems)
    if not topology.has_cables:
        problems = ["no point-to-point cables found between the hosts"]
    fix = "plug in the missing cable(s)" if verdict.missing else "fix the cables"
    if verdict.unaddressed and not verdict.missing and not verdict.extra:
        fix = "run the set-up commands above on the hosts, or pass --auto-setup"
    switch = f" to use the switch ({topology.switch.subnet})" if topology.switch else ""
    return f"cannot form {shape} over the cables: {'; '.join(problems)}; {fix}, or use --over ethernet{switch}"


def _over_cables(topology: Topology, backend: str) -> Proposal:
    if backend == "ring":
        if not topology.ring.ok:
            raise ConfigError(_cable_problem(topology, backend))
        order = topology.ring.order
        entries = []
        for rank, host in enumerate(order):
            left = order[rank - 1] if len(order) > 1 else host
            ips = _ordered(topology.cables_between(host, left), host) if left != host else []
            entries.append(HostEntry(host, tuple(ips)))
        return Proposal("ring", "thunderbolt", tuple(entries))
    if not topology.mesh.ok:
        raise ConfigError(_cable_problem(topology, backend))
    hosts = topology.hosts
    advertised: dict[str, tuple[str, str]] = {}  # host -> (address, the peer it faces)
    for host in hosts:
        peer = next(h for h in hosts if h != host) if len(hosts) > 1 else host
        ips = _ordered(topology.cables_between(host, peer), host) if peer != host else []
        advertised[host] = (ips[0] if ips else "", peer)
    routes = []
    for host in hosts:
        address, faces = advertised[host]
        for other in hosts:
            if other in (host, faces) or not address:
                continue
            cable = sorted(
                topology.cables_between(other, host), key=lambda c: c.end(other).interface
            )
            routes.append(Route(other, address, cable[0].end(other).interface, host))
    mesh = tuple(HostEntry(h, (advertised[h][0],) if advertised[h][0] else ()) for h in hosts)
    return Proposal("mesh", "thunderbolt", mesh, tuple(routes))


def _over_switch(topology: Topology, backend: str) -> Proposal:
    switch = topology.switch
    if switch is None:
        msg = (
            "--over ethernet: the hosts share no subnet (no switch found); give every host an "
            "address in one subnet, or cable them and use --over thunderbolt"
        )
        raise ConfigError(msg)
    entries = []
    for host in topology.hosts:
        address = switch.end(host).address
        entries.append(HostEntry(host, (address.ip,) if address else ()))
    return Proposal(backend, "ethernet", tuple(entries))


def default_over(topology: Topology) -> str:
    """``thunderbolt`` when there are cables at all (broken ones get diagnosed), else ``ethernet``."""
    return "thunderbolt" if topology.has_cables or topology.switch is None else "ethernet"


def propose(topology: Topology, backend: str = "ring", over: str | None = None) -> Proposal:
    """The hostfile for ``backend`` over the cables (``thunderbolt``) or the switch.

    ``over=None`` picks the cables whenever any were found, so that a broken ring is
    reported rather than silently replaced by the switch, and the switch otherwise.

    Raises
    ------
    ConfigError
        When the chosen links cannot carry the backend; the message says exactly which
        cable is missing or miswired and what to do.
    """
    if backend not in BACKENDS:
        msg = f"--backend {backend}: expected one of {', '.join(BACKENDS)}"
        raise ConfigError(msg)
    chosen = over or default_over(topology)
    if chosen not in OVER:
        msg = f"--over {chosen}: expected one of {', '.join(OVER)}"
        raise ConfigError(msg)
    if chosen == "thunderbolt":
        return _over_cables(topology, backend)
    return _over_switch(topology, backend)
