"""Where is every rank: one report merged from every rank's snapshot.

Each rank's :func:`chorus.debug.snapshot` (its threads' stacks and each
group's newest call) is taken on that rank without talking to the others;
:func:`merge` puts them side by side, groups ranks whose main thread has the
same stack (as LLNL's STAT does: ``[0,2-3]`` once, outliers listed), and
ends with a verdict that names the problem, as data (:class:`Verdict`) and
as text:

    [0]    waits in all_sum #5 (float64 (3,)) on world for 12.1 s, at cell 7, line 2
    [1-3]  not in a chorus call: idle
    verdict: rank 0 waits in all_sum #5 on world, which ranks 1-3 never made
    (their last call there was all_sum #4)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, NotRequired, TypedDict

# A snapshot a rank writes on request, as one stderr line the launcher takes
# out of the output (never shown): this marker, then the JSON.
SNAPSHOT_MARKER = b"\x1echorus-snapshot "
# The request: a signal whose default action is to do nothing, so a rank
# that never imported chorus is not harmed by it.
REPORT_SIGNAL = "SIGURG"
# CHORUS_SUPERVISOR's prefix when a rank has no way to ask where every rank
# is (then: why); chorus.launch.questions writes it, chorus.debug.where reads it.
SUPERVISOR_UNAVAILABLE = "unavailable: "
# Record states of a call still running.
RUNNING = ("entered", "agreed")


class StackFrame(NamedTuple):
    file: str  # "" for a notebook cell (its file is a per-rank temporary)
    line: int
    function: str
    code: str
    library: bool
    cell: int | None = None  # the kernel's execution count of a cell's frame


Stack = tuple[StackFrame, ...]


class CallSite(TypedDict):
    """The Python line that made a call (the first frame outside chorus)."""

    file: str
    line: int
    function: str
    cell: int | None  # the kernel's execution count, outside the kernel None


class CallRecord(TypedDict):
    """One call on one group, as this rank made it."""

    id: int  # 1 for the group's first recorded call, then 2, ...
    seq: int  # collectives: the group's call number (as PeerError.call); send/recv: their own count
    op: str  # "all_sum", "broadcast", "send", "split", ...
    collective: bool
    state: str  # "entered", "agreed" (descriptors matched: moving data), "completed", "failed"
    failure: str | None  # failed: "peer" (PeerError), "mismatch", "interrupted" or "error"
    reason: str | None  # failure "peer": PeerError.reason ("died", "unreachable", ...)
    culprit: int | None  # failure "peer": the rank blamed
    dtype: str | None
    shape: tuple[int, ...] | None  # the input's (its first four dimensions, then ...)
    nbytes: int
    root: int | None  # broadcast
    peer: int | None  # send / recv
    tag: int | None  # send / recv
    start: float  # seconds since the epoch (time.time())
    end: float | None  # None while the call runs
    site: CallSite | None


class Frame(TypedDict):
    file: str
    line: int
    function: str
    code: str  # the source line, "" when unknown
    library: bool  # Python's own, an installed package's or chorus's (not the user's)
    cell: NotRequired[int | None]  # a notebook cell's frame: its execution count


class ThreadStack(TypedDict):
    name: str
    main: bool
    frames: list[Frame]  # outermost first


class GroupCall(TypedDict):
    group: str  # Group.name: "world", "world.split1(color=0)", ...
    size: int
    record: CallRecord


class RankSnapshot(TypedDict):
    """Where one rank is: its threads' stacks and each group's newest call."""

    rank: int
    size: int
    host: str
    pid: int
    time: float
    threads: list[ThreadStack]
    calls: list[GroupCall]  # each group's newest record (running or not)
    setting_up_since: float | None  # inside chorus.init(), waiting for the others, since


class WhereAnswers(TypedDict):
    """What a supervisor collected: the snapshots that came back, and why others did not."""

    size: int
    snapshots: list[RankSnapshot]
    missing: dict[str, str]  # rank (as text: JSON keys) -> why there is no snapshot


def rank_list(ranks: Iterable[int]) -> str:
    """``[0,2-4]``: sorted ranks, runs of three or more folded."""
    items = sorted(set(ranks))
    parts: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{items[i]}-{items[j]}")
        else:
            parts.extend(str(r) for r in items[i : j + 1])
        i = j + 1
    return "[" + ",".join(parts) + "]"


def _plural(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + rank_list(ranks)[1:-1]


def _call_text(record: CallRecord) -> str:
    text = f"{record['op']} #{record['seq']}"
    if record["dtype"] is not None:
        shape = record["shape"]
        dims = ", ".join(str(d) for d in shape) if shape is not None else "?"
        text += (
            f" ({record['dtype']} ({dims}{',' if shape is not None and len(shape) == 1 else ''}))"
        )
    return text


def _site_text(record: CallRecord) -> str:
    site = record["site"]
    if site is None:
        return ""
    if site["cell"] is not None:
        return f"at cell {site['cell']}, line {site['line']}"
    return f"at {site['file']}:{site['line']}"


@dataclass
class RankState:
    """What one rank does, as the verdict sees it."""

    rank: int
    host: str
    running: GroupCall | None  # the collective or send/recv it is inside, if any
    last: dict[str, CallRecord]  # each group's newest record
    activity: str  # "idle", "waits for input at ...", "runs ... at file:line"
    stack: Stack  # the main thread's frames, outermost first
    since: float = 0.0  # seconds in its running call (or in chorus.init())
    setting_up: bool = False  # inside chorus.init(), waiting for the other ranks


@dataclass
class Verdict:
    """The problem the report names, as data."""

    # "missing-call", "missing-init", "different-calls", "together", "no-call", "missing-ranks"
    kind: str
    text: str
    waiting: list[int] = field(default_factory=list)  # ranks inside a call
    others: list[int] = field(default_factory=list)  # the ranks they wait for


@dataclass
class Report:
    states: list[RankState]
    missing: dict[int, str]  # ranks with no snapshot, and why
    verdict: Verdict
    classes: list[tuple[list[int], Stack]]  # stack classes

    def text(self) -> str:
        return format_report(self)


def _place(frame: StackFrame) -> str:
    """``file:line``, or ``cell 7, line 2`` for a notebook cell's frame."""
    if frame.cell is not None:
        return f"cell {frame.cell}, line {frame.line}"
    return f"{frame.file}:{frame.line}"


