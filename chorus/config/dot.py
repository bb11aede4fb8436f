"""The wiring as a graphviz picture: hosts, cables labelled with interfaces and addresses.

Built with the ``graphviz`` package (a ``graphviz.Graph``, never hand-written dot text).
Colours: a working cable is black (bold when the proposed hostfile uses it), a cable
without addresses orange and dashed, a cable that failed its probe or is plugged into the
wrong host red, and a cable the ring or mesh needs but does not have red and dashed. The
switch, when there is one, is a grey ellipse joined to every host by dotted lines.
Rendering to PNG/SVG/PDF needs Graphviz's ``dot`` program (Debian: ``apt install
graphviz``); printing the source does not.
"""

from __future__ import annotations

from pathlib import Path

import graphviz

from chorus.config.errors import ConfigError
from chorus.config.proposal import Proposal
from chorus.config.topology import Cable, Topology

__all__ = ["RENDER_FORMATS", "build_graph", "write"]

RENDER_FORMATS = ("png", "svg", "pdf")
SOURCE_SUFFIXES = (".dot", ".gv")
SWITCH_NODE = "__switch__"


def _cable_style(cable: Cable, extra: set[Cable], used: set[Cable]) -> dict[str, str]:
    if cable.confirmed is False:
        return {"color": "red", "fontcolor": "red", "xlabel": f"no answer: {cable.detail}"}
    if cable in extra:
        return {"color": "red", "fontcolor": "red", "penwidth": "2"}
    if not cable.addressed:
        return {"color": "orange", "style": "dashed", "fontcolor": "orange"}
    if cable in used:
        return {"penwidth": "2"}
    return {}


def _used_cables(topology: Topology, proposal: Proposal | None) -> set[Cable]:
    if proposal is None or proposal.over != "thunderbolt":
        return set()
    order = [entry.ssh for entry in proposal.entries]
    if proposal.backend == "ring":
        pairs = [(order[i - 1], order[i]) for i in range(len(order))]
    else:
        pairs = [(x, y) for i, x in enumerate(order) for y in order[i + 1 :]]
    return {cable for x, y in pairs for cable in topology.cables_between(x, y)}


def build_graph(
    topology: Topology, backend: str = "ring", proposal: Proposal | None = None
) -> graphviz.Graph:
    """The picture of ``topology``, judged as ``backend`` (``ring`` or ``mesh``) needs it.

    With a ``proposal``, each host shows its rank and the cables it uses are bold.
    """
    verdict = topology.ring if backend == "ring" else topology.mesh
    title = f"{len(topology.hosts)} hosts: {_summary(topology, backend)}"
    graph = graphviz.Graph(
        "chorus",
        graph_attr={"label": title, "labelloc": "t", "fontname": "Helvetica"},
        node_attr={"shape": "box", "style": "rounded", "fontname": "Helvetica"},
        edge_attr={"fontname": "Helvetica", "fontsize": "10"},
    )
    ranks = {}
    if proposal is not None:
        ranks = {entry.ssh: rank for rank, entry in enumerate(proposal.entries)}
    for host in topology.hosts:
        label = f"{host}\nrank {ranks[host]}" if host in ranks else host
        graph.node(host, label=label)
    extra = set(verdict.extra)
    used = _used_cables(topology, proposal)
    for cable in topology.cables:
        attrs = {"label": f"{cable.a.label} — {cable.b.label}", **_cable_style(cable, extra, used)}
        graph.edge(cable.a.host, cable.b.host, **attrs)
    for x, y in verdict.missing:
        graph.edge(x, y, label="missing cable", color="red", fontcolor="red", style="dashed")
    if topology.switch is not None:
        switch = topology.switch
        color = "red" if switch.confirmed is False else "gray50"
        graph.node(SWITCH_NODE, label=f"switch\n{switch.subnet}", shape="ellipse", color=color)
        for end in switch.ends:
            graph.edge(end.host, SWITCH_NODE, label=end.label, color=color, style="dotted")
    return graph


def _summary(topology: Topology, backend: str) -> str:
    kind = topology.kind
    if kind == "broken":
        return f"the cables form no {backend} (red: missing or misplaced)"
    if kind in ("ring", "mesh"):
        shape = "full mesh" if kind == "mesh" else "ring " + "-".join(topology.ring.order)
        return f"the cables form a {shape}"
    return "switch only" if kind == "switch" else "no links found"


def write(graph: graphviz.Graph, path: str) -> None:
    """Write the picture to ``path``: rendered for .png/.svg/.pdf, the source for .dot/.gv.

    Raises
    ------
    ConfigError
        For another suffix, a missing ``dot`` program, or a file that cannot be written.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    try:
        if suffix in SOURCE_SUFFIXES:
            target.write_text(graph.source, encoding="utf-8")
            return
        if suffix.lstrip(".") not in RENDER_FORMATS:
            known = ", ".join([*SOURCE_SUFFIXES, *(f".{f}" for f in RENDER_FORMATS)])
            msg = f"--dot {path}: unknown picture format {suffix or '(none)'}; use one of {known}"
            raise ConfigError(msg)
        target.write_bytes(graph.pipe(format=suffix.lstrip(".")))
    except graphviz.ExecutableNotFound:
        msg = (
            f"--dot {path}: Graphviz's `dot` program is not installed (apt install graphviz, "
            "brew install graphviz); --dot alone prints the source instead"
        )
        raise ConfigError(msg) from None
    except graphviz.CalledProcessError as exc:
        msg = f"--dot {path}: dot failed: {exc}"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"--dot {path}: cannot write it ({exc.strerror})"
        raise ConfigError(msg) from None
