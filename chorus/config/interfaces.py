"""A host's network interfaces, parsed from what the host's own tools print.

Linux hosts are read with ``ip -j addr show`` and ``ip -j link show`` (iproute2's JSON);
macOS hosts with ``ifconfig -a``, ``networksetup -listallhardwareports`` (which device is
"Thunderbolt 1") and ``system_profiler SPThunderboltDataType -json`` (which Thunderbolt port
is cabled to which other Mac's port, as MLX's ``mlx.distributed_config`` reads it). Both
become the same plain dataclasses, so the topology code never knows the platform.

Only fields every kind of interface has are used: names, flags, MTU, MAC, ``link_type`` and
addresses. Fields that only some drivers report (a veth's ``link_netnsid``, ``linkinfo``)
are ignored on purpose: a real NIC or a Thunderbolt port does not have them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "Address",
    "HostInterfaces",
    "Interface",
    "InterfaceParseError",
    "parse_ifconfig",
    "parse_ip_json",
    "parse_macos",
]

KINDS = ("loopback", "ethernet", "thunderbolt", "bridge", "other")


class InterfaceParseError(ValueError):
    """A host's command output is not what the parser expects; the message names the source."""


@dataclass(frozen=True)
class Address:
    """One address of an interface.

    Attributes
    ----------
    ip
        The address without prefix or scope (``"10.0.0.1"``, ``"fe80::1"``).
    prefixlen
        The subnet's prefix length (30 for a point-to-point /30).
    tentative
        An IPv6 address still in duplicate address detection: not usable yet.
    """

    ip: str
    prefixlen: int
    tentative: bool = False

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        """The address with its prefix as an :mod:`ipaddress` object."""
        return ipaddress.ip_interface(f"{self.ip}/{self.prefixlen}")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The subnet the address lies in."""
        return self.interface.network

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.interface.version

    @property
    def is_link_local(self) -> bool:
        """``fe80::/10`` or ``169.254/16``: valid on one link only."""
        return self.interface.ip.is_link_local

    def __str__(self) -> str:
        return f"{self.ip}/{self.prefixlen}"


@dataclass(frozen=True)
class Interface:
    """One network interface of a host.

    Attributes
    ----------
    name
        The interface's name on its host (``eth1``, ``en2``, ``thunderbolt0``).
    mac
        Its hardware address, lower case; empty when it has none.
    up
        Administratively up (``ip link set X up``, ``ifconfig X up``).
    carrier
        Up with a live link: a cable is plugged in and the other end is up.
    mtu
        The MTU in bytes.
    kind
        One of ``loopback``, ``ethernet``, ``thunderbolt``, ``bridge``, ``other``.
    addresses
        Its IPv4 and IPv6 addresses.
    master
        The bridge it is a member of, if any (its addresses live on the bridge).
    port_id, peer_port_id
        macOS Thunderbolt only: the domain UUID of this port and of the port at the far end
        of its cable, which identify a cable even before it has addresses.
    """

    name: str
    mac: str = ""
    up: bool = False
    carrier: bool = False
    mtu: int = 0
    kind: str = "ethernet"
    addresses: tuple[Address, ...] = ()
    master: str = ""
    port_id: str = ""
    peer_port_id: str = ""

    @property
    def ipv4(self) -> tuple[Address, ...]:
        """Its IPv4 addresses, link-local (169.254/16) ones left out."""
        return tuple(a for a in self.addresses if a.version == 4 and not a.is_link_local)

    @property
    def link_local(self) -> Address | None:
        """Its IPv6 link-local address, if it has one."""
        found = [a for a in self.addresses if a.version == 6 and a.is_link_local]
        return found[0] if found else None

    @property
    def cable_candidate(self) -> bool:
        """Whether this could be one end of a point-to-point cable between two hosts."""
        return self.kind in ("ethernet", "thunderbolt") and not self.master


@dataclass(frozen=True)
class HostInterfaces:
    """Everything discovery learnt about one host's network.

    Attributes
    ----------
    host
        The name ssh reached it by (as given to ``--hosts``).
    system
        ``uname -s``: ``Linux`` or ``Darwin``.
    interfaces
        Its interfaces, in the order its tools listed them.
    ssh_address
        The address ssh connected to, when known: tells the management network apart.
    routes
        Linux only: ``(destination, device)`` of its IPv4 routes, for the mesh's host routes.
    """

    host: str
    system: str
    interfaces: tuple[Interface, ...]
    ssh_address: str = ""
    routes: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def get(self, name: str) -> Interface | None:
        """The interface called ``name``, or ``None``."""
        for interface in self.interfaces:
            if interface.name == name:
                return interface
        return None


# -- Linux: iproute2 JSON -------------------------------------------------------------------


def _load_json_list(text: str, source: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        msg = f"{source}: not JSON ({err.msg} at line {err.lineno}); is iproute2 older than 4.14?"
        raise InterfaceParseError(msg) from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        msg = f"{source}: expected a JSON list of interfaces"
        raise InterfaceParseError(msg)
    return data


def _linux_kind(entry: dict[str, Any], bridges: set[str]) -> str:
    name = str(entry.get("ifname", ""))
    link_type = entry.get("link_type", "")
    if link_type == "loopback" or "LOOPBACK" in entry.get("flags", []):
        return "loopback"
    if name.startswith("thunderbolt"):  # thunderbolt-net names its interfaces thunderbolt<N>
        return "thunderbolt"
    if name in bridges:
        return "bridge"
    if link_type == "ether":
        return "ethernet"
    return "other"


def _linux_addresses(entry: dict[str, Any], source: str) -> tuple[Address, ...]:
    addresses = []
    for info in entry.get("addr_info", []):
        if info.get("family") not in ("inet", "inet6"):
            continue
        try:
            address = Address(
                str(info["local"]), int(info["prefixlen"]), bool(info.get("tentative", False))
            )
            address.interface  # noqa: B018 - validates the address
        except (KeyError, TypeError, ValueError):
            msg = f"{source}: interface {entry.get('ifname')!r} has a malformed address {info!r}"
            raise InterfaceParseError(msg) from None
        addresses.append(address)
    return tuple(addresses)


def parse_ip_json(addr_text: str, link_text: str = "", source: str = "ip -j") -> list[Interface]:
    """Interfaces from ``ip -j addr show`` and (optionally) ``ip -j link show`` output.

    ``ip -j addr`` already carries each link's flags, MTU and MAC; ``ip -j link`` adds
    interfaces that ``addr`` may omit and is preferred for the link fields when both name
    an interface.

    Raises
    ------
    InterfaceParseError
        If either text is not iproute2's JSON; the message names ``source``.
    """
    addr_entries = _load_json_list(addr_text, f"{source} addr")
    link_entries = _load_json_list(link_text, f"{source} link")
    merged: dict[str, dict[str, Any]] = {}
    for entry in [*addr_entries, *link_entries]:
        name = entry.get("ifname")
        if not isinstance(name, str) or not name:
            msg = f"{source}: an interface without a name: {entry!r}"
            raise InterfaceParseError(msg)
        merged.setdefault(name, {}).update(entry)
        if "addr_info" in entry:
            merged[name]["addr_info"] = entry["addr_info"]
    bridges = {str(e["master"]) for e in merged.values() if e.get("master")}
    interfaces = []
    for name, entry in merged.items():
        flags = entry.get("flags", [])
        interfaces.append(
            Interface(
                name=name,
                mac=str(entry.get("address", "")).lower(),
                up="UP" in flags,
                carrier="LOWER_UP" in flags,
                mtu=int(entry.get("mtu", 0)),
                kind=_linux_kind(entry, bridges),
                addresses=_linux_addresses(entry, source),
                master=str(entry.get("master", "")),
            )
        )
    return interfaces


def parse_ip_routes(text: str, source: str = "ip -j -4 route") -> list[tuple[str, str]]:
    """``(destination, device)`` pairs from ``ip -j -4 route show``; ``default`` kept as is."""
    routes = []
    for entry in _load_json_list(text, source):
        dst, dev = entry.get("dst"), entry.get("dev")
        if isinstance(dst, str) and isinstance(dev, str):
            routes.append((dst, dev))
    return routes


# -- macOS: ifconfig, networksetup, system_profiler -----------------------------------------

_IFCONFIG_HEADER = re.compile(r"^(?P<name>[^\s:]+): flags=\w+<(?P<flags>[^>]*)> mtu (?P<mtu>\d+)")


def _netmask_prefix(mask: str, source: str) -> int:
    try:
        value = int(mask, 16) if mask.startswith("0x") else int(ipaddress.IPv4Address(mask))
    except ValueError:
        msg = f"{source}: bad netmask {mask!r}"
        raise InterfaceParseError(msg) from None
    prefix = value.bit_count()
    if value != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        msg = f"{source}: netmask {mask!r} is not contiguous"
        raise InterfaceParseError(msg)
    return prefix


def parse_ifconfig(text: str, source: str = "ifconfig") -> list[Interface]:
    """Interfaces from macOS (BSD) ``ifconfig -a`` output, kinds not yet known.

    Every interface comes back as ``other`` (``loopback`` for ``LOOPBACK``) and bridges as
    ``bridge``; :func:`parse_macos` sets the real kinds from ``networksetup``.
    """
    blocks: list[dict[str, Any]] = []
    members: dict[str, str] = {}
    for line in text.splitlines():
        header = _IFCONFIG_HEADER.match(line)
        if header:
            blocks.append(
                {
                    "name": header["name"],
                    "flags": header["flags"].split(","),
                    "mtu": int(header["mtu"]),
                    "mac": "",
                    "status": "",
                    "addresses": [],
                    "bridge": False,
                }
            )
            continue
        if not blocks or not line[:1].isspace():
            continue
        block = blocks[-1]
        words = line.split()
        if not words:
            continue
        where = f"{source}: {block['name']}"
        if words[0] == "ether" and len(words) > 1:
            block["mac"] = words[1].lower()
        elif words[0] == "inet" and len(words) > 1:
            prefix = 32
            if "netmask" in words:
                prefix = _netmask_prefix(words[words.index("netmask") + 1], where)
            block["addresses"].append(Address(words[1], prefix))
        elif words[0] == "inet6" and len(words) > 1:
            prefix = int(words[words.index("prefixlen") + 1]) if "prefixlen" in words else 128
            block["addresses"].append(Address(words[1].split("%")[0], prefix, "tentative" in words))
        elif words[0] == "status:" and len(words) > 1:
            block["status"] = words[1]
        elif words[0] == "member:" and len(words) > 1:
            members[words[1]] = block["name"]
        elif words[0] == "Configuration:":
            block["bridge"] = True
    interfaces = []
    for block in blocks:
        flags = block["flags"]
        for address in block["addresses"]:
            try:
                address.interface  # noqa: B018 - validates the address
            except ValueError:
                msg = f"{source}: {block['name']} has a malformed address {address}"
                raise InterfaceParseError(msg) from None
        carrier = block["status"] == "active" if block["status"] else "RUNNING" in flags
        kind = "loopback" if "LOOPBACK" in flags else "bridge" if block["bridge"] else "other"
        interfaces.append(
            Interface(
                name=block["name"],
                mac=block["mac"],
                up="UP" in flags,
                carrier="UP" in flags and carrier,
                mtu=block["mtu"],
                kind=kind,
                addresses=tuple(block["addresses"]),
                master=members.get(block["name"], ""),
            )
        )
    return interfaces


def parse_hardware_ports(text: str) -> dict[str, str]:
    """``networksetup -listallhardwareports``: hardware port name -> device (``en2``)."""
    ports: dict[str, str] = {}
    port = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Hardware Port":
            port = value.strip()
        elif key.strip() == "Device" and port:
            ports[port] = value.strip()
            port = ""
    return ports


def parse_thunderbolt(text: str, source: str = "system_profiler") -> dict[str, tuple[str, str]]:
    """``system_profiler SPThunderboltDataType -json``: receptacle -> (own UUID, peer UUID).

    Each Thunderbolt bus of a Mac is one receptacle with its own domain UUID; a cable to
    another Mac shows up as an item under it carrying that Mac's domain UUID. The peer UUID
    is empty for an unplugged port (or one with only a dock or a disk on it).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"{source}: not JSON ({err.msg} at line {err.lineno})"
        raise InterfaceParseError(msg) from None
    buses = data.get("SPThunderboltDataType") if isinstance(data, dict) else None
    if not isinstance(buses, list):
        msg = f'{source}: no "SPThunderboltDataType" list'
        raise InterfaceParseError(msg)
    ports: dict[str, tuple[str, str]] = {}
    for bus in buses:
        if not isinstance(bus, dict) or "domain_uuid_key" not in bus:
            continue
        tag = bus.get("receptacle_1_tag", {})
        receptacle = tag.get("receptacle_id_key") if isinstance(tag, dict) else None
        if receptacle is None:
            continue
        peers = [
            str(item["domain_uuid_key"])
            for item in bus.get("_items", [])
            if isinstance(item, dict) and "domain_uuid_key" in item
        ]
        ports[str(receptacle)] = (str(bus["domain_uuid_key"]), peers[0] if peers else "")
    return ports


