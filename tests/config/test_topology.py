"""Topology checks, hostfile proposals, set-up commands and pictures: pure, no machines.

Hosts are built as dataclasses the way discovery would return them: ``eth0`` on a shared
LAN (the switch) plus one interface per cable, each cable a /30 (or none, unaddressed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from chorus.config import dot, setup
from chorus.config.errors import ConfigError
from chorus.config.interfaces import Address, HostInterfaces, Interface, parse_ip_json, parse_macos
from chorus.config.proposal import propose
from chorus.config.topology import (
    Cable,
    End,
    Topology,
    analyse,
    check_ring,
    find_cables,
    find_switch,
    loose_interfaces,
    with_probe,
)
from chorus.hostfile import parse_hostfile

DATA = Path(__file__).parent / "data"


def make_hosts(
    count: int,
    pairs: Sequence[tuple[int, int]],
    *,
    switch: bool = True,
    addressed: bool = True,
) -> list[HostInterfaces]:
    """`count` Linux hosts h0.. with cable k between pairs[k] (interfaces ``lK-hM``)."""
    interfaces: list[list[Interface]] = [[] for _ in range(count)]
    for i in range(count):
        addresses = (Address(f"192.168.1.{i + 1}", 24),) if switch else ()
        interfaces[i].append(Interface("eth0", up=True, carrier=True, addresses=addresses))
    for k, (a, b) in enumerate(pairs):
        for me, other, last in ((a, b, 1), (b, a, 2)):
            addresses = [Address(f"fe80::{k}:{last}", 64)]
            if addressed:
                addresses.insert(0, Address(f"10.9.{k}.{last}", 30))
            interfaces[me].append(
                Interface(f"l{k}-h{other}", up=True, carrier=True, addresses=tuple(addresses))
            )
    return [
        HostInterfaces(f"h{i}", "Linux", tuple(interfaces[i]), f"192.168.1.{i + 1}")
        for i in range(count)
    ]


def topology_of(hosts: Sequence[HostInterfaces], probed: bool = True) -> Topology:
    switch = find_switch(hosts)
    cables = find_cables(hosts, switch)
    if probed:
        cables = [with_probe(cable, True) for cable in cables]
    return analyse(hosts, cables, switch)


RING = [(0, 1), (1, 2), (2, 3), (3, 0)]
MESH = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_valid_ring() -> None:
    topology = topology_of(make_hosts(4, RING))
    assert topology.kind == "ring"
    assert topology.ring.ok
    assert topology.ring.order == ("h0", "h1", "h2", "h3")
    assert not topology.mesh.ok
    assert len(topology.cables) == 4
    assert topology.switch is not None
    assert topology.switch.subnet == "192.168.1.0/24"
    assert {c.subnet for c in topology.cables} == {f"10.9.{k}.0/30" for k in range(4)}


def test_full_mesh() -> None:
    topology = topology_of(make_hosts(4, MESH))
    assert topology.kind == "mesh"
    assert topology.mesh.ok
    assert topology.ring.ok  # a full mesh holds rings; the given order is one
    assert topology.ring.order == ("h0", "h1", "h2", "h3")


def test_missing_cable() -> None:
    topology = topology_of(make_hosts(4, [(0, 1), (1, 2), (2, 3)]))
    assert topology.kind == "broken"
    assert topology.ring.missing == (("h3", "h0"),)
    assert topology.ring.problems == ("no cable between h3 and h0",)
    assert topology.mesh.missing == (("h0", "h2"), ("h0", "h3"), ("h1", "h3"))


def test_crossed_cable() -> None:
    # h1-h3 where h1-h2 belongs.
    topology = topology_of(make_hosts(4, [(0, 1), (1, 3), (2, 3), (3, 0)]))
    ring = topology.ring
    assert not ring.ok
    assert ring.missing == (("h1", "h2"),)
    assert [c.hosts for c in ring.extra] == [("h1", "h3")]
    assert ring.problems[0] == "no cable between h1 and h2"
    assert "the cable h1:l1-h3 — h3:l1-h1 probably belongs between" in ring.problems[1]


def test_doubled_cable_is_named() -> None:
    topology = topology_of(make_hosts(4, [(0, 1), (1, 3), (1, 3), (2, 3), (2, 0)]))
    # h0-h1-h3-h2 is a ring: the doubled h1-h3 cable is spare capacity, not an error.
    assert topology.ring.ok
    assert topology.ring.order == ("h0", "h1", "h3", "h2")
    broken = topology_of(make_hosts(4, [(0, 1), (1, 3), (1, 3), (2, 3)]))
    assert "no cable between h2 and h0" in broken.ring.problems
    assert "h1 has two cables to h3" in broken.ring.problems


def test_ring_in_another_order() -> None:
    topology = topology_of(make_hosts(4, [(0, 1), (1, 3), (3, 2), (2, 0)]))
    assert topology.ring.ok
    assert topology.ring.order == ("h0", "h1", "h3", "h2")


def test_switch_only() -> None:
    topology = topology_of(make_hosts(4, []))
    assert topology.kind == "switch"
    assert topology.cables == ()
    assert topology.switch is not None
    assert [str(e) for e in topology.switch.ends] == [
        f"h{i}:eth0 192.168.1.{i + 1}/24" for i in range(4)
    ]


def test_no_switch_no_cables() -> None:
    topology = topology_of(make_hosts(3, [], switch=False))
    assert topology.kind == "none"
    assert topology.switch is None


def test_two_hosts_one_cable_is_a_ring() -> None:
    topology = topology_of(make_hosts(2, [(0, 1)]))
    assert topology.ring.ok
    assert topology.switch is not None  # ssh goes through 192.168.1.0/24
    proposal = propose(topology)
    assert [e.ips for e in proposal.entries] == [("10.9.0.1",), ("10.9.0.2",)]


def test_failed_probe_is_not_a_cable() -> None:
    hosts = make_hosts(4, RING)
    switch = find_switch(hosts)
    cables = [
        with_probe(c, not c.joins("h1", "h2"), "timed out") for c in find_cables(hosts, switch)
    ]
    topology = analyse(hosts, cables, switch)
    assert not topology.ring.ok
    assert topology.ring.missing == (("h1", "h2"),)
    assert any("cannot reach h2 over it (timed out)" in note for note in topology.notes)


def test_unaddressed_ring() -> None:
    hosts = make_hosts(4, RING, addressed=False)
    switch = find_switch(hosts)
    cables = find_cables(hosts, switch)
    assert cables == []
    loose = loose_interfaces(hosts, cables, switch)
    assert {h: [i.name for i in v] for h, v in loose.items()} == {
        "h0": ["l0-h1", "l3-h3"],
        "h1": ["l0-h0", "l1-h2"],
        "h2": ["l1-h1", "l2-h3"],
        "h3": ["l2-h2", "l3-h0"],
    }


def test_big_ring_is_found_without_trying_every_order() -> None:
    count = 40
    order = [0, *range(count - 1, 0, -1)]  # cabled the other way round
    pairs = [(order[i], order[(i + 1) % count]) for i in range(count)]
    topology = topology_of(make_hosts(count, pairs))
    assert topology.ring.ok
    assert topology.ring.order == tuple(f"h{i}" for i in range(count))
    broken = check_ring([f"h{i}" for i in range(count)], list(topology.cables)[:-1])
    assert not broken.ok


# -- hostfiles --------------------------------------------------------------------------


def test_ring_hostfile_lists_the_address_facing_the_left_neighbour() -> None:
    topology = topology_of(make_hosts(4, [(0, 1), (1, 3), (3, 2), (2, 0)]))
    proposal = propose(topology)
    assert proposal.backend == "ring"
    assert proposal.over == "thunderbolt"
    # Ring h0-h1-h3-h2: each rank listens on its end of the cable from the previous rank.
    assert [(e.ssh, e.ips) for e in proposal.entries] == [
        ("h0", ("10.9.3.2",)),  # cable 3 = h2-h0, h0 is its b end
        ("h1", ("10.9.0.2",)),  # cable 0 = h0-h1
        ("h3", ("10.9.1.2",)),  # cable 1 = h1-h3
        ("h2", ("10.9.2.2",)),  # cable 2 = h3-h2
    ]
    text = json.dumps(proposal.to_json())
    parsed = parse_hostfile(text, "proposal")
    assert parsed.backend == "ring"
    assert parsed.hosts == proposal.entries


def test_two_cables_between_neighbours_are_both_listed() -> None:
    topology = topology_of(make_hosts(3, [(0, 1), (0, 1), (1, 2), (2, 0)]))
    proposal = propose(topology)
    assert proposal.entries[1].ips == ("10.9.0.2", "10.9.1.2")


def test_broken_ring_error_names_the_cable_and_the_way_out() -> None:
    topology = topology_of(make_hosts(4, [(0, 1), (1, 2), (2, 3)]))
    with pytest.raises(ConfigError) as info:
        propose(topology)
    message = str(info.value)
    assert "cannot form a ring over the cables: no cable between h3 and h0" in message
    assert "--over ethernet" in message
    assert "\n" not in message
    # The switch is still there for whoever asks for it.
    proposal = propose(topology, over="ethernet")
    assert [e.ips for e in proposal.entries] == [(f"192.168.1.{i + 1}",) for i in range(4)]


def test_switch_hostfile_is_the_default_without_cables() -> None:
    proposal = propose(topology_of(make_hosts(3, [])), backend="mesh")
    assert proposal.over == "ethernet"
    assert proposal.backend == "mesh"
    assert [e.ssh for e in proposal.entries] == ["h0", "h1", "h2"]
    with pytest.raises(ConfigError, match="no switch found"):
        propose(topology_of(make_hosts(3, [(0, 1)], switch=False)), over="ethernet")


def test_mesh_over_cables_needs_host_routes() -> None:
    topology = topology_of(make_hosts(4, MESH))
    proposal = propose(topology, backend="mesh")
    # Each rank advertises its address on the cable to the first other host.
    assert [e.ips for e in proposal.entries] == [
        ("10.9.0.1",),  # h0's end of h0-h1
        ("10.9.0.2",),  # h1's end of h0-h1
        ("10.9.1.2",),  # h2's end of h0-h2
        ("10.9.2.2",),  # h3's end of h0-h3
    ]
    routes = {(r.host, r.address, r.device) for r in proposal.routes}
    assert ("h2", "10.9.0.2", "l3-h1") in routes  # h2 reaches h1's address over h1-h2
    assert ("h3", "10.9.1.2", "l5-h2") in routes
    assert not any(r.host == "h0" for r in proposal.routes)  # h0 faces everyone directly
    assert len(routes) == 8
    with pytest.raises(ConfigError, match="cannot form a full mesh over the cables"):
        propose(topology_of(make_hosts(4, RING)), backend="mesh")


# -- set-up ---------------------------------------------------------------------------


def test_auto_setup_addresses_avoid_subnets_in_use() -> None:
    hosts = make_hosts(2, [(0, 1)], addressed=False)
    # Pretend h1 already uses the first /30 of the pool somewhere.
    taken = Interface("eth9", addresses=(Address("10.211.0.2", 30),))
    hosts[1] = HostInterfaces("h1", "Linux", (*hosts[1].interfaces, taken))
    assert find_cables(hosts, find_switch(hosts)) == []
    cable = Cable(End("h0", "l0-h1"), End("h1", "l0-h0"), "link-local", confirmed=True)
    (assigned,) = setup.assign_addresses(hosts, [cable])
    assert str(assigned.a.address) == "10.211.0.5/30"
    assert str(assigned.b.address) == "10.211.0.6/30"
    plan = setup.setup_commands(hosts, [assigned])
    assert [(p.host, p.commands) for p in plan] == [
        ("h0", ("ip addr add 10.211.0.5/30 dev l0-h1", "ip link set dev l0-h1 up")),
        ("h1", ("ip addr add 10.211.0.6/30 dev l0-h0", "ip link set dev l0-h0 up")),
    ]
    assert setup.format_commands(plan).startswith("on h0 (as root):\n  ip addr add")


def test_mesh_routes_already_in_place_are_not_repeated() -> None:
    hosts = make_hosts(4, MESH)
    proposal = propose(topology_of(hosts), backend="mesh")
    present = {r.host: (r.address, r.device) for r in proposal.routes}
    with_routes = [
        HostInterfaces(h.host, h.system, h.interfaces, h.ssh_address, (present[h.host],))
        if h.host in present
        else h
        for h in hosts
    ]
    missing = setup.missing_routes(with_routes, proposal.routes)
    assert len(missing) == len(proposal.routes) - len(present)
    commands = setup.setup_commands(hosts, [], missing)
    assert all(c.startswith("ip route replace ") for step in commands for c in step.commands)


def macos_hosts() -> list[HostInterfaces]:
    hosts = []
    for i in range(3):
        folder = DATA / "macos-ring"
        texts = [
            (folder / f"mac{i}-{part}").read_text()
            for part in ("ifconfig.txt", "hardwareports.txt", "thunderbolt.json")
        ]
        hosts.append(HostInterfaces(f"mac{i}", "Darwin", tuple(parse_macos(*texts))))
    return hosts


def test_macos_thunderbolt_ring_from_recorded_output() -> None:
    hosts = macos_hosts()
    topology = topology_of(hosts, probed=False)
    assert [(str(c.a), str(c.b), c.how) for c in topology.cables] == [
        ("mac0:en2", "mac1:en3", "thunderbolt"),
        ("mac0:en3", "mac2:en2", "thunderbolt"),
        ("mac1:en2", "mac2:en3", "thunderbolt"),
    ]
    assert topology.switch is not None
    assert topology.switch.subnet == "192.168.1.0/24"
    assert topology.kind == "broken"
    assert topology.ring.unaddressed == (("mac0", "mac1"), ("mac1", "mac2"), ("mac2", "mac0"))
    assert topology.ring.missing == ()
    assigned = setup.assign_addresses(hosts, topology.cables)
    plan = {p.host: p.commands for p in setup.setup_commands(hosts, assigned)}
    assert plan["mac0"] == (
        "ifconfig bridge0 down",
        "ifconfig en2 inet 10.211.0.1 netmask 255.255.255.252 up",
        "ifconfig en3 inet 10.211.0.5 netmask 255.255.255.252 up",
    )
    # Once addressed, the same Thunderbolt cables carry a ring.
    addressed = analyse(hosts, [with_probe(c, True) for c in assigned], topology.switch)
    assert addressed.ring.ok
    assert addressed.ring.order == ("mac0", "mac1", "mac2")


def test_recorded_linux_ring() -> None:
    hosts = []
    for i in range(4):
        folder = DATA / "linux-ring"
        addr = (folder / f"h{i}-addr.json").read_text()
        link = (folder / f"h{i}-link.json").read_text()
        hosts.append(HostInterfaces(f"h{i}", "Linux", tuple(parse_ip_json(addr, link))))
    topology = topology_of(hosts)
    assert topology.ring.ok
    assert topology.ring.order == ("h0", "h1", "h2", "h3")
    assert {(c.a.interface, c.b.interface) for c in topology.cables} == {
        ("l0-h1", "l0-h0"),
        ("l1-h2", "l1-h1"),
        ("l2-h3", "l2-h2"),
        ("l3-h3", "l3-h0"),
    }
    assert topology.switch is not None
    assert all(end.interface == "eth0" for end in topology.switch.ends)


# -- pictures -------------------------------------------------------------------------


def test_dot_marks_missing_and_misplaced_cables_red() -> None:
    topology = topology_of(make_hosts(4, [(0, 1), (1, 3), (2, 3), (3, 0)]))
    source = dot.build_graph(topology).source
    for host in ("h0", "h1", "h2", "h3"):
        assert f"\t{host} [label={host}]" in source
    assert "l0-h1 10.9.0.1/30 — l0-h0 10.9.0.2/30" in source
    lines = source.splitlines()
    misplaced = next(line for line in lines if "l1-h3 10.9.1.1/30" in line)
    assert "color=red" in misplaced
    missing = next(line for line in lines if "missing cable" in line)
    assert "h1 -- h2" in missing
    assert "color=red" in missing
    assert "style=dashed" in missing
    good = next(line for line in lines if "l0-h1 10.9.0.1/30" in line)
    assert "color=red" not in good


def test_dot_shows_ranks_and_renders(tmp_path: Path) -> None:
    topology = topology_of(make_hosts(3, [(0, 1), (1, 2), (2, 0)]))
    proposal = propose(topology)
    graph = dot.build_graph(topology, proposal=proposal)
    assert 'label="h1\nrank 1"' in graph.source
    assert "switch" in graph.source
    svg = tmp_path / "wiring.svg"
    dot.write(graph, str(svg))
    assert svg.read_text().lstrip().startswith("<?xml")
    source = tmp_path / "wiring.gv"
    dot.write(graph, str(source))
    assert source.read_text() == graph.source
    with pytest.raises(ConfigError, match=r"unknown picture format \.jpeg"):
        dot.write(graph, str(tmp_path / "wiring.jpeg"))
