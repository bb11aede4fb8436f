"""Confirm links with real connections, made by the hosts themselves over ssh.

A shared subnet only says two interfaces *could* be cabled together; a probe says they
are. Each host runs one small Python program (its own interpreter, over the existing ssh
connection) that opens a TCP connection to every address it should reach, from the
interface it should reach it through (bound to the source address, and to the device
with ``SO_BINDTODEVICE`` where allowed). Port 22 is the target: an accepted connection and
a refused one (a TCP reset) both prove the far end answered over that link; a time-out or
"no route to host" means it did not. ``ping`` is not needed (many hosts lack it) and
nothing listens on the far side.

Unaddressed cables are found the same way through IPv6 link-local addresses: every
interface that is up with a carrier gets an ``fe80::`` address from the kernel (Linux and
macOS alike, real NICs, Thunderbolt networking and veths), and a connection to
``fe80::x%eth1`` can only succeed if the interface owning ``fe80::x`` is on the far end of
the cable in ``eth1``: the kernel resolves the address by neighbour discovery on that one
link. So each loose interface of one host is tried against the link-local address of each
loose interface of every other host; the pairs that answer are cables.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from chorus.config.discover import Log, all_or_nothing, run_command
from chorus.config.interfaces import HostInterfaces, Interface
from chorus.config.topology import Cable, End, Switch, with_probe

if TYPE_CHECKING:
    import asyncssh

__all__ = [
    "Target",
    "confirm_cables",
    "confirm_switch",
    "find_link_local_cables",
    "probe",
    "reached",
]

CABLE_TIMEOUT = 3.0
# Neighbour discovery gives up after about 3 s (3 solicitations, 1 s apart).
LINK_LOCAL_TIMEOUT = 4.0
PROBE_PORT = 22

# Runs on the host: connect to every target at once, report each outcome as JSON.
# argv: targets as [[key, address, port, source, device], ...], then the time limit.
PROBE_SCRIPT = r"""
import errno, json, os, select, socket, sys, time
targets = json.loads(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
results, waiting = {}, {}

def start(key, address, port, source, device):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if device and hasattr(socket, "SO_BINDTODEVICE"):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            except OSError:
                pass  # needs CAP_NET_RAW; the source address still picks the link
        if source:
            sock.bind((source, 0))
        if family == socket.AF_INET6:
            target = (address, port, 0, socket.if_nametoindex(device) if device else 0)
        else:
            target = (address, port)
        code = sock.connect_ex(target)
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    if code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
        waiting[sock] = key
        return None
    sock.close()
    return code

def outcome(code):
    return "ok" if code == 0 else "refused" if code == errno.ECONNREFUSED else os.strerror(code)

pending = [tuple(t) for t in targets]
while (pending or waiting) and time.monotonic() < deadline:
    later = []
    for target in pending:
        code = start(*target)
        if code == errno.EADDRNOTAVAIL:
            later.append(target)  # our IPv6 address is still tentative (DAD): again soon
        elif code is not None:
            results[target[0]] = outcome(code)
    pending = later
    left = max(0.0, deadline - time.monotonic())
    if waiting:
        _, ready, _ = select.select([], list(waiting), [], min(0.2, left))
        for sock in ready:
            results[waiting.pop(sock)] = outcome(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            sock.close()
    elif pending:
        time.sleep(min(0.2, left))
for sock, key in waiting.items():
    results[key] = "timed out"
    sock.close()
for target in pending:
    results[target[0]] = os.strerror(errno.EADDRNOTAVAIL)
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Target:
    """One connection to try: from ``host`` to ``address``, out of ``source``/``device``."""

    host: str
    address: str
    source: str = ""
    device: str = ""
    port: int = PROBE_PORT


def reached(outcome: str) -> bool:
    """Whether a probe's outcome proves the far end answered (accepted or refused)."""
    return outcome in ("ok", "refused")


def _python_command(python: str, targets: list[list[object]], timeout: float) -> str:
    """A shell line that runs the probe with ``python``, else with ``python3`` from PATH."""
    run = shlex.join(["-c", PROBE_SCRIPT, json.dumps(targets), f"{timeout:g}"])
    return (
        f"P={shlex.quote(python)}; "
        'if [ ! -x "$P" ]; then P=$(command -v python3) || exit 127; fi; '
        f'exec "$P" {run}'
    )


async def probe(
    conns: Mapping[str, asyncssh.SSHClientConnection],
    targets: Sequence[Target],
    *,
    python: str = "",
    timeout: float = CABLE_TIMEOUT,
    log: Log | None = None,
) -> list[str]:
    """Try every target (each host runs its own at once); their outcomes, in order.

    An outcome is ``"ok"``, ``"refused"`` (both: :func:`reached`), ``"timed out"`` or the
    error's text (``"No route to host"``).

    Raises
    ------
    ConfigError
        When a host cannot run the probe (no Python there).
    """
    by_host: dict[str, list[int]] = {}
    for index, target in enumerate(targets):
        by_host.setdefault(target.host, []).append(index)
    outcomes = ["not probed"] * len(targets)

    async def run_on(host: str, indices: list[int]) -> None:
        rows: list[list[object]] = [
            [str(i), targets[i].address, targets[i].port, targets[i].source, targets[i].device]
            for i in indices
        ]
        command = _python_command(python or sys.executable, rows, timeout)
        shown = f"python3 -c <probe: {len(rows)} connection(s), {timeout:g} s>"
        if log is not None:
            for i in indices:
                t = targets[i]
                via = " ".join(x for x in (t.source and f"from {t.source}", t.device) if x)
                log(f"{host}: probe {t.address} port {t.port} {via}".rstrip())
        out = await run_command(conns[host], host, command, log, shown=shown, timeout=timeout + 30)
        try:
            results = json.loads(out.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            results = {}
        for i in indices:
            outcomes[i] = str(results.get(str(i), "no result from the probe"))

    await all_or_nothing([run_on(host, indices) for host, indices in by_host.items()])
    return outcomes


async def confirm_cables(
    conns: Mapping[str, asyncssh.SSHClientConnection],
    cables: Sequence[Cable],
    *,
    python: str = "",
    log: Log | None = None,
) -> list[Cable]:
    """The cables, each addressed one marked confirmed or refuted by a probe from its a end."""
    targets, probed = [], []
    for index, cable in enumerate(cables):
        if cable.addressed and cable.a.address and cable.b.address:
            targets.append(
                Target(cable.a.host, cable.b.address.ip, cable.a.address.ip, cable.a.interface)
            )
            probed.append(index)
    outcomes = await probe(conns, targets, python=python, log=log)
    result = list(cables)
    for index, outcome in zip(probed, outcomes, strict=True):
        result[index] = with_probe(cables[index], reached(outcome), outcome)
    return result


async def confirm_switch(
    conns: Mapping[str, asyncssh.SSHClientConnection],
    switch: Switch,
    *,
    python: str = "",
    log: Log | None = None,
) -> Switch:
    """The switch, confirmed when every host reaches the next one's address on it."""
    ends = switch.ends
    if len(ends) < 2:
        return replace(switch, confirmed=True)
    targets = []
    for i, end in enumerate(ends):
        peer = ends[(i + 1) % len(ends)]
        assert end.address is not None
        assert peer.address is not None
        targets.append(Target(end.host, peer.address.ip, end.address.ip, end.interface))
    outcomes = await probe(conns, targets, python=python, log=log)
    failed = [
        f"{t.host} cannot reach {t.address} ({o})"
        for t, o in zip(targets, outcomes, strict=True)
        if not reached(o)
    ]
    return replace(switch, confirmed=not failed, detail="; ".join(failed))


async def find_link_local_cables(
    conns: Mapping[str, asyncssh.SSHClientConnection],
    hosts: Sequence[HostInterfaces],
    loose: Mapping[str, Sequence[Interface]],
    *,
    python: str = "",
    log: Log | None = None,
) -> tuple[list[Cable], list[str]]:
    """Cables between loose interfaces, traced through IPv6 link-local addresses.

    Returns the cables found (confirmed) and notes about interfaces that could not be
    traced (no link-local address) or that reach several hosts (a switch, not a cable).
    """
    notes = []
    names = [host.host for host in hosts]
    traceable: dict[str, list[Interface]] = {}
    for host in names:
        for interface in loose.get(host, []):
            if interface.link_local is None:
                notes.append(
                    f"{host}: {interface.name} is up but has no IPv6 link-local address, so "
                    "its cable cannot be traced: enable IPv6 on it or give it an address"
                )
            else:
                traceable.setdefault(host, []).append(interface)
    targets, pairs = [], []
    for i, host in enumerate(names):
        for other in names[i + 1 :]:
            for mine in traceable.get(host, []):
                for theirs in traceable.get(other, []):
                    assert theirs.link_local is not None
                    targets.append(Target(host, theirs.link_local.ip, device=mine.name))
                    pairs.append((host, mine, other, theirs))
    if not targets:
        return [], notes
    outcomes = await probe(conns, targets, python=python, timeout=LINK_LOCAL_TIMEOUT, log=log)
    found = []
    for (host, mine, other, theirs), outcome in zip(pairs, outcomes, strict=True):
        if reached(outcome):
            a = End(host, mine.name, mine.ipv4[0] if mine.ipv4 else None)
            b = End(other, theirs.name, theirs.ipv4[0] if theirs.ipv4 else None)
            found.append(Cable(a, b, "link-local", confirmed=True))
    counts: dict[tuple[str, str], list[Cable]] = {}
    for cable in found:
        for end in (cable.a, cable.b):
            counts.setdefault((end.host, end.interface), []).append(cable)
    shared = {key for key, cables in counts.items() if len(cables) > 1}
    for host, name in sorted(shared):
        peers = sorted({c.b.host if c.a.host == host else c.a.host for c in counts[(host, name)]})
        notes.append(
            f"{host}: {name} reaches {', '.join(peers)} directly: that is a switch "
            "without addresses, not a cable; address it by hand to use it with --over ethernet"
        )
    cables = [
        c
        for c in found
        if (c.a.host, c.a.interface) not in shared and (c.b.host, c.b.interface) not in shared
    ]
    return cables, notes
