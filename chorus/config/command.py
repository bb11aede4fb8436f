"""``chorus config``: connect, read interfaces, probe, check, set up, then report.

Steps, in order:

1. connect to every host over ssh (:func:`chorus.ssh.connect_all`);
2. read each host's interfaces (:mod:`chorus.config.discover`);
3. find the switch and candidate cables (:mod:`chorus.config.topology`), confirm them with
   probes and trace loose interfaces through IPv6 link-local addresses
   (:mod:`chorus.config.probe`);
4. with ``--auto-setup``, address the unaddressed cables and read everything again
   (:mod:`chorus.config.setup`); without it, print the commands;
5. check the cables as a ring or mesh and propose the hostfile
   (:mod:`chorus.config.proposal`); a mesh over cables may also need host routes (step 4
   again, for routes);
6. report: a summary on stderr; on stdout the hostfile JSON (or with ``--dot`` the graphviz
   source); ``--output FILE`` and ``--dot FILE.svg`` write files instead.

The exit status is 0 when a usable hostfile was proposed. Anything else raises
:class:`~chorus.config.errors.ConfigError` with one line that says what to do, after the
summary and the picture were shown (a broken ring is exactly when the picture helps).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from chorus.config import dot, probe, setup
from chorus.config.discover import Log, gather
from chorus.config.errors import ConfigError
from chorus.config.interfaces import HostInterfaces
from chorus.config.proposal import Proposal, propose
from chorus.config.topology import (
    Cable,
    Topology,
    analyse,
    find_cables,
    find_switch,
    loose_interfaces,
)
from chorus.hostfile import HostfileError, parse_hostfile
from chorus.reporter import Reporter

if TYPE_CHECKING:
    import asyncssh

__all__ = ["ConfigOptions", "Discovery", "Reporter", "run_config", "summary"]


@dataclass(frozen=True)
class ConfigOptions:
    """What ``chorus config`` was asked to do (its command-line options).

    Attributes
    ----------
    hosts
        The ssh names, each once.
    backend
        ``ring`` or ``mesh``.
    over
        ``thunderbolt`` (cables), ``ethernet`` (switch) or ``None`` to choose.
    output
        Write the hostfile here instead of printing it.
    dot
        ``None``; ``"-"`` to print the graphviz source; a path to write the picture to.
    auto_setup
        Run the set-up commands instead of printing them.
    python
        The interpreter the hosts run probes with (default: this one's path, else python3).
    accept_new_host_keys
        Record unknown ssh host keys.
    verbose
        Show each command run on each host.
    """

    hosts: tuple[str, ...]
    backend: str = "ring"
    over: str | None = None
    output: str | None = None
    dot: str | None = None
    auto_setup: bool = False
    python: str = ""
    accept_new_host_keys: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class Discovery:
    """What discovery found: each host's interfaces, the verdicts, and loose ends."""

    hosts: tuple[HostInterfaces, ...]
    topology: Topology
    notes: tuple[str, ...]


async def discover(
    conns: dict[str, asyncssh.SSHClientConnection],
    names: Sequence[str],
    options: ConfigOptions,
    reporter: Reporter,
) -> Discovery:
    """Read every host, probe the candidate links, and analyse the result."""
    log: Log | None = reporter.progress if options.verbose else None
    infos = await gather(
        [conns[name] for name in names],
        names,
        log,
        progress=lambda done, total: reporter.status(f"reading interfaces: {done}/{total} hosts"),
    )
    switch = find_switch(infos)
    cables = find_cables(infos, switch)
    loose = loose_interfaces(infos, cables, switch)
    reporter.status(f"probing the links of {len(names)} hosts")
    probed = await probe.probe_links(
        conns, names, cables, switch, loose, python=options.python, log=log
    )
    reporter.status("")
    topology = analyse(infos, [*probed.cables, *probed.traced], probed.switch)
    return Discovery(tuple(infos), topology, probed.notes)


def _host_line(info: HostInterfaces) -> str:
    shown = []
    for interface in info.interfaces:
        if interface.kind == "loopback" or not (interface.carrier or interface.ipv4):
            continue
        addresses = " ".join(str(a) for a in interface.ipv4) or "no IPv4"
        shown.append(f"{interface.name} {addresses}")
    return f"  {info.host} ({info.system}): " + (", ".join(shown) or "no live interfaces")


def _cable_state(cable: Cable) -> str:
    if cable.confirmed is False:
        return f"NO ANSWER ({cable.detail})"
    if not cable.addressed:
        return (
            "no addresses"
            if cable.a.address is None and cable.b.address is None
            else "misaddressed"
        )
    return "ok" if cable.confirmed else "not probed"


def summary(
    found: Discovery, backend: str, proposal: Proposal | None, plan: str = "", applied: str = ""
) -> list[str]:
    """The human report: hosts, cables, switch, verdict, and the proposal or set-up needed."""
    topology = found.topology
    lines = ["hosts:", *(_host_line(info) for info in found.hosts)]
    if topology.cables:
        lines.append("cables:")
        for cable in topology.cables:
            how = "" if cable.how == "subnet" else f" [{cable.how}]"
            lines.append(f"  {cable}  {_cable_state(cable)}{how}")
    else:
        lines.append("cables: none")
    if topology.switch is not None:
        switch = topology.switch
        state = "ok" if switch.confirmed else f"NO ANSWER ({switch.detail})"
        if switch.confirmed is None:
            state = "not probed"
        members = ", ".join(f"{end.host} {end.label}" for end in switch.ends)
        lines.append(f"switch: {switch.subnet}: {members}  {state}")
    else:
        lines.append("switch: none (no subnet holds every host)")
    kind = topology.kind
    verdict = topology.ring if backend == "ring" else topology.mesh
    if kind == "mesh":
        lines.append(f"the cables form a full mesh (ring order {'-'.join(topology.ring.order)})")
    elif kind == "ring":
        lines.append(
            f"the cables form a ring: {' - '.join(topology.ring.order)} - back to {topology.ring.order[0]}"
        )
    elif kind == "broken":
        lines.append(f"the cables form no {backend}:")
        lines += [f"  - {problem}" for problem in verdict.problems]
    elif kind == "switch":
        lines.append("no cables between the hosts: only the switch")
    notes = [*topology.notes, *found.notes]
    if notes:
        lines.append("notes:")
        lines += [f"  - {note}" for note in notes]
    if applied:
        lines.append("set-up done (--auto-setup ran these):")
        lines += [f"  {line}" for line in applied.splitlines()]
    if plan:
        lines.append("set-up needed (run these, or pass --auto-setup):")
        lines += [f"  {line}" for line in plan.splitlines()]
    if proposal is not None:
        over = "the cables" if proposal.over == "thunderbolt" else "the switch"
        lines.append(f"hostfile: {proposal.backend} over {over}, {len(proposal.entries)} ranks:")
        order = [entry.ssh for entry in proposal.entries]
        for rank, entry in enumerate(proposal.entries):
            why = ""
            if proposal.over == "thunderbolt" and proposal.backend == "ring" and len(order) > 1:
                why = f"  (on the cable from {order[rank - 1]}, which dials it)"
            ips = ", ".join(entry.ips) or "(the address ssh uses)"
            lines.append(f"  rank {rank}: {entry.ssh:<10} {ips:<16}{why}")
    return lines


async def _close(conns: dict[str, asyncssh.SSHClientConnection]) -> None:
    for conn in conns.values():
        conn.close()
    for conn in conns.values():
        with contextlib.suppress(Exception):
            await conn.wait_closed()


@dataclass(frozen=True)
class _Result:
    found: Discovery
    proposal: Proposal | None
    error: ConfigError | None
    plan: str  # set-up still needed, as commands
    applied: str  # set-up --auto-setup ran, as commands


async def _configure(options: ConfigOptions, reporter: Reporter) -> _Result:
    from chorus.ssh import connect_all

    names = list(options.hosts)
    connections = await connect_all(
        names, accept_new_host_keys=options.accept_new_host_keys, progress=reporter.status
    )
    conns = dict(zip(names, connections, strict=True))
    log: Log | None = reporter.progress if options.verbose else None
    try:
        found = await discover(conns, names, options, reporter)
        assigned = setup.assign_addresses(found.hosts, found.topology.cables)
        steps = setup.setup_commands(found.hosts, assigned)
        applied: list[setup.HostCommands] = []
        if steps and options.auto_setup:
            reporter.status(f"assigning addresses to {len(assigned)} cable(s)")
            await setup.apply(conns, steps, log)
            applied += steps
            found = await discover(conns, names, options, reporter)
            assigned = setup.assign_addresses(found.hosts, found.topology.cables)
            steps = setup.setup_commands(found.hosts, assigned)
        proposal: Proposal | None = None
        error: ConfigError | None = None
        try:
            proposal = propose(found.topology, options.backend, options.over)
        except ConfigError as exc:
            error = exc
        if proposal is not None and proposal.routes:
            routes = setup.missing_routes(found.hosts, proposal.routes)
            route_steps = setup.setup_commands(found.hosts, [], routes)
            if route_steps and options.auto_setup:
                reporter.status(f"adding {len(routes)} host route(s) for the mesh")
                await setup.apply(conns, route_steps, log)
                applied += route_steps
            elif route_steps:
                steps = [*steps, *route_steps]
        plan = setup.format_commands(steps)
        if plan and error is None:
            msg = (
                "set-up needed before this hostfile works: run the commands above on the "
                "hosts, or pass --auto-setup"
            )
            error = ConfigError(msg)
            proposal = None
        return _Result(found, proposal, error, plan, setup.format_commands(applied))
    finally:
        reporter.status("")
        await _close(conns)


def _hostfile_text(proposal: Proposal) -> str:
    data = proposal.to_json()
    # One host per line: the file stays short and reads like a table.
    hosts = ",\n".join(f"    {json.dumps(entry)}" for entry in data["hosts"])
    text = f'{{\n  "backend": {json.dumps(data["backend"])},\n  "hosts": [\n{hosts}\n  ]\n}}\n'
    try:
        parse_hostfile(text, "the proposed hostfile")  # what chorus launch will read
    except HostfileError as exc:  # a bug here, not the user's
        msg = f"internal error: {exc}"
        raise ConfigError(msg) from exc
    return text


def run_config(
    options: ConfigOptions,
    reporter: Reporter,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``chorus config``; returns 0 when a usable hostfile was proposed.

    Raises
    ------
    ConfigError
        When no usable hostfile can be proposed (after the summary was shown), or a host
        cannot be read.
    chorus.ssh.SshError
        When a host cannot be reached.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if len(set(options.hosts)) != len(options.hosts):
        twice = sorted({h for h in options.hosts if options.hosts.count(h) > 1})
        msg = f"--hosts lists {', '.join(twice)} more than once; chorus config needs each host once"
        raise ConfigError(msg)
    result = asyncio.run(_configure(options, reporter))
    lines = summary(result.found, options.backend, result.proposal, result.plan, result.applied)
    err.write("\n".join(lines) + "\n")
    err.flush()
    if options.dot is not None:
        graph = dot.build_graph(result.found.topology, options.backend, result.proposal)
        if options.dot == "-":
            out.write(graph.source)
        else:
            dot.write(graph, options.dot)
            err.write(f"picture written to {options.dot}\n")
    if result.error is not None:
        raise result.error
    assert result.proposal is not None
    text = _hostfile_text(result.proposal)
    if options.output:
        try:
            Path(options.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            msg = f"--output {options.output}: cannot write it ({exc.strerror})"
            raise ConfigError(msg) from None
        err.write(
            f"hostfile written to {options.output}; run: chorus launch --hostfile {options.output} script.py\n"
        )
    elif options.dot != "-":
        out.write(text)
    else:
        err.write("pass --output FILE to write the hostfile as well\n")
    out.flush()
    err.flush()
    return 0
