"""``chorus config`` against emulated hosts (network namespaces, one real sshd each).

Run as a user runs it: ``python -m chorus config --hosts h0,h1,h2,h3 ...`` with HOME set
to the emulated hosts' ssh configuration. Cables are veth pairs with a /30 each; the
management bridge every host is on plays the switch.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chorus.hostfile import load_hostfile
from testbed.emulated_hosts import EmulatedHosts, Host
from tests.hosts.fixtures import EmulatedHostsFactory

# 2 MiB per rank: enough that the ring's traffic stands out in the interface counters.
ALLSUM = """\
import socket
import numpy as np
import chorus
group = chorus.init()
total = chorus.all_sum(np.full(1 << 18, float(group.rank() + 1)))
print(socket.gethostname(), group.rank(), group.size(), group.backend, total[0], total[-1])
"""


def run_chorus(
    hosts: EmulatedHosts, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chorus", *args],
        env=hosts.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def config(hosts: EmulatedHosts, *args: str) -> subprocess.CompletedProcess[str]:
    return run_chorus(hosts, "config", "--hosts", ",".join(hosts.names), *args)


def left_neighbour_address(hosts: EmulatedHosts, host: str, left: str) -> str:
    """``host``'s address on its cable to ``left``, without prefix."""
    for link in hosts.links:
        if {link.a, link.b} == {host, left}:
            return (link.a_ip if link.a == host else link.b_ip).split("/")[0]
    raise AssertionError(f"no cable between {host} and {left}")


def rx_bytes(host: Host, interface: str) -> int:
    out = host.exec(["ip", "-j", "-s", "link", "show", "dev", interface]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def assert_nothing_left(hosts: EmulatedHosts) -> None:
    """Only each host's sshd listener may run there once chorus config is done."""
    deadline = time.monotonic() + 5
    while True:
        left = {}
        for host in hosts.hosts:
            for pid in host.pids():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if b"sshd" in cmdline and b"-D" in cmdline:
                    continue
                left.setdefault(host.name, []).append(cmdline.decode()[:100])
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left on the hosts: {left}"


def test_ring_hostfile_carries_the_ring_over_the_cables(
    ring_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    hostfile = tmp_path / "hosts.json"
    picture = tmp_path / "wiring.svg"
    result = config(ring_hosts, "--output", str(hostfile), "--dot", str(picture))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "the cables form a ring: h0 - h1 - h2 - h3 - back to h0" in result.stderr
    assert picture.read_text().lstrip().startswith("<?xml")

    loaded = load_hostfile(hostfile)
    assert loaded.backend == "ring"
    names = [entry.ssh for entry in loaded.hosts]
    assert names == ["h0", "h1", "h2", "h3"]
    for rank, entry in enumerate(loaded.hosts):
        left = names[rank - 1]
        assert entry.ips == (left_neighbour_address(ring_hosts, entry.ssh, left),)
        assert entry.ips[0] != ring_hosts[rank].address  # not the management network

    cables = [(host, link.peer(host.name)[1]) for host in ring_hosts.hosts for link in host.links]
    before = [(host, name, rx_bytes(host, name)) for host, name in cables]
    launched = run_chorus(ring_hosts, "launch", "--hostfile", str(hostfile), "-c", ALLSUM)
    assert launched.returncode == 0, launched.stderr
    lines = sorted(launched.stdout.splitlines())
    assert len(lines) == 4
    for rank, line in enumerate(lines):
        assert line.split() == [f"[{rank}]", f"h{rank}", str(rank), "4", "ring", "10.0", "10.0"]
    # The ranks' traffic crossed every cable (each carries ~3 MiB of an all_sum of 2 MiB).
    for host, name, start in before:
        assert rx_bytes(host, name) - start > 1 << 20, f"{host.name}:{name} carried no ring"
    assert_nothing_left(ring_hosts)


# Sub-groups on the ring of cables (no routing between non-neighbours): the
# world ring, neighbour pairs in both orders, non-neighbours (parity), and
# uneven groups. Each child reports how long its split took; only the
# neighbour pairs' all_sum is large, so their cables' counters show where it went.
SPLITS = """\
import socket, time
import numpy as np
import chorus
g = chorus.init()
r, n = g.rank(), g.size()
host = socket.gethostname()
def check(name, child, members, big=False):
    size = 1 << 18 if big else 8
    got = chorus.all_sum(np.full(size, float(r + 1)), group=child)
    assert np.all(got == float(sum(m + 1 for m in members))), (name, got[:3])
    gathered = chorus.all_gather(np.array([r]), group=child)
    assert gathered.tolist() == members, (name, gathered)
for name, color, key in [
    ("pairs", r // 2, -1),
    ("pairs-reversed", r // 2, n - r),
    ("parity", r % 2, -1),
    ("three-and-one", int(r == 3), -1),
]:
    start = time.monotonic()
    child = g.split(color, key)
    took = time.monotonic() - start
    members = sorted((m for m in range(n) if {"pairs": m // 2, "pairs-reversed": m // 2,
                      "parity": m % 2, "three-and-one": int(m == 3)}[name] == color),
                     key=lambda m: (n - m) if key >= 0 else m)
    check(name, child, members, big=name == "pairs")
    print(name, r, child.rank(), child.size(), f"{took:.1f}", flush=True)
"""


def test_split_on_the_ring_of_cables_reaches_every_pair(
    ring_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    hostfile = tmp_path / "hosts.json"
    result = config(ring_hosts, "--output", str(hostfile))
    assert result.returncode == 0, result.stderr
    _splits_cross_their_own_cables(ring_hosts, hostfile)


def test_split_on_an_ipv6_ring_of_cables_reaches_every_pair(
    emulated_hosts: EmulatedHostsFactory, tmp_path: Path
) -> None:
    # The cables carry IPv6 only (a /126 each), the switch IPv4 only. Each rank is
    # listed at its IPv6 end of the cable from its left neighbour, as `chorus config`
    # lists a ring: neighbour pairs must meet on their own cable in both directions
    # (IPv6 networks in the split's route choice), the others on the IPv4 switch.
    hosts = emulated_hosts(4, "ring", address_links=False, ipv6_links=True)
    entries = []
    for rank, name in enumerate(hosts.names):
        left = hosts.names[rank - 1]
        link = next(link for link in hosts.links if {link.a, link.b} == {name, left})
        mine = link.a_ip6 if link.a == name else link.b_ip6
        entries.append({"ssh": name, "ips": [mine.split("/")[0]]})
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"backend": "ring", "hosts": entries}))
    assert [list(entry.ips) for entry in load_hostfile(hostfile).hosts] == [
        e["ips"] for e in entries
    ]
    _splits_cross_their_own_cables(hosts, hostfile)


