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
loose interface of every other host; the pairs that answer are cables. Each interface
stops at its first answer (a cable has one far end), so a complete set of cables is
traced at once and only interfaces cabled to no listed host wait for neighbour discovery
to give up (about 3 s).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from chorus.config.discover import Log, run_command
from chorus.config.interfaces import Interface
from chorus.config.topology import Cable, End, Switch, with_probe
from chorus.together import run_together

if TYPE_CHECKING:
    import asyncssh

__all__ = ["ProbeResult", "Target", "probe", "probe_links", "reached"]

CABLE_TIMEOUT = 3.0
# Neighbour discovery gives up after about 3 s (3 solicitations, 1 s apart).
LINK_LOCAL_TIMEOUT = 4.0
PROBE_PORT = 22

# Runs on the host: connect to every target at once, report each outcome as JSON.
# argv: targets as [[key, address, port, source, device, group], ...], then the time limit.
# Once one target of a non-empty group answers, the rest of that group are "skipped": a
# cable has one far end, so an interface that found it need not wait for the others to
# time out (neighbour discovery takes 3 s to give up).
PROBE_SCRIPT = r"""
import errno, json, os, select, socket, sys, time
targets = [tuple(t) for t in json.loads(sys.argv[1])]
deadline = time.monotonic() + float(sys.argv[2])
results, waiting, answered = {}, {}, set()

def start(key, address, port, source, device, group):
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
        waiting[sock] = (key, group, (key, address, port, source, device, group))
        return None
    sock.close()
    return code

# Fresh links: either end's fe80 address may still be tentative (DAD, about a
# second), so a link-local target that fails is tried again until the deadline.
RETRY = {errno.EADDRNOTAVAIL, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}

def record(target, code, later):
    key, group = target[0], target[5]
    if group and code in RETRY and time.monotonic() < deadline - 0.3:
        later.append(target)
        return
    results[key] = "ok" if code == 0 else "refused" if code == errno.ECONNREFUSED else os.strerror(code)
    if group and code in (0, errno.ECONNREFUSED):
        answered.add(group)

pending = targets
while (pending or waiting) and time.monotonic() < deadline:
    later = []
    for target in pending:
        if target[5] and target[5] in answered:
            results[target[0]] = "skipped"
            continue
        code = start(*target)
        if code == errno.EADDRNOTAVAIL:
            later.append(target)  # our IPv6 address is still tentative (DAD): again soon
        elif code is not None:
            record(target, code, later)
    left = max(0.0, deadline - time.monotonic())
    if waiting:
        _, ready, _ = select.select([], list(waiting), [], min(0.2, left))
        for sock in ready:
            key, group, target = waiting.pop(sock)
            record(target, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), later)
            sock.close()
        for sock, (key, group, target) in list(waiting.items()):
            if group and group in answered:
                results[key] = "skipped"
                del waiting[sock]
                sock.close()
    elif later:
        time.sleep(min(0.2, left))
    pending = later
for sock, (key, group, target) in waiting.items():
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
    group: str = ""  # once one target of a group answers, the others are skipped


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
            [str(i), t.address, t.port, t.source, t.device, t.group]
            for i, t in ((i, targets[i]) for i in indices)
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

    await run_together([run_on(host, indices) for host, indices in by_host.items()])
    return outcomes


def _cable_targets(cables: Sequence[Cable]) -> list[tuple[int, Target]]:
    """From each addressed cable's ``a`` end to its ``b`` address, out of that interface."""
    targets = []
    for index, cable in enumerate(cables):
        if cable.addressed and cable.a.address and cable.b.address:
            source = cable.a.address.ip
            target = Target(cable.a.host, cable.b.address.ip, source, cable.a.interface)
            targets.append((index, target))
    return targets


def _switch_targets(switch: Switch | None) -> list[Target]:
    """Each host to the next one's address on the switch (one round, not all pairs)."""
    if switch is None or len(switch.ends) < 2:
        return []
    targets = []
    for i, end in enumerate(switch.ends):
        peer = switch.ends[(i + 1) % len(switch.ends)]
        if end.address is not None and peer.address is not None:
            targets.append(Target(end.host, peer.address.ip, end.address.ip, end.interface))
    return targets