def _macos_kind(interface: Interface, port_name: str) -> str:
    if interface.kind in ("loopback", "bridge"):
        return interface.kind
    if port_name.startswith("Thunderbolt Bridge"):
        return "bridge"
    if port_name.startswith("Thunderbolt"):
        return "thunderbolt"
    if port_name:  # Ethernet, Wi-Fi, USB 10/100/1000 LAN, ...
        return "ethernet"
    return "other"  # utun, awdl, llw, gif, stf, anpi, ap: virtual


def parse_macos(
    ifconfig_text: str,
    hardware_ports_text: str,
    thunderbolt_text: str,
    source: str = "macOS",
) -> list[Interface]:
    """Interfaces of a Mac, Thunderbolt ports marked with the UUIDs of both cable ends.

    Raises
    ------
    InterfaceParseError
        If ``ifconfig`` or ``system_profiler`` output cannot be parsed.
    """
    hardware = parse_hardware_ports(hardware_ports_text)
    port_of_device = {device: port for port, device in hardware.items()}
    thunderbolt = parse_thunderbolt(thunderbolt_text, f"{source}: system_profiler")
    device_uuids = {
        hardware[f"Thunderbolt {receptacle}"]: uuids
        for receptacle, uuids in thunderbolt.items()
        if f"Thunderbolt {receptacle}" in hardware
    }
    result = []
    for interface in parse_ifconfig(ifconfig_text, f"{source}: ifconfig"):
        port_id, peer_port_id = device_uuids.get(interface.name, ("", ""))
        result.append(
            replace(
                interface,
                kind=_macos_kind(interface, port_of_device.get(interface.name, "")),
                port_id=port_id,
                peer_port_id=peer_port_id,
            )
        )
    return result