def _splits_cross_their_own_cables(hosts: EmulatedHosts, hostfile: Path) -> None:
    """SPLITS over `hostfile` on the ring `hosts`: every split is quick, and only the
    neighbour pairs' large all_sums cross their cables."""
    cables = {
        frozenset((link.a, link.b)): [
            (host, link.peer(host.name)[1]) for host in hosts.hosts if host.name in (link.a, link.b)
        ]
        for link in hosts.links
    }
    before = {pair: sum(rx_bytes(h, name) for h, name in ends) for pair, ends in cables.items()}
    switch_before = sum(rx_bytes(h, h.mgmt_if) for h in hosts.hosts)
    launched = run_chorus(hosts, "launch", "--hostfile", str(hostfile), "-c", SPLITS)
    assert launched.returncode == 0, launched.stderr
    lines = [line.split() for line in launched.stdout.splitlines()]
    assert len(lines) == 16, launched.stdout
    for _label, name, _rank, _child_rank, _size, took in lines:
        # Unreachable addresses used to cost the 60 s set-up timeout.
        assert float(took) < 10, (name, launched.stdout)
    carried = {
        pair: sum(rx_bytes(h, name) for h, name in ends) - before[pair]
        for pair, ends in cables.items()
    }
    # The pairs' 2 MiB all_sums crossed their own cables, both ways; nothing else did,
    # and the switch carried only ssh and the small calls.
    assert carried[frozenset(("h0", "h1"))] > 1 << 20, carried
    assert carried[frozenset(("h2", "h3"))] > 1 << 20, carried
    assert carried[frozenset(("h1", "h2"))] < 1 << 19, carried
    switch = sum(rx_bytes(h, h.mgmt_if) for h in hosts.hosts) - switch_before
    assert switch < 1 << 20, f"{switch} bytes crossed the switch"
    assert_nothing_left(hosts)


