"""How hosts are wired: cables, a shared switch, and whether the cables form a ring or mesh.

Everything here is pure: it works on :class:`~chorus.config.interfaces.HostInterfaces`
and on probe results, so the tests need no machines.

A *cable* is a point-to-point link between two hosts, found one of three ways:

* ``subnet``: one interface on each of two hosts holds an IPv4 address in the same subnet,
  and no other host has an address in it (a /30 or /31, or any small subnet used by
  exactly those two hosts);
* ``thunderbolt``: macOS says Thunderbolt port U of one Mac is cabled to port V of another;
* ``link-local``: an interface without a matching address reached the IPv6 link-local
  address of another host's interface (see :mod:`chorus.config.probe`).

A *switch* is a subnet every host has an address in (the management LAN, or a switch
between the machines). The cables are then checked for the shape a backend needs: a ring
(each rank talks to its two neighbours) or a full mesh (every pair cabled). When the shape
is broken, the diagnosis names exactly which cable is missing or in the wrong place, by
comparing with the ring that needs the fewest changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from chorus.config.interfaces import Address, HostInterfaces, Interface

__all__ = [
    "Cable",
    "End",
    "Switch",
    "Topology",
    "Verdict",
    "analyse",
    "check_mesh",
    "check_ring",
    "find_cables",
    "find_switch",
    "loose_interfaces",
    "with_probe",
]

# Up to this many hosts the diagnosis of a broken ring tries every ring ((n-1)!/2 of them).
EXHAUSTIVE_RING_LIMIT = 9
# A switch's subnet holds more than two addresses: /30 and /31 are point-to-point by nature.
SWITCH_MAX_PREFIX = 29


@dataclass(frozen=True)
class End:
    """One end of a cable: a host, its interface, and its IPv4 address on the cable."""

    host: str
    interface: str
    address: Address | None = None

    @property
    def label(self) -> str:
        """``"eth1 10.0.0.1/30"`` (the interface alone when it has no address)."""
        return f"{self.interface} {self.address}" if self.address else self.interface

    def __str__(self) -> str:
        return f"{self.host}:{self.label}"


@dataclass(frozen=True)
class Cable:
    """A point-to-point link between two hosts.

    Attributes
    ----------
    a, b
        Its ends, ``a`` on the host listed first.
    how
        How it was found: ``subnet``, ``thunderbolt`` or ``link-local``.
    confirmed
        ``True`` when a probe crossed it, ``False`` when the probe failed, ``None`` when it
        was not probed (yet).
    detail
        Why the probe failed.
    """

    a: End
    b: End
    how: str = "subnet"
    confirmed: bool | None = None
    detail: str = ""

    @property
    def hosts(self) -> tuple[str, str]:
        """The two hosts it joins."""
        return self.a.host, self.b.host

    @property
    def addressed(self) -> bool:
        """Both ends hold an address, in one subnet: IP traffic can cross it."""
        if self.a.address is None or self.b.address is None:
            return False
        return self.a.address.network == self.b.address.network

    @property
    def usable(self) -> bool:
        """Addressed and not refuted by a probe."""
        return self.addressed and self.confirmed is not False

    @property
    def present(self) -> bool:
        """Physically there, as far as anyone knows (a failed probe says it is not)."""
        return self.confirmed is not False

    @property
    def subnet(self) -> str:
        """Its subnet (``10.0.0.0/30``), or ``""`` when it is not addressed."""
        return str(self.a.address.network) if self.addressed and self.a.address else ""

    def joins(self, x: str, y: str) -> bool:
        """Whether it joins hosts ``x`` and ``y`` (either way round)."""
        return {x, y} == {self.a.host, self.b.host}

    def end(self, host: str) -> End:
        """The end on ``host``."""
        if host == self.a.host:
            return self.a
        if host == self.b.host:
            return self.b
        msg = f"{host} is not on the cable {self}"
        raise ValueError(msg)

    def __str__(self) -> str:
        return f"{self.a} — {self.b}"


@dataclass(frozen=True)
class Switch:
    """A subnet every host has an address in; ``ends`` lists them in host order."""

    subnet: str
    ends: tuple[End, ...]
    confirmed: bool | None = None
    detail: str = ""

    def end(self, host: str) -> End:
        """The host's interface and address on the switch."""
        for end in self.ends:
            if end.host == host:
                return end
        msg = f"{host} is not on the switch {self.subnet}"
        raise ValueError(msg)