def _stack_frame(f: Frame) -> StackFrame:
    cell = f.get("cell")
    return StackFrame(
        "" if cell is not None else f["file"],
        f["line"],
        f["function"],
        f.get("code", ""),
        f.get("library", False),
        cell,
    )


def _activity(snapshot: RankSnapshot) -> tuple[str, Stack]:
    main = next((t for t in snapshot["threads"] if t["main"]), None)
    stack = tuple(_stack_frame(f) for f in (main["frames"] if main else []))
    user = [f for f in stack if not f.library]
    names = {f.function for f in stack}
    if names & {"_input_request", "raw_input", "getpass"}:
        where = f" at {_place(user[-1])}" if user else ""
        return f"waits for input{where}", stack
    if user and "input(" in user[-1].code:
        return f"waits for input at {_place(user[-1])}", stack
    if not user:
        return "idle", stack
    top = user[-1]
    return f"runs {top.function} at {_place(top)}", stack


def merge(
    snapshots: Sequence[RankSnapshot],
    size: int | None = None,
    missing: dict[int, str] | None = None,
) -> Report:
    """The report for these snapshots; ``size`` ranks expected, ``missing`` said why some are not."""
    missing = dict(missing or {})
    states: list[RankState] = []
    for snap in sorted(snapshots, key=lambda s: s["rank"]):
        running = next((c for c in snap["calls"] if c["record"]["state"] in RUNNING), None)
        activity, stack = _activity(snap)
        state = RankState(
            rank=snap["rank"],
            host=snap["host"],
            running=running,
            last={c["group"]: c["record"] for c in snap["calls"]},
            activity=activity,
            stack=stack,
        )
        if running is not None:
            state.since = max(0.0, snap["time"] - running["record"]["start"])
        elif snap.get("setting_up_since"):
            state.setting_up = True
            state.since = max(0.0, snap["time"] - (snap.get("setting_up_since") or 0.0))
            state.activity = "waits in chorus.init() for the other ranks"
        states.append(state)
    expected = size if size is not None else max((s["size"] for s in snapshots), default=0)
    seen = {s.rank for s in states}
    for r in range(expected):
        if r not in seen and r not in missing:
            missing[r] = "no answer"
    classes: dict[Stack, list[int]] = {}
    for s in states:
        classes.setdefault(s.stack, []).append(s.rank)
    ordered = sorted(((ranks, stack) for stack, ranks in classes.items()), key=lambda c: c[0][0])
    return Report(states, missing, _verdict(states, missing), ordered)


def merge_answers(answers: WhereAnswers) -> Report:
    """The report for a supervisor's answers (:func:`merge` of their parts)."""
    missing = {int(rank): why for rank, why in answers["missing"].items()}
    return merge(answers["snapshots"], size=answers["size"], missing=missing)


