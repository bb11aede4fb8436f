"""Parsers of ``chorus config``, fed recorded command output (see data/README.md).

The Linux samples were recorded verbatim inside the emulated hosts; the macOS samples are
hand-written in the documented formats of ``ifconfig -a``, ``networksetup
-listallhardwareports`` and ``system_profiler SPThunderboltDataType -json`` for three Macs
in a Thunderbolt ring (no Mac was available to record them from).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chorus.config.interfaces import (
    Address,
    InterfaceParseError,
    parse_hardware_ports,
    parse_ifconfig,
    parse_ip_json,
    parse_macos,
    parse_thunderbolt,
)

DATA = Path(__file__).parent / "data"


def linux(layout: str, host: str) -> tuple[str, str]:
    folder = DATA / f"linux-{layout}"
    return (folder / f"{host}-addr.json").read_text(), (folder / f"{host}-link.json").read_text()


def macos(host: str) -> tuple[str, str, str]:
    folder = DATA / "macos-ring"
    return (
        (folder / f"{host}-ifconfig.txt").read_text(),
        (folder / f"{host}-hardwareports.txt").read_text(),
        (folder / f"{host}-thunderbolt.json").read_text(),
    )


def test_linux_ring_host() -> None:
    addr, link = linux("ring", "h1")
    interfaces = {i.name: i for i in parse_ip_json(addr, link)}
    assert set(interfaces) == {"lo", "eth0", "l0-h0", "l1-h2"}
    assert interfaces["lo"].kind == "loopback"
    cable = interfaces["l0-h0"]
    raw = next(e for e in json.loads(addr) if e["ifname"] == "l0-h0")
    assert cable.kind == "ethernet"
    assert cable.up
    assert cable.carrier
    assert cable.mtu == 1500
    assert cable.mac == raw["address"]
    assert [str(a) for a in cable.ipv4] == [
        f"{a['local']}/{a['prefixlen']}" for a in raw["addr_info"] if a["family"] == "inet"
    ]
    assert cable.ipv4[0].prefixlen == 30
    assert cable.link_local is not None
    assert cable.link_local.ip.startswith("fe80::")
    assert cable.cable_candidate
    assert interfaces["eth0"].ipv4[0].prefixlen == 24


def test_linux_fields_that_only_veths_have_are_not_needed() -> None:
    addr, _ = linux("ring", "h0")
    stripped = []
    for entry in json.loads(addr):
        for key in ("link_netnsid", "link_index", "linkinfo"):
            entry.pop(key, None)
        stripped.append(entry)
    assert parse_ip_json(json.dumps(stripped)) == parse_ip_json(addr)


def test_linux_link_only_interfaces_and_merging() -> None:
    addr, link = linux("ring", "h2")
    from_link = parse_ip_json("", link)
    # `ip -j link` has no addresses, but every interface and its state.
    assert {i.name for i in from_link} == {i.name for i in parse_ip_json(addr)}
    assert all(not i.addresses for i in from_link)
    merged = parse_ip_json(addr, link)
    assert [i.addresses for i in merged] == [i.addresses for i in parse_ip_json(addr)]


def test_linux_unaddressed_cables_keep_their_link_local_address() -> None:
    addr, link = linux("unaddressed", "h0")
    cables = [
        i for i in parse_ip_json(addr, link) if i.name.startswith("l") and i.kind != "loopback"
    ]
    assert len(cables) == 2
    for cable in cables:
        assert cable.ipv4 == ()
        assert cable.link_local is not None
        assert cable.carrier


def test_linux_bridge_members_and_down_links() -> None:
    entries = [
        {"ifname": "br0", "flags": ["BROADCAST", "UP", "LOWER_UP"], "mtu": 1500,
         "link_type": "ether", "address": "AA:BB:CC:00:00:01",
         "addr_info": [{"family": "inet", "local": "192.168.5.1", "prefixlen": 24}]},
        {"ifname": "enp1s0", "flags": ["BROADCAST", "UP", "LOWER_UP"], "master": "br0",
         "mtu": 9000, "link_type": "ether", "address": "aa:bb:cc:00:00:02", "addr_info": []},
        {"ifname": "thunderbolt0", "flags": ["BROADCAST", "NO-CARRIER"], "mtu": 65520,
         "link_type": "ether", "address": "02:5e:00:00:00:03", "addr_info": []},
        {"ifname": "wg0", "flags": ["POINTOPOINT", "UP", "LOWER_UP"], "mtu": 1420,
         "link_type": "none", "addr_info": [{"family": "inet", "local": "10.9.0.2", "prefixlen": 32}]},
    ]  # fmt: skip
    found = {i.name: i for i in parse_ip_json(json.dumps(entries))}
    assert found["br0"].kind == "bridge"
    assert found["br0"].mac == "aa:bb:cc:00:00:01"
    assert found["enp1s0"].master == "br0"
    assert not found["enp1s0"].cable_candidate
    assert found["thunderbolt0"].kind == "thunderbolt"
    assert not found["thunderbolt0"].up
    assert not found["thunderbolt0"].carrier
    assert found["wg0"].kind == "other"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Usage: ip [ OPTIONS ] OBJECT", "not JSON"),
        ('{"ifname": "eth0"}', "expected a JSON list"),
        ('[{"flags": []}]', "without a name"),
        (json.dumps([{"ifname": "eth0", "addr_info": [
            {"family": "inet", "local": "10.0.0.300", "prefixlen": 24}]}]), "malformed address"),
    ],
)  # fmt: skip
def test_linux_malformed_output_names_the_source(text: str, message: str) -> None:
    with pytest.raises(InterfaceParseError, match=message) as info:
        parse_ip_json(text, source="h3: ip -j")
    assert "h3: ip -j" in str(info.value)


def test_macos_thunderbolt_ports_and_their_cables() -> None:
    interfaces = {i.name: i for i in parse_macos(*macos("mac0"), source="mac0")}
    assert interfaces["lo0"].kind == "loopback"
    assert interfaces["en0"].kind == "ethernet"
    assert interfaces["en0"].ipv4 == (Address("192.168.1.20", 24),)
    assert interfaces["en0"].link_local == Address("fe80::14a2:3b7c:9d1e:5f00", 64)
    assert interfaces["en1"].kind == "ethernet"  # Wi-Fi, off
    assert not interfaces["en1"].carrier
    assert interfaces["bridge0"].kind == "bridge"
    assert interfaces["utun0"].kind == "other"
    assert interfaces["gif0"].kind == "other"
    ports = {name: interfaces[name] for name in ("en2", "en3", "en4")}
    for port in ports.values():
        assert port.kind == "thunderbolt"
        assert port.master == "bridge0"
        assert port.ipv4 == ()
        assert port.port_id
    assert ports["en2"].carrier
    assert ports["en4"].peer_port_id == ""  # unplugged
    assert not ports["en4"].carrier

    # The ring: mac0 port 1 to mac1 port 2, port 2 to mac2 port 1.
    mac1 = {i.name: i for i in parse_macos(*macos("mac1"))}
    mac2 = {i.name: i for i in parse_macos(*macos("mac2"))}
    assert ports["en2"].peer_port_id == mac1["en3"].port_id
    assert mac1["en3"].peer_port_id == ports["en2"].port_id
    assert ports["en3"].peer_port_id == mac2["en2"].port_id


def test_macos_pieces() -> None:
    ifconfig, hardware, thunderbolt = macos("mac2")
    assert parse_hardware_ports(hardware) == {
        "Ethernet": "en0",
        "Thunderbolt Bridge": "bridge0",
        "Thunderbolt 1": "en2",
        "Thunderbolt 2": "en3",
        "Thunderbolt 3": "en4",
        "Wi-Fi": "en1",
    }
    receptacles = parse_thunderbolt(thunderbolt)
    assert sorted(receptacles) == ["1", "2", "3"]
    assert all(own for own, _ in receptacles.values())
    assert receptacles["3"][1] == ""
    raw = parse_ifconfig(ifconfig)
    assert {i.name for i in raw} >= {"lo0", "en0", "en2", "en3", "en4", "bridge0", "utun0"}


def test_ifconfig_netmasks_and_point_to_point() -> None:
    text = (
        "en5: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 9000\n"
        "\tether 36:8a:2c:41:00:08\n"
        "\tinet 10.211.0.1 netmask 0xfffffffc broadcast 10.211.0.3\n"
        "\tinet6 fe80::1c:2d%en5 prefixlen 64 tentative scopeid 0x9\n"
        "\tstatus: active\n"
        "utun3: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> mtu 1380\n"
        "\tinet 10.8.0.2 --> 10.8.0.1 netmask 0xffffffff\n"
    )
    en5, utun3 = parse_ifconfig(text)
    assert en5.mtu == 9000
    assert en5.ipv4 == (Address("10.211.0.1", 30),)
    assert en5.link_local == Address("fe80::1c:2d", 64, tentative=True)
    assert utun3.ipv4 == (Address("10.8.0.2", 32),)
    assert utun3.carrier  # no status line: RUNNING says it
    with pytest.raises(InterfaceParseError, match="not contiguous"):
        parse_ifconfig(text.replace("0xfffffffc", "0xff00ff00"), "mac9: ifconfig")


def test_system_profiler_malformed() -> None:
    with pytest.raises(InterfaceParseError, match="not JSON"):
        parse_thunderbolt("No Thunderbolt information found.")
    with pytest.raises(InterfaceParseError, match="SPThunderboltDataType"):
        parse_thunderbolt('{"SPUSBDataType": []}')