@dataclass(frozen=True)
class Verdict:
    """Whether the cables give a backend the shape it needs, and if not, why.

    Attributes
    ----------
    ok
        The shape is complete and every cable it uses carries addresses.
    order
        The hosts in ring order (ring) or as given (mesh); for a broken ring, the order of
        the ring that needs the fewest changes.
    missing
        Host pairs that need a cable they do not have.
    unaddressed
        Host pairs whose only cables have no addresses (``--auto-setup`` fixes them).
    extra
        Cables the closest ring leaves unused: plugged into the wrong host, probably.
    problems
        One sentence per problem, for people.
    """

    ok: bool
    order: tuple[str, ...]
    missing: tuple[tuple[str, str], ...] = ()
    unaddressed: tuple[tuple[str, str], ...] = ()
    extra: tuple[Cable, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The ring's neighbour pairs, in order (``(h0, h1), ..., (h3, h0)``)."""
        n = len(self.order)
        if n < 2:
            return []
        if n == 2:
            return [(self.order[0], self.order[1])]
        return [(self.order[i], self.order[(i + 1) % n]) for i in range(n)]


@dataclass(frozen=True)
class Topology:
    """Everything known about the wiring of a set of hosts.

    Attributes
    ----------
    hosts
        The hosts, as given.
    cables
        Every cable found, probe failures included.
    switch
        The shared subnet, if there is one.
    ring, mesh
        The verdicts for the two shapes.
    notes
        Other findings worth telling (a cable whose ends sit in different subnets, ...).
    """

    hosts: tuple[str, ...]
    cables: tuple[Cable, ...]
    switch: Switch | None
    ring: Verdict
    mesh: Verdict
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        """``mesh``, ``ring``, ``switch``, ``broken`` (cables that form neither) or ``none``."""
        if len(self.hosts) >= 4 and self.mesh.ok:
            return "mesh"
        if self.ring.ok and len(self.hosts) >= 2:
            return "ring"
        if self.has_cables:
            return "broken"
        return "switch" if self.switch is not None else "none"

    @property
    def has_cables(self) -> bool:
        """Whether any cable was found (working or not)."""
        return bool(self.cables)

    def cables_between(self, x: str, y: str, *, usable: bool = True) -> list[Cable]:
        """The cables joining ``x`` and ``y`` (only usable ones unless ``usable=False``)."""
        return [c for c in self.cables if c.joins(x, y) and (c.usable or not usable)]


# -- finding cables and the switch ----------------------------------------------------------


def _ipv4_ends(hosts: Sequence[HostInterfaces]) -> list[tuple[End, Interface]]:
    ends = []
    for host in hosts:
        for interface in host.interfaces:
            if interface.kind == "loopback":
                continue
            for address in interface.ipv4:
                ends.append((End(host.host, interface.name, address), interface))
    return ends


def find_switch(hosts: Sequence[HostInterfaces]) -> Switch | None:
    """The subnet every host has an address in, if any.

    With several, the one ssh reached the hosts through wins. With two hosts a subnet is
    only a switch when ssh went through it: otherwise it is more likely a cable.
    """
    if not hosts:
        return None
    by_subnet: dict[str, dict[str, End]] = {}
    for end, _ in _ipv4_ends(hosts):
        assert end.address is not None
        if end.address.prefixlen > SWITCH_MAX_PREFIX:
            continue
        by_subnet.setdefault(str(end.address.network), {}).setdefault(end.host, end)
    names = [host.host for host in hosts]
    ssh_addresses = {host.ssh_address for host in hosts if host.ssh_address}
    candidates = []
    for subnet, ends in by_subnet.items():
        if set(ends) != set(names):
            continue
        via_ssh = any(
            end.address is not None and end.address.ip in ssh_addresses for end in ends.values()
        )
        if len(names) >= 3 or via_ssh:
            candidates.append((not via_ssh, subnet, ends))
    if not candidates:
        return None
    _, subnet, ends = min(candidates, key=lambda item: item[0])
    return Switch(subnet, tuple(ends[name] for name in names))


def find_cables(hosts: Sequence[HostInterfaces], switch: Switch | None = None) -> list[Cable]:
    """Candidate cables: subnets shared by exactly two hosts, and cabled Thunderbolt ports.

    Every pairing is a candidate even when a host has two interfaces in one subnet; the
    probe tells which one is real.
    """
    order = {host.host: index for index, host in enumerate(hosts)}
    by_subnet: dict[str, list[End]] = {}
    for end, interface in _ipv4_ends(hosts):
        assert end.address is not None
        subnet = str(end.address.network)
        if (switch is not None and subnet == switch.subnet) or not interface.cable_candidate:
            continue
        by_subnet.setdefault(subnet, []).append(end)
    cables: list[Cable] = []
    for ends in by_subnet.values():
        if len({end.host for end in ends}) != 2:
            continue
        for x, y in itertools.combinations(ends, 2):
            if x.host != y.host:
                a, b = (x, y) if order[x.host] <= order[y.host] else (y, x)
                cables.append(Cable(a, b, "subnet"))
    paired = {(c.a.host, c.a.interface) for c in cables} | {
        (c.b.host, c.b.interface) for c in cables
    }
    # Thunderbolt ports know their peer even before any address is set.
    ports: dict[str, tuple[HostInterfaces, Interface]] = {}
    for host in hosts:
        for interface in host.interfaces:
            if interface.port_id:
                ports[interface.port_id] = (host, interface)
    for host in hosts:
        for interface in host.interfaces:
            if not interface.peer_port_id or interface.peer_port_id not in ports:
                continue
            peer_host, peer = ports[interface.peer_port_id]
            if order[peer_host.host] < order[host.host] or peer_host.host == host.host:
                continue  # each cable once, from the end on the host listed first
            if (host.host, interface.name) in paired or (peer_host.host, peer.name) in paired:
                continue
            a = End(host.host, interface.name, _first(interface.ipv4))
            b = End(peer_host.host, peer.name, _first(peer.ipv4))
            cables.append(Cable(a, b, "thunderbolt"))
    return cables


def _first(addresses: Sequence[Address]) -> Address | None:
    return addresses[0] if addresses else None


def loose_interfaces(
    hosts: Sequence[HostInterfaces], cables: Iterable[Cable], switch: Switch | None
) -> dict[str, list[Interface]]:
    """Per host, the live cable-like interfaces no known cable or switch accounts for.

    These may be cables without (matching) addresses; the link-local probe finds out.
    """
    taken = {(c.a.host, c.a.interface) for c in cables} | {
        (c.b.host, c.b.interface) for c in cables
    }
    if switch is not None:
        taken |= {(end.host, end.interface) for end in switch.ends}
    loose: dict[str, list[Interface]] = {}
    for host in hosts:
        for interface in host.interfaces:
            if (
                interface.cable_candidate
                and interface.carrier
                and (host.host, interface.name) not in taken
            ):
                loose.setdefault(host.host, []).append(interface)
    return loose


# -- checking shapes ------------------------------------------------------------------------


def _pair_key(x: str, y: str) -> frozenset[str]:
    return frozenset((x, y))


def _connections(cables: Iterable[Cable]) -> tuple[set[frozenset[str]], set[frozenset[str]]]:
    """Host pairs with a present cable, and pairs with a usable (addressed) one."""
    present: set[frozenset[str]] = set()
    usable: set[frozenset[str]] = set()
    for cable in cables:
        if cable.a.host == cable.b.host:
            continue
        if cable.present:
            present.add(_pair_key(*cable.hosts))
        if cable.usable:
            usable.add(_pair_key(*cable.hosts))
    return present, usable


def _ring_pairs(order: Sequence[str]) -> list[tuple[str, str]]:
    n = len(order)
    if n == 2:
        return [(order[0], order[1])]
    return [(order[i], order[(i + 1) % n]) for i in range(n)] if n > 2 else []


def _orient(order: Sequence[str], hosts: Sequence[str]) -> tuple[str, ...]:
    """A ring starting at the first host, turning towards the earlier-listed neighbour."""
    if len(order) < 3:
        return tuple(order)
    index = {host: i for i, host in enumerate(hosts)}
    start = order.index(hosts[0])
    rotated = [*order[start:], *order[:start]]
    if index[rotated[-1]] < index[rotated[1]]:
        rotated = [rotated[0], *reversed(rotated[1:])]
    return tuple(rotated)


def _hamiltonian_ring(hosts: Sequence[str], edges: set[frozenset[str]]) -> list[str] | None:
    """A ring through every host over ``edges``, the given order first; ``None`` if none."""
    if all(_pair_key(x, y) in edges for x, y in _ring_pairs(hosts)):
        return list(hosts)
    neighbours = {h: [o for o in hosts if o != h and _pair_key(h, o) in edges] for h in hosts}
    if any(not neighbours[h] for h in hosts):
        return None
    path = [hosts[0]]
    seen = {hosts[0]}
    budget = [200_000]  # a search this long means "no ring"; the diagnosis takes over

    def extend() -> bool:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        if len(path) == len(hosts):
            return len(hosts) <= 2 or _pair_key(path[-1], path[0]) in edges
        for nxt in neighbours[path[-1]]:
            if nxt not in seen:
                path.append(nxt)
                seen.add(nxt)
                if extend():
                    return True
                seen.discard(path.pop())
        return False

    return path if extend() else None


def _closest_ring(hosts: Sequence[str], present: set[frozenset[str]]) -> list[str]:
    """The ring order that reuses the most existing cables (given order on ties)."""
    if len(hosts) > EXHAUSTIVE_RING_LIMIT:
        return list(hosts)
    best, best_score = list(hosts), -1
    first, rest = hosts[0], list(hosts[1:])
    for perm in itertools.permutations(rest):
        if len(perm) > 1 and rest.index(perm[0]) > rest.index(perm[-1]):
            continue  # the same ring walked the other way
        order = [first, *perm]
        score = sum(_pair_key(x, y) in present for x, y in _ring_pairs(order))
        if score > best_score:
            best, best_score = order, score
    return best


def _count_word(n: int) -> str:
    return {1: "a", 2: "two", 3: "three", 4: "four"}.get(n, str(n))


def check_ring(hosts: Sequence[str], cables: Sequence[Cable]) -> Verdict:
    """Whether the cables form a ring through every host, and if not, what is wrong.

    A valid ring may use any cables (a full mesh holds many rings); its order starts at
    the first host and keeps the given order when that is itself a ring. For a broken
    ring, the ring that reuses the most cables is the reference: the pairs it needs that
    have no cable are *missing*, cables it leaves unused are *extra* (probably plugged
    into the wrong host), and a pair joined twice while another pair has none is named
    too ("h1 has two cables to h3").
    """
    hosts = list(hosts)
    if len(hosts) < 2:
        return Verdict(True, tuple(hosts))
    present, usable = _connections(cables)
    ring = _hamiltonian_ring(hosts, usable)
    if ring is not None:
        return Verdict(True, _orient(ring, hosts))
    physical = _hamiltonian_ring(hosts, present)
    reference = physical if physical is not None else _closest_ring(hosts, present)
    order = _orient(reference, hosts)
    pairs = _ring_pairs(order)
    missing = tuple((x, y) for x, y in pairs if _pair_key(x, y) not in present)
    unaddressed = tuple(
        (x, y) for x, y in pairs if _pair_key(x, y) in present and _pair_key(x, y) not in usable
    )
    wanted = {_pair_key(x, y) for x, y in pairs}
    extra = tuple(c for c in cables if c.present and _pair_key(*c.hosts) not in wanted)
    problems = [f"no cable between {x} and {y}" for x, y in missing]
    if missing:
        counts: dict[frozenset[str], list[Cable]] = {}
        for cable in cables:
            if cable.present:
                counts.setdefault(_pair_key(*cable.hosts), []).append(cable)
        ring_text = "-".join(order)
        for cable in extra:
            where = f"{cable.a.host}:{cable.a.interface} — {cable.b.host}:{cable.b.interface}"
            stuck = [h for h in cable.hosts if any(h in pair for pair in missing)]
            if stuck:
                host = stuck[0]
                want = next(y if x == host else x for x, y in missing if host in (x, y))
                problems.append(
                    f"the cable {where} probably belongs between {host} and {want} "
                    f"(the ring {ring_text} does not use it)"
                )
            else:
                problems.append(f"the cable {where} is not part of the ring {ring_text}")
        for pair, joined in counts.items():
            if len(joined) > 1:
                x, y = sorted(pair, key=hosts.index)
                problems.append(f"{x} has {_count_word(len(joined))} cables to {y}")
    problems += _unaddressed_problem(unaddressed)
    return Verdict(False, order, missing, unaddressed, extra, tuple(problems))


def _unaddressed_problem(pairs: Sequence[tuple[str, str]]) -> list[str]:
    if not pairs:
        return []
    listed = ", ".join(f"{x}-{y}" for x, y in pairs)
    if len(pairs) == 1:
        return [f"the cable {listed} has no addresses"]
    return [f"{len(pairs)} cables have no addresses ({listed})"]


def check_mesh(hosts: Sequence[str], cables: Sequence[Cable]) -> Verdict:
    """Whether every pair of hosts has an addressed cable; if not, which pairs lack one."""
    present, usable = _connections(cables)
    pairs = list(itertools.combinations(hosts, 2))
    missing = tuple(p for p in pairs if _pair_key(*p) not in present)
    unaddressed = tuple(
        p for p in pairs if _pair_key(*p) in present and _pair_key(*p) not in usable
    )
    problems = [f"no cable between {x} and {y}" for x, y in missing]
    problems += _unaddressed_problem(unaddressed)
    ok = not missing and not unaddressed
    return Verdict(ok, tuple(hosts), missing, unaddressed, (), tuple(problems))


def _notes(cables: Sequence[Cable]) -> list[str]:
    notes = []
    for cable in cables:
        if cable.confirmed is False:
            notes.append(
                f"{cable.a} and {cable.b} share a subnet but {cable.a.host} cannot reach "
                f"{cable.b.host} over it ({cable.detail or 'no answer'}): check that cable"
            )
        elif cable.a.address and cable.b.address and not cable.addressed:
            notes.append(
                f"{cable} joins two different subnets: give both ends addresses in one subnet"
            )
        elif (cable.a.address is None) != (cable.b.address is None):
            bare = cable.a if cable.a.address is None else cable.b
            notes.append(f"{cable}: {bare.host}'s end has no address")
    return notes


def analyse(
    hosts: Sequence[HostInterfaces],
    cables: Sequence[Cable],
    switch: Switch | None,
) -> Topology:
    """Check the cables (probe results included) as a ring and as a mesh."""
    names = [host.host for host in hosts]
    index = {name: i for i, name in enumerate(names)}
    cables = sorted(
        cables, key=lambda c: (index.get(c.a.host, 0), index.get(c.b.host, 0), c.a.interface)
    )
    return Topology(
        hosts=tuple(names),
        cables=tuple(cables),
        switch=switch,
        ring=check_ring(names, cables),
        mesh=check_mesh(names, cables),
        notes=tuple(_notes(cables)),
    )


def with_probe(cable: Cable, reached: bool, detail: str = "") -> Cable:
    """The cable marked as confirmed or refuted by a probe."""
    return replace(cable, confirmed=reached, detail="" if reached else detail)