def _verdict(states: list[RankState], missing: dict[int, str]) -> Verdict:
    inside = [s for s in states if s.running is not None]
    joining = [s.rank for s in states if s.setting_up]
    if not inside and joining and (len(joining) < len(states) or missing):
        others = sorted([s.rank for s in states if not s.setting_up] + list(missing))
        doing = sorted({s.activity for s in states if not s.setting_up})
        text = (
            f"{_plural(joining)} {'waits' if len(joining) == 1 else 'wait'} in chorus.init() (a"
            f" rank's first collective calls it), which {_plural(others)} never called"
        )
        if doing:
            text += " (they are " + " / ".join(doing).replace("runs ", "running ") + ")"
        return Verdict("missing-init", text, waiting=joining, others=others)
    if not inside:
        if missing:
            return Verdict(
                "missing-ranks",
                f"no rank is inside a chorus call; {_plural(sorted(missing))} did not answer",
                others=sorted(missing),
            )
        return Verdict("no-call", "no rank is inside a chorus call")
    # The call that has waited longest decides; its group is the one stuck.
    first = max(inside, key=lambda s: s.since)
    assert first.running is not None
    group = first.running["group"]
    # Every rank is in the world, also one that never made a call there; a
    # sub-group's members are known by their calls on it.
    members = [s for s in states if group == "world" or group in s.last]
    by_call: dict[tuple[str, int], list[int]] = {}
    idle: list[RankState] = []
    for s in members:
        if s.running is not None and s.running["group"] == group:
            rec = s.running["record"]
            by_call.setdefault((rec["op"], rec["seq"]), []).append(s.rank)
        else:
            idle.append(s)
    record = first.running["record"]
    call = _call_text(record)
    where = f" on {group}" if group != "world" else ""
    absent = sorted(missing)
    if len(by_call) > 1:
        parts = [
            f"{_plural(ranks)} in {op} #{seq}"
            for (op, seq), ranks in sorted(by_call.items(), key=lambda x: x[0][1])
        ]
        lowest = min(seq for _, seq in by_call)
        behind = sorted(r for (_, seq), ranks in by_call.items() if seq == lowest for r in ranks)
        text = (
            "the ranks wait in different calls"
            + where
            + ": "
            + "; ".join(parts)
            + f". {_plural(behind).capitalize()} made fewer calls on this group than the others"
            " (a call skipped on some ranks, or made twice on others)"
        )
        waiting = sorted(r for ranks in by_call.values() for r in ranks)
        return Verdict("different-calls", text, waiting=waiting)
    waiting = sorted(next(iter(by_call.values())))
    if idle or absent:
        others = sorted([s.rank for s in idle] + absent)
        lasts = {_call_text(s.last[group]) if s.last.get(group) else "none yet" for s in idle}
        doing = sorted({s.activity for s in idle})
        text = f"{_plural(waiting)} {'waits' if len(waiting) == 1 else 'wait'} in {call}{where}, which {_plural(others)} never made"
        detail = []
        if lasts:
            detail.append("their last call there was " + " / ".join(sorted(lasts)))
        if doing:
            detail.append(
                "they are "
                + " / ".join(doing).replace("runs ", "running ").replace("waits ", "waiting ")
            )
        if absent:
            detail.append(
                f"{_plural(absent)} did not answer ({'; '.join(missing[r] for r in absent)})"
            )
        if detail:
            text += " (" + "; ".join(detail) + ")"
        return Verdict("missing-call", text, waiting=waiting, others=others)
    state = "moving data" if record["state"] == "agreed" else "arriving"
    return Verdict(
        "together",
        f"every rank is in {call}{where} ({state}, {first.since:.1f} s): a slow peer, a slow"
        " link, or a rank stopped in a debugger",
        waiting=waiting,
    )


def _frames_worth_showing(stack: Stack) -> list[StackFrame]:
    """The user's frames, and the library frames right below the innermost one.

    An interpreter's, a kernel's or an event loop's frames say nothing about
    the program; the chorus call a user frame is blocked in does.
    """
    users = [i for i, f in enumerate(stack) if not f.library]
    if not users:
        return []
    last = users[-1]
    inner = [f for f in stack[last + 1 : last + 3] if f.library]
    return [stack[i] for i in users[-8:]] + inner


def format_report(report: Report) -> str:
    """The report as text: one line per class of ranks, the stacks, the verdict."""
    lines = [f"chorus where: {len(report.states) + len(report.missing)} ranks"]
    rows: dict[str, list[int]] = {}
    for s in report.states:
        if s.setting_up:
            row = f"waits in chorus.init() for the other ranks for {s.since:.1f} s"
        elif s.running is not None:
            rec = s.running["record"]
            where = f" on {s.running['group']}" if s.running["group"] != "world" else ""
            site = _site_text(rec)
            row = f"waits in {_call_text(rec)}{where} for {s.since:.1f} s" + (
                f", {site}" if site else ""
            )
        else:
            row = f"not in a chorus call: {s.activity}"
        rows.setdefault(row, []).append(s.rank)
    for r, why in sorted(report.missing.items()):
        rows.setdefault(f"no report: {why}", []).append(r)
    width = max(len(rank_list(ranks)) for ranks in rows.values())
    for row, ranks in sorted(rows.items(), key=lambda x: x[1][0]):
        lines.append(f"{rank_list(ranks):<{width}}  {row}")
    lines.append("stacks (main thread, innermost last; the user's frames and where chorus is):")
    for ranks, stack in report.classes:
        lines.append(f"  {rank_list(ranks)}")
        shown = _frames_worth_showing(stack)
        if not shown:
            lines.append("      (none of the user's code: idle)")
        for frame in shown:
            text = f"      {_place(frame)} in {frame.function}"
            lines.append(text + (f": {frame.code}" if frame.code else ""))
    lines.append(f"verdict: {report.verdict.text}")
    return "\n".join(lines)
