"""``--auto-setup``: give unaddressed cables /30 addresses (and a mesh its host routes).

Without ``--auto-setup`` the same commands are printed for the user to run. Cables are
found before they have addresses by :mod:`chorus.config.probe` (IPv6 link-local tracing on
any OS, Thunderbolt port UUIDs on macOS); each gets the next free /30 of
:data:`ADDRESS_POOL` that overlaps no subnet or route any host already has.

The addresses are set with ``ip addr add`` (Linux) or ``ifconfig`` (macOS) and do not
survive a reboot: make them permanent in the hosts' network configuration (netplan,
NetworkManager, systemd-networkd, or System Settings on a Mac) once the wiring is right.
Commands run as root, through ``sudo -n`` for other users (which needs passwordless sudo).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from chorus.config.discover import Log, run_command
from chorus.config.errors import ConfigError
from chorus.config.interfaces import Address, HostInterfaces
from chorus.config.proposal import Route
from chorus.config.topology import Cable, End
from chorus.together import run_together

if TYPE_CHECKING:
    import asyncssh

__all__ = [
    "ADDRESS_POOL",
    "HostCommands",
    "apply",
    "assign_addresses",
    "format_commands",
    "missing_routes",
    "setup_commands",
]

# Private addresses that home and office networks rarely use (192.168/16 and 10.0/16 are).
ADDRESS_POOL = "10.211.0.0/16"
PREFIX = 30


@dataclass(frozen=True)
class HostCommands:
    """The shell commands one host needs, to run as root."""

    host: str
    commands: tuple[str, ...]


def _used_networks(hosts: Sequence[HostInterfaces]) -> list[ipaddress.IPv4Network]:
    used = []
    for host in hosts:
        for interface in host.interfaces:
            for address in interface.addresses:
                network = address.network
                if isinstance(network, ipaddress.IPv4Network):
                    used.append(network)
        for destination, _ in host.routes:
            try:
                network = ipaddress.ip_network(destination, strict=False)
            except ValueError:  # "default"
                continue
            if isinstance(network, ipaddress.IPv4Network):
                used.append(network)
    return used


def _free_subnets(hosts: Sequence[HostInterfaces], pool: str) -> Iterator[ipaddress.IPv4Network]:
    used = _used_networks(hosts)
    for subnet in ipaddress.IPv4Network(pool).subnets(new_prefix=PREFIX):
        if not any(subnet.overlaps(other) for other in used):
            yield subnet


def assign_addresses(
    hosts: Sequence[HostInterfaces], cables: Sequence[Cable], pool: str = ADDRESS_POOL
) -> list[Cable]:
    """The cables with no address on either end, each given a free /30 (``.1`` on ``a``).

    Raises
    ------
    ConfigError
        When the pool has no free /30 left.
    """
    bare = [c for c in cables if c.present and c.a.address is None and c.b.address is None]
    free = _free_subnets(hosts, pool)
    assigned = []
    for cable in bare:
        subnet = next(free, None)
        if subnet is None:
            msg = f"no free /{PREFIX} left in {pool} for the cable {cable}"
            raise ConfigError(msg)
        first, second = list(subnet.hosts())[:2]
        assigned.append(
            replace(
                cable,
                a=End(cable.a.host, cable.a.interface, Address(str(first), PREFIX)),
                b=End(cable.b.host, cable.b.interface, Address(str(second), PREFIX)),
            )
        )
    return assigned


def missing_routes(hosts: Sequence[HostInterfaces], routes: Sequence[Route]) -> list[Route]:
    """The mesh's host routes not yet in place (a Mac's routes are not read: all of them)."""
    known = {host.host: set(host.routes) for host in hosts}
    return [
        route
        for route in routes
        if (route.address, route.device) not in known.get(route.host, set())
        and f"{route.address}/32" not in {dst for dst, _ in known.get(route.host, set())}
    ]


def _linux_commands(
    host: HostInterfaces, cables: Sequence[Cable], routes: Sequence[Route]
) -> list[str]:
    commands = []
    for cable in cables:
        end = cable.end(host.host)
        interface = host.get(end.interface)
        if interface is not None and interface.master:
            commands.append(f"ip link set dev {shlex.quote(end.interface)} nomaster")
        commands.append(f"ip addr add {end.address} dev {shlex.quote(end.interface)}")
        commands.append(f"ip link set dev {shlex.quote(end.interface)} up")
    for route in routes:
        commands.append(f"ip route replace {route.address}/32 dev {shlex.quote(route.device)}")
    return commands


def _macos_commands(
    host: HostInterfaces, cables: Sequence[Cable], routes: Sequence[Route]
) -> list[str]:
    commands = []
    bridges = set()
    for cable in cables:
        interface = host.get(cable.end(host.host).interface)
        if interface is not None and interface.master:
            bridges.add(interface.master)
    # A Thunderbolt port inside the "Thunderbolt Bridge" cannot hold its own address.
    commands += [f"ifconfig {shlex.quote(bridge)} down" for bridge in sorted(bridges)]
    for cable in cables:
        end = cable.end(host.host)
        assert end.address is not None
        netmask = ipaddress.IPv4Network(f"0.0.0.0/{end.address.prefixlen}").netmask
        name = shlex.quote(end.interface)
        commands.append(f"ifconfig {name} inet {end.address.ip} netmask {netmask} up")
    for route in routes:
        device = shlex.quote(route.device)
        commands.append(
            f"route -n add -host {route.address} -interface {device} || "
            f"route -n change -host {route.address} -interface {device}"
        )
    return commands


def setup_commands(
    hosts: Sequence[HostInterfaces], cables: Sequence[Cable], routes: Sequence[Route] = ()
) -> list[HostCommands]:
    """Per host (those with anything to do), the commands that address ``cables``
    (as :func:`assign_addresses` returned them) and add ``routes``."""
    plan = []
    for host in hosts:
        mine = [c for c in cables if host.host in c.hosts]
        own_routes = [r for r in routes if r.host == host.host]
        if not mine and not own_routes:
            continue
        make = _macos_commands if host.system == "Darwin" else _linux_commands
        plan.append(HostCommands(host.host, tuple(make(host, mine, own_routes))))
    return plan


def format_commands(plan: Sequence[HostCommands]) -> str:
    """The plan as a person runs it: ``on h0 (as root):`` and the commands, indented."""
    lines = []
    for step in plan:
        lines.append(f"on {step.host} (as root):")
        lines += [f"  {command}" for command in step.commands]
    return "\n".join(lines)


async def apply(
    conns: Mapping[str, asyncssh.SSHClientConnection],
    plan: Sequence[HostCommands],
    log: Log | None = None,
) -> None:
    """Run each host's commands there (through ``sudo -n`` unless ssh logs in as root).

    Raises
    ------
    ConfigError
        Naming the host and the command that failed (and asking for passwordless sudo
        when sudo refused).
    """

    async def on(step: HostCommands) -> None:
        # One round trip per host: `sh -ex` stops at the first failure and traces each
        # command, so the error names the one that failed.
        script = shlex.quote("\n".join(step.commands))
        line = f'if [ "$(id -u)" = 0 ]; then sh -exc {script}; else sudo -n sh -exc {script}; fi'
        shown = "; ".join(step.commands)
        try:
            await run_command(conns[step.host], step.host, line, log, shown=shown)
        except ConfigError as exc:
            text = str(exc)
            if "sudo" in text or "not permitted" in text:
                text += " (--auto-setup needs root or passwordless sudo there)"
            raise ConfigError(text) from exc

    await run_together([on(step) for step in plan])