def _link_local_targets(
    names: Sequence[str], loose: Mapping[str, Sequence[Interface]]
) -> tuple[list[tuple[str, Interface, str, Interface, Target]], list[str]]:
    """Every loose interface of each host to every other host's loose link-local addresses.

    Both ways round, grouped by the interface tried from: each interface stops at its first
    answer, so a complete set of cables is traced in one round trip instead of waiting for
    the wrong pairs' neighbour discovery to time out.
    """
    notes = []
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
    pairs = []
    for host in names:
        for other in names:
            if other == host:
                continue
            for mine in traceable.get(host, []):
                for theirs in traceable.get(other, []):
                    assert theirs.link_local is not None
                    address = theirs.link_local.ip
                    target = Target(host, address, device=mine.name, group=mine.name)
                    pairs.append((host, mine, other, theirs, target))
    return pairs, notes


def _traced_cables(
    names: Sequence[str],
    pairs: Sequence[tuple[str, Interface, str, Interface, Target]],
    outcomes: Sequence[str],
) -> tuple[list[Cable], list[str]]:
    """The pairs that answered (either way round), less interfaces that reach several hosts."""
    order = {name: index for index, name in enumerate(names)}
    found: dict[frozenset[tuple[str, str]], Cable] = {}
    for (host, mine, other, theirs, _), outcome in zip(pairs, outcomes, strict=True):
        if not reached(outcome):
            continue
        ends = sorted([(host, mine), (other, theirs)], key=lambda end: order[end[0]])
        a, b = (End(h, i.name, i.ipv4[0] if i.ipv4 else None) for h, i in ends)
        key = frozenset({(a.host, a.interface), (b.host, b.interface)})
        found.setdefault(key, Cable(a, b, "link-local", confirmed=True))
    counts: dict[tuple[str, str], list[Cable]] = {}
    for cable in found.values():
        for end in (cable.a, cable.b):
            counts.setdefault((end.host, end.interface), []).append(cable)
    shared = {key for key, cables in counts.items() if len(cables) > 1}
    notes = []
    for host, name in sorted(shared):
        peers = sorted({c.b.host if c.a.host == host else c.a.host for c in counts[(host, name)]})
        notes.append(
            f"{host}: {name} reaches {', '.join(peers)} directly: that is a switch "
            "without addresses, not a cable; address it by hand to use it with --over ethernet"
        )
    cables = [
        c
        for c in found.values()
        if (c.a.host, c.a.interface) not in shared and (c.b.host, c.b.interface) not in shared
    ]
    return cables, notes


@dataclass(frozen=True)
class ProbeResult:
    """What the probes established.

    Attributes
    ----------
    cables
        The candidate cables, each addressed one confirmed or refuted.
    switch
        The switch, confirmed when every host reached the next one over it.
    traced
        Cables found between loose interfaces through IPv6 link-local addresses.
    notes
        Interfaces that could not be traced, or that reach several hosts.
    targets
        How many connections were tried.
    """

    cables: tuple[Cable, ...]
    switch: Switch | None
    traced: tuple[Cable, ...]
    notes: tuple[str, ...]
    targets: int


async def probe_links(
    conns: Mapping[str, asyncssh.SSHClientConnection],
    names: Sequence[str],
    cables: Sequence[Cable],
    switch: Switch | None,
    loose: Mapping[str, Sequence[Interface]],
    *,
    python: str = "",
    log: Log | None = None,
) -> ProbeResult:
    """Confirm cables and the switch and trace loose interfaces: one probe run per host.

    Raises
    ------
    ConfigError
        When a host cannot run the probe (no Python there).
    """
    cable_targets = _cable_targets(cables)
    switch_targets = _switch_targets(switch)
    link_local, notes = _link_local_targets(names, loose)
    targets = [t for _, t in cable_targets] + switch_targets + [p[-1] for p in link_local]
    timeout = LINK_LOCAL_TIMEOUT if link_local else CABLE_TIMEOUT
    outcomes = (
        await probe(conns, targets, python=python, timeout=timeout, log=log) if targets else []
    )
    cable_outcomes = outcomes[: len(cable_targets)]
    switch_outcomes = outcomes[len(cable_targets) : len(cable_targets) + len(switch_targets)]
    traced_outcomes = outcomes[len(cable_targets) + len(switch_targets) :]
    checked = list(cables)
    for (index, _), outcome in zip(cable_targets, cable_outcomes, strict=True):
        checked[index] = with_probe(cables[index], reached(outcome), outcome)
    if switch is not None:
        failed = [
            f"{t.host} cannot reach {t.address} ({o})"
            for t, o in zip(switch_targets, switch_outcomes, strict=True)
            if not reached(o)
        ]
        switch = replace(switch, confirmed=not failed, detail="; ".join(failed))
    traced, traced_notes = _traced_cables(names, link_local, traced_outcomes)
    return ProbeResult(tuple(checked), switch, tuple(traced), (*notes, *traced_notes), len(targets))