# The world ring over the cables, then a parity split once h0 has lost its
# management address: h0 and h2 share no network, h1 and h3 still share the switch.
NO_PATH = """\
import os, sys, time
import numpy as np
import chorus
g = chorus.init()
r = g.rank()
assert chorus.all_sum(np.ones(4))[0] == 4
open(sys.argv[1] + f".{r}", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
start = time.monotonic()
try:
    child = g.split(r % 2)
    total = chorus.all_sum(np.ones(2), group=child)[0]
    print("OK", r, total, flush=True)
except chorus.PeerError as err:
    print("RAISED", r, f"{time.monotonic() - start:.1f}", str(err).replace("\\n", " "), flush=True)
"""


def test_split_names_a_pair_that_shares_no_network(
    emulated_hosts: EmulatedHostsFactory, tmp_path: Path
) -> None:
    hosts = emulated_hosts(4, "ring")
    written = config(hosts)
    assert written.returncode == 0, written.stderr
    entries = json.loads(written.stdout)["hosts"]
    hostfile = json.dumps([[f"{entry['ips'][0]}:29500"] for entry in entries])
    ready, go = tmp_path / "ready", tmp_path / "go"
    ranks = []
    for rank, host in enumerate(hosts.hosts):
        env = {
            **hosts.env(),
            "CHORUS_RANK": str(rank),
            "CHORUS_WORLD_SIZE": "4",
            "CHORUS_HOSTFILE": hostfile,
            "CHORUS_BACKEND": "ring",
            "CHORUS_TOKEN": "split-no-path",
            "CHORUS_TIMEOUT": "60",
        }
        ranks.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.netns,
                    sys.executable,
                    "-c",
                    NO_PATH,
                    str(ready),
                    str(go),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{ready}.{r}").exists() for r in range(4)):
            assert time.monotonic() < deadline, [p.poll() for p in ranks]
            time.sleep(0.05)
        hosts[0].exec(["ip", "-4", "addr", "flush", "dev", hosts[0].mgmt_if])
        go.touch()
        outs = [p.communicate(timeout=60) for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    lines = {}
    for rank, (out, err) in enumerate(outs):
        assert out.startswith(("OK", "RAISED")), (rank, out, err)
        lines[rank] = out.split(maxsplit=3)
    # h1 and h3 meet over the switch; h0 and h2 raise within seconds, naming the pair.
    assert lines[1][:3] == ["OK", "1", "2.0"], lines
    assert lines[3][:3] == ["OK", "3", "2.0"], lines
    for rank in (0, 2):
        word, _, took, text = lines[rank]
        assert word == "RAISED", lines
        assert float(took) < 15, lines
        assert "share no network and the parent group never connected them" in text, text
        assert "parent rank 0) and rank 1 (" in text, text
        assert "parent rank 2) share" in text, text


def test_switch_only(switch_hosts: EmulatedHosts) -> None:
    result = config(switch_hosts)
    assert result.returncode == 0, result.stderr
    assert "cables: none" in result.stderr
    assert "no cables between the hosts: only the switch" in result.stderr
    hostfile = json.loads(result.stdout)
    assert hostfile == {
        "backend": "ring",
        "hosts": [{"ssh": h.name, "ips": [h.address]} for h in switch_hosts.hosts],
    }
    assert_nothing_left(switch_hosts)


def test_miswired_ring_is_a_ring_in_another_order(emulated_hosts: EmulatedHostsFactory) -> None:
    hosts = emulated_hosts(4, "ring", pairs=[(0, 1), (1, 3), (3, 2), (2, 0)])
    result = config(hosts)
    assert result.returncode == 0, result.stderr
    assert "the cables form a ring: h0 - h1 - h3 - h2 - back to h0" in result.stderr
    entries = json.loads(result.stdout)["hosts"]
    order = [entry["ssh"] for entry in entries]
    assert order == ["h0", "h1", "h3", "h2"]
    for rank, entry in enumerate(entries):
        assert entry["ips"] == [left_neighbour_address(hosts, order[rank], order[rank - 1])]


def test_missing_cable_is_named_and_drawn_red(emulated_hosts: EmulatedHostsFactory) -> None:
    hosts = emulated_hosts(4, "ring", pairs=[(0, 1), (1, 2), (2, 3)])
    result = config(hosts, "--dot")
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("chorus: error: cannot form a ring over the cables:")
    assert "no cable between h3 and h0" in error
    assert "--over ethernet" in error
    source = result.stdout
    assert source.startswith("graph chorus {")
    for host in hosts.names:
        assert f"\t{host} [label={host}]" in source
    for link in hosts.links:
        assert f"{link.a_if} {link.a_ip} — {link.b_if} {link.b_ip}" in source
    missing = [line for line in source.splitlines() if "missing cable" in line]
    assert len(missing) == 1
    assert "h3 -- h0" in missing[0]
    assert "color=red" in missing[0]
    # The switch is a way out, as the message says.
    fallback = config(hosts, "--over", "ethernet")
    assert fallback.returncode == 0, fallback.stderr
    assert [e["ips"] for e in json.loads(fallback.stdout)["hosts"]] == [
        [h.address] for h in hosts.hosts
    ]


def test_auto_setup_addresses_unaddressed_cables(emulated_hosts: EmulatedHostsFactory) -> None:
    hosts = emulated_hosts(4, "ring", address_links=False)
    advice = config(hosts)
    assert advice.returncode != 0
    assert "4 cables have no addresses" in advice.stderr
    assert "set-up needed (run these, or pass --auto-setup):" in advice.stderr
    assert "ip addr add 10.211.0.1/30 dev l0-h1" in advice.stderr
    for host in hosts.hosts:  # only printed, nothing changed
        assert "10.211." not in host.exec(["ip", "-4", "addr"]).stdout

    setup = config(hosts, "--auto-setup")
    assert setup.returncode == 0, setup.stderr
    assert "set-up done (--auto-setup ran these):" in setup.stderr
    for host in hosts.hosts:
        addresses = host.exec(["ip", "-4", "-o", "addr"]).stdout
        for link in host.links:
            assert f"{link.peer(host.name)[1]}    inet 10.211." in addresses

    again = config(hosts)
    assert again.returncode == 0, again.stderr
    assert "the cables form a ring: h0 - h1 - h2 - h3 - back to h0" in again.stderr
    assert "set-up" not in again.stderr
    assert all(e["ips"][0].startswith("10.211.") for e in json.loads(again.stdout)["hosts"])
    assert_nothing_left(hosts)


def test_mesh_over_cables_gets_host_routes(
    emulated_hosts: EmulatedHostsFactory, tmp_path: Path
) -> None:
    # Three hosts in a ring are also a full mesh.
    hosts = emulated_hosts(3, "ring")
    hostfile = tmp_path / "mesh.json"
    result = config(hosts, "--backend", "mesh", "--auto-setup", "--output", str(hostfile))
    assert result.returncode == 0, result.stderr
    assert "ip route replace" in result.stderr
    loaded = load_hostfile(hostfile)
    assert loaded.backend == "mesh"
    # h2 reaches h1's advertised address (on the h0-h1 cable) over its own cable to h1.
    h1_address = loaded.hosts[1].ips[0]
    route = hosts[2].exec(["ip", "-j", "route", "get", h1_address]).stdout
    assert json.loads(route)[0]["dev"] == next(
        link.peer("h2")[1] for link in hosts[2].links if "h1" in (link.a, link.b)
    )
    launched = run_chorus(hosts, "launch", "--hostfile", str(hostfile), "-c", ALLSUM)
    assert launched.returncode == 0, launched.stderr
    assert sorted(line.split()[4] for line in launched.stdout.splitlines()) == ["mesh"] * 3
    assert all(line.endswith(" 6.0 6.0") for line in launched.stdout.splitlines())


def test_unreachable_host_is_named(switch_hosts: EmulatedHosts) -> None:
    # Nothing listens on port 22 of the test machine itself.
    result = run_chorus(switch_hosts, "config", "--hosts", "h0,127.0.0.1")
    assert result.returncode == 2
    assert "127.0.0.1: unreachable: connection refused" in result.stderr


def test_missing_tool_is_named(
    switch_hosts: EmulatedHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chorus.config.discover import run_command
    from chorus.config.errors import ConfigError
    from chorus.ssh import connect_all

    monkeypatch.setenv("HOME", str(switch_hosts.home))

    async def attempt() -> str:
        (conn,) = await connect_all(["h0"])
        try:
            await run_command(conn, "h0", "no-such-tool --version")
        except ConfigError as exc:
            return str(exc)
        finally:
            conn.close()
            await conn.wait_closed()
        return "no error"

    message = asyncio.run(attempt())
    assert message.startswith("h0: `no-such-tool` is not installed there")


def test_duplicate_hosts_are_refused(switch_hosts: EmulatedHosts) -> None:
    result = run_chorus(switch_hosts, "config", "--hosts", "h0,h1,h0")
    assert result.returncode == 2
    assert "lists h0 more than once" in result.stderr
