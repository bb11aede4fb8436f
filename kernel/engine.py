"""N ranks behind one door: the engine shared by the kernel and the magics.

:class:`Engine` owns the rank kernels (:class:`~chorus.kernel.ranks.RankSet`)
and is the only way to them: it starts and stops them, sends a cell to the
target ranks, merges their output (:mod:`chorus.kernel.output`), answers
their input requests with one prompt (:mod:`chorus.kernel.stdin`), notices
ranks that die, combines the replies, and answers single-rank requests
(completion, inspection), status and "where is every rank". What it shows
and asks goes through a :class:`Frontend`: the chorus kernel publishes on
its iopub socket and asks its frontend; the ``%%all`` magic prints and calls
``input()``. One engine, two front ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chorus.kernel.areas import RankAreas
from chorus.kernel.comms import COMM_TYPES, CommMessage, CommRouter
from chorus.kernel.displays import DisplayMerger
from chorus.kernel.labels import format_ranks, label_line, tagged
from chorus.kernel.output import OutputMerger
from chorus.kernel.ranks import INTERRUPT_DELIVERY_WAIT, Message, Rank, RankSet
from chorus.kernel.stdin import InputBroker

from chorus.launch.process import describe_exit
from chorus.where import RankSnapshot, Report

_CELL_NUMBER = re.compile(r"In ?\[\d+\]")
# How long a rank may stay idle before its missing reply counts as lost. The
# reply travels on the shell socket, the idle status on iopub: on a loaded
# machine with ranks on other hosts the reply came more than 2 s after the
# idle status (a false "finished without a reply" in CI), so wait longer; a
# reply really lost (an interrupt landing on ipykernel's reply) is rare.
LOST_REPLY_GRACE = 10.0
# How often the engine looks at held output, input requests and dead ranks.
TICK = 0.05


class Frontend(Protocol):
    """Where the engine shows output and asks for input."""

    # Whether an output can be updated in place (display ids): a Jupyter
    # frontend can, a terminal cannot (live partial lines need it).
    live_updates: bool
    # How the user gets every rank back after one died ("restart the kernel").
    restart_hint: str

    def stream(self, name: str, text: str) -> None:
        """Show ``text`` on ``name`` (``stdout`` or ``stderr``)."""

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        """Show a display_data, update_display_data, clear_output or error message."""

    async def ask(self, prompt: str, password: bool) -> str:
        """Ask the user for one line; cancellable; ``EOFError`` for end of input."""

    def comm(self, message: CommMessage) -> None:
        """Send a rank's comm message on to the frontend."""


@dataclass
class CellResult:
    """How a cell ended on all its ranks.

    ``status`` is ``"ok"`` only when every target rank's reply is ok.
    """

    status: str = "ok"
    ename: str = ""
    evalue: str = ""
    traceback: list[str] = field(default_factory=list)
    # The execute_result to show (already labelled), if any.
    result: dict[str, Any] | None = None
    user_expressions: dict[str, Any] = field(default_factory=dict)
    # Every target rank's user_expressions (``expressions_everywhere=True``).
    user_expressions_by_rank: dict[int, dict[str, Any]] = field(default_factory=dict)
    died: dict[int, int] = field(default_factory=dict)
    # The reply's payloads (the pager's help text): the lowest target rank's.
    payload: list[dict[str, Any]] = field(default_factory=list)


class _Shown:
    """A cell's view of the Frontend that notes whether it has shown anything yet."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.live_updates = frontend.live_updates
        self.restart_hint = frontend.restart_hint
        self.anything = False

    def stream(self, name: str, text: str) -> None:
        self.anything = True
        self.frontend.stream(name, text)

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        self.anything = True
        self.frontend.publish(msg_type, content)

    async def ask(self, prompt: str, password: bool) -> str:
        return await self.frontend.ask(prompt, password)

    def comm(self, message: CommMessage) -> None:
        self.frontend.comm(message)


class LiveLines:
    """Each rank's open partial line as one output that updates in place.

    A progress bar or a ``print(..., end=" ")`` loop is one labelled output
    per rank and stream (a display with a ``display_id``, updated with
    ``update_display_data``, as ipyparallel shows its engines' streams).
    Withdrawn (emptied) when the line completes: the merger then shows it
    like any line. The next open line of that rank gets a new output.
    """

    def __init__(self, frontend: Frontend, prefix: str) -> None:
        self.frontend = frontend
        self.prefix = prefix
        self._current: dict[tuple[int, str], str] = {}  # (rank, stream) -> display id
        self._made = 0

    def __call__(self, rank: int, name: str, text: str | None) -> None:
        key = (rank, name)
        display_id = self._current.get(key)
        if display_id is None:
            if text is None:
                return
            self._made += 1
            display_id = self._current[key] = f"{self.prefix}-{self._made}"
            kind = "display_data"
        else:
            kind = "update_display_data"
        shown = "" if text is None else f"[{rank}] {text}"
        self.frontend.publish(
            kind,
            {
                "data": {"text/plain": shown},
                "metadata": {"chorus": {"ranks": [rank], "role": "live", "stream": name}},
                "transient": {"display_id": display_id},
            },
        )
        if text is None:
            del self._current[key]


@dataclass
class _Cell:
    targets: list[int]
    msg_ids: dict[int, str]
    merger: OutputMerger
    frontend: _Shown
    displays: DisplayMerger
    # Ranks' own output areas once they clear_output (None: a terminal).
    areas: RankAreas | None = None
    replies: dict[int, Message] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    died: dict[int, int] = field(default_factory=dict)
    # When each rank went idle, and ranks that went idle but never replied.
    idle_since: dict[int, float] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)
    # Messages from the rank readers, handled by the task running the cell:
    # what it publishes must carry that task's parent header (a context var).
    inbox: list[tuple[int, Message]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def finished(self, rank: int) -> bool:
        if rank in self.died or rank in self.lost:
            return True
        return rank in self.replies and rank in self.idle


class Engine:
    """The rank kernels, and cells executed on them with the merged result shown.

    Parameters
    ----------
    frontend
        Where output goes and input comes from.
    output_mode
        ``"collapse"`` (identical lines once, labelled ``[0-3]``) or
        ``"byrank"`` (one block per rank when the cell ends).
    ranks
        How many rank kernels and how to start them: the arguments of
        :class:`~chorus.kernel.ranks.RankSet` (``size``, ``backend``,
        ``timeout``, ``hosts``, ``python``, ...).
    """

    def __init__(self, frontend: Frontend, output_mode: str = "collapse", **ranks: Any) -> None:
        self.frontend = frontend
        self.output_mode = output_mode
        self._cell: _Cell | None = None
        self._broker: InputBroker | None = None
        self.ranks = RankSet(**ranks, listener=self._on_message)
        self.comms = CommRouter(self.ranks.size, self.ranks.send_shell, frontend.comm)
        # Where the ranks' debug_events go (the kernel's DebugProxy), at once.
        self.debug_events: Callable[[int, dict[str, Any]], None] | None = None

    # -- the ranks -----------------------------------------------------------------

    @property
    def size(self) -> int:
        """How many ranks."""
        return self.ranks.size

    @property
    def busy(self) -> bool:
        return self._cell is not None

    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Start every rank kernel and wait until all answer (see :meth:`RankSet.start`)."""
        await self.ranks.start(progress)

    async def shutdown(self) -> None:
        """Stop every rank kernel (request, SIGTERM, SIGKILL)."""
        await self.ranks.shutdown()

    async def where(self) -> Report:
        """Where every rank is, with a verdict (asked on the ranks' control channels)."""
        return await self.ranks.where()

    def status(self) -> str:
        """The ranks as a table: rank, host, pid and whether it runs."""
        lines = ["rank  host             pid      state"]
        for rank in self.ranks.ranks:
            code = rank.exit_code()
            state = "running" if code is None else f"exited ({code})"
            lines.append(f"{rank.rank:<5} {rank.host:<16} {rank.pid or '-':<8} {state}")
        return "\n".join(lines) + "\n"

    async def request(self, rank: int, send: str, **kwargs: Any) -> dict[str, Any] | None:
        """One rank's reply to a shell request (``"complete"``, ``"inspect"``, ...).

        ``None`` when the rank is not running or does not answer within 10 s.
        """
        try:
            client = self.ranks.client(rank)
        except RuntimeError:
            return None
        msg_id = getattr(client, send)(**kwargs)
        reply = await self.ranks.reply_within(msg_id, 10)
        if reply is None:
            return None
        content: dict[str, Any] = reply["content"]
        return content

    async def debug_request(
        self, rank: int, request: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """``rank``'s debugger's response to one DAP request (its control channel).

        Raises
        ------
        RuntimeError
            The rank is not running.
        TimeoutError
            No response within ``timeout`` s.
        """
        client = self.ranks.client(rank)
        message = client.session.msg("debug_request", request)
        msg_id = message["header"]["msg_id"]
        client.control_channel.send(message)
        answer = await self.ranks.reply_within(msg_id, timeout)
        if answer is None:
            raise TimeoutError
        content: dict[str, Any] = answer["content"]
        return content

    async def activity(self, ranks: list[int]) -> dict[int, str]:
        """What each of ``ranks`` does now, in a few words (asked as ``where`` is)."""
        cell = self._cell
        doing: dict[int, str] = {}
        for rank in ranks:
            if cell is not None and rank not in cell.targets:
                doing[rank] = "not running this cell"
            elif cell is not None and cell.finished(rank):
                doing[rank] = "finished this cell"
        # Only the ranks still in the cell are asked (their control channels).
        ask = [rank for rank in ranks if rank not in doing]
        if ask:
            answers = await self.ranks.where_answers(timeout=2.0, only=ask)
            for number, why in answers["missing"].items():
                doing[int(number)] = f"not answering ({why})"
            for snapshot in answers["snapshots"]:
                doing[snapshot["rank"]] = _activity(snapshot)
        return {rank: doing[rank] for rank in ranks if rank in doing}

    def running(self) -> list[int]:
        """The ranks whose process runs."""
        return [r.rank for r in self.ranks.ranks if r.alive() and r.client is not None]

    def describe(self, rank: int) -> str:
        """``rank 2``, or ``rank 2 on host-b`` when ranks run on other hosts."""
        if self.ranks.hosts is None or rank >= len(self.ranks.ranks):
            return f"rank {rank}"
        return f"rank {rank} on {self.ranks.ranks[rank].host}"

    # -- cells ---------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        targets: Sequence[int],
        *,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = True,
        expressions_everywhere: bool = False,
        execution_count: int | None = None,
    ) -> CellResult:
        """Run ``code`` on ``targets`` and wait until every one has finished.

        Parameters
        ----------
        code
            The cell.
        targets
            Ranks to run it on.
        silent, store_history, user_expressions, allow_stdin
            As in an execute_request.
        expressions_everywhere
            Evaluate ``user_expressions`` on every target (see
            ``CellResult.user_expressions_by_rank``), not only on the lowest
            target rank.
        execution_count
            The cell's number as the frontend shows it: every rank runs the
            cell under it (tracebacks, ``In``/``Out``, ``%history`` agree).

        Returns
        -------
        CellResult
            The combined status, errors (identical tracebacks merged) and
            execute_result.
        """
        gone = [r.rank for r in self.ranks.dead() if r.rank in targets]
        if gone:
            codes = {r.rank: r.exit_code() for r in self.ranks.dead()}
            for rank in gone:
                self.frontend.stream(
                    "stderr",
                    f"[chorus] rank {rank} is not running ({describe_exit(codes[rank] or 0)}); "
                    f"{self.frontend.restart_hint} to get every rank back\n",
                )
            targets = [r for r in targets if r not in gone]
        if not targets:
            return CellResult(status="error", ename="RankDied", evalue="no rank is running")
        shown = _Shown(self.frontend)
        live = areas = None
        if self.frontend.live_updates:
            tag = uuid.uuid4().hex[:12]
            live = LiveLines(shown, f"chorus-live-{tag}")
            areas = RankAreas(shown.publish, f"chorus-area-{tag}", list(targets))
        merger = OutputMerger(targets, shown.stream, mode=self.output_mode, live=live)
        msg_ids: dict[int, str] = {}
        replies: dict[int, asyncio.Future[Message]] = {}
        displays = DisplayMerger(
            targets,
            lambda content: shown.publish("display_data", content),
            lambda ranks: shown.stream("stdout", label_line(ranks)),
        )
        cell = _Cell(list(targets), msg_ids, merger, shown, displays, areas)
        self._cell = cell
        broker = InputBroker(self.size, self._answer, self.frontend, merger, set(targets))
        self._broker = broker
        try:
            # An interrupt of the last cell must land before this one starts.
            late = await self.ranks.interrupts_delivered()
            if late:
                shown.stream("stderr", _late_interrupt_notice(late))
            for rank in targets:
                evaluate_here = expressions_everywhere or rank == min(targets)
                expressions = user_expressions if evaluate_here else {}
                msg_id = self.ranks.execute(
                    rank,
                    code,
                    silent=silent,
                    store_history=store_history,
                    user_expressions=expressions or {},
                    allow_stdin=allow_stdin,
                    execution_count=execution_count,
                )
                msg_ids[rank] = msg_id
                replies[rank] = self.ranks.expect_reply(msg_id)
                replies[rank].add_done_callback(
                    lambda fut, r=rank: self._on_reply(cell, r, fut)  # type: ignore[misc]
                )
            await self._wait(cell, broker)
            for rank, message in cell.inbox:
                self._handle(cell, rank, message)
            if areas is not None:
                areas.tick()
        finally:
            broker.close()
            self._cell = None
            self._broker = None
            for msg_id in msg_ids.values():
                self.ranks.forget_reply(msg_id)
        displays.flush()
        merger.blocked.clear()
        merger.flush()
        return self._combine(cell)

    def interrupt(self) -> None:
        """SIGINT every rank running the current cell; drop an open prompt."""
        cell = self._cell
        self.ranks.interrupt(cell.targets if cell is not None else None)
        if self._broker is not None:
            self._broker.cancel_prompt()

    # -- internals -----------------------------------------------------------------

    def _answer(self, rank: int, text: str) -> None:
        """Deliver the broker's answer to ``rank``'s input request."""
        self.ranks.client(rank).input(text)

    async def _wait(self, cell: _Cell, broker: InputBroker) -> None:
        interrupted_for_death = False
        while not all(cell.finished(r) for r in cell.targets):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(cell.changed.wait(), TICK)
            cell.changed.clear()
            inbox, cell.inbox = cell.inbox, []
            for rank, message in inbox:
                self._handle(cell, rank, message)
            self._tick_displays(cell)
            cell.merger.tick()
            if cell.areas is not None:
                cell.areas.tick()
            self._give_up_on_lost_replies(cell)
            busy = {r for r in cell.targets if not cell.finished(r)}
            broker.update(busy)
            for dead in self.ranks.dead():
                if dead.rank in busy and dead.rank not in cell.died:
                    code = dead.exit_code()
                    cell.died[dead.rank] = -1 if code is None else code
                    cell.merger.rank_done(dead.rank)
                    cell.displays.rank_done(dead.rank)
                    how = describe_exit(cell.died[dead.rank])
                    self.frontend.stream(
                        "stderr",
                        f"[chorus] rank {dead.rank} {how} while running this cell; "
                        f"interrupting the other ranks; {self.frontend.restart_hint} to get it back\n",
                    )
                    if not interrupted_for_death:
                        interrupted_for_death = True
                        self.ranks.interrupt([r for r in busy if r != dead.rank])

    def _give_up_on_lost_replies(self, cell: _Cell) -> None:
        """A rank idle for a while without replying will never reply: stop waiting.

        (ipykernel drops the reply when a KeyboardInterrupt hits its handler
        after the cell's code; rank kernels guard against that, this is the
        safety net so that no cell waits forever.)
        """
        now = time.monotonic()
        for rank, since in cell.idle_since.items():
            if rank in cell.replies or rank in cell.lost or now - since < LOST_REPLY_GRACE:
                continue
            cell.lost.add(rank)
            cell.merger.rank_done(rank)
            cell.displays.rank_done(rank)
            self.frontend.stream(
                "stderr", f"[chorus] rank {rank} finished this cell without a reply\n"
            )

    def _on_reply(self, cell: _Cell, rank: int, future: asyncio.Future[Message]) -> None:
        if future.cancelled():
            return
        cell.replies[rank] = future.result()
        cell.changed.set()

    def _on_message(self, rank: int, message: Message) -> None:
        if message["header"]["msg_type"] == "debug_event":
            if self.debug_events is not None:
                self.debug_events(rank, message["content"])
            return
        if message["header"]["msg_type"] in COMM_TYPES:
            # At once, whatever cell is running: a widget's model must reach
            # the frontend before its view, and widgets talk between cells.
            self.comms.from_rank(rank, message)
            return
        cell = self._cell
        if cell is None:
            return
        parent = message.get("parent_header", {}).get("msg_id")
        if parent != cell.msg_ids.get(rank):
            return
        cell.inbox.append((rank, message))
        cell.changed.set()

    def _handle(self, cell: _Cell, rank: int, message: Message) -> None:
        kind = message["header"]["msg_type"]
        content = message["content"]
        areas = cell.areas
        if "transient" in content and "display_id" in content["transient"]:
            # Display ids are the rank's own: rank 2's update of "progress"
            # must not update every rank's "progress".
            content = {**content, "transient": {**content["transient"]}}
            content["transient"]["display_id"] = (
                f"chorus-r{rank}-{content['transient']['display_id']}"
            )
        if kind == "stream":
            if areas is not None and rank in areas:
                areas.write(rank, content["text"])
            else:
                cell.merger.feed(rank, content["name"], content["text"])
            if self._broker is not None:
                self._broker.output_seen()
        elif kind == "status":
            if content["execution_state"] == "idle":
                cell.idle.add(rank)
                cell.idle_since.setdefault(rank, time.monotonic())
                cell.merger.rank_done(rank)
                cell.displays.rank_done(rank)
        elif kind == "execute_result":
            cell.results[rank] = content
        elif kind == "display_data" and areas is not None and rank in areas:
            areas.show(rank, content)
        elif kind == "display_data" and "display_id" not in content.get("transient", {}):
            # Held to be shown in rank order, merged with the other ranks'.
            # What the rank printed before it goes out first; after it, waits.
            cell.merger.flush(partial=False)
            cell.merger.blocked.add(rank)
            cell.displays.feed(rank, content)
            self._tick_displays(cell)
        elif kind in ("display_data", "update_display_data"):
            cell.merger.flush(partial=False)
            if kind == "display_data":
                cell.frontend.stream("stdout", label_line([rank]))
            cell.frontend.publish(kind, tagged(content, [rank]))
        elif kind == "clear_output" and areas is not None:
            if not cell.frontend.anything:
                # Nothing is shown yet: the frontend's own clear loses nothing.
                self.frontend.publish(kind, content)
            if rank not in areas:
                cell.merger.discard(rank)
            areas.clear(rank, bool(content.get("wait")))
        elif kind == "clear_output":
            cell.merger.flush(partial=False)
            cell.frontend.publish(kind, content)
        elif kind == "input_request" and self._broker is not None:
            self._broker.request(rank, content["prompt"], bool(content.get("password")))
        # "error" is taken from the execute_reply, where identical ones are merged.

    @staticmethod
    def _tick_displays(cell: _Cell) -> None:
        """Show the display rows that are due; let the text of ranks with none held go."""
        cell.displays.tick()
        cell.merger.blocked = {r for r in cell.merger.blocked if cell.displays.holds(r)}

    def _combine(self, cell: _Cell) -> CellResult:
        result = CellResult(died=dict(cell.died))
        errors: dict[tuple[str, str, tuple[str, ...]], list[int]] = defaultdict(list)
        first_traceback: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
        # Errors that differ only in numbers of their message (a rank's number,
        # chorus's "rank 2/4") merge; each rank's message is listed under them.
        messages: dict[tuple[str, str, tuple[str, ...]], dict[int, str]] = defaultdict(dict)
        for rank in cell.targets:
            reply = cell.replies.get(rank)
            if reply is None:
                continue
            content = reply["content"]
            if content.get("status") == "error":
                key = _error_key(content)
                if key not in first_traceback:
                    first_traceback[key] = content.get("traceback", [])
                errors[key].append(rank)
                messages[key][rank] = content["evalue"]
            elif content.get("status") == "aborted":
                errors[("Aborted", "execution aborted", ())].append(rank)
            result.user_expressions_by_rank[rank] = content.get("user_expressions", {})
            if rank == min(cell.targets):
                result.user_expressions = content.get("user_expressions", {})
                result.payload = list(content.get("payload", []))
        for rank, code in cell.died.items():
            errors[("RankDied", f"rank {rank} {describe_exit(code)}", ())].append(rank)
        for rank in sorted(cell.lost):
            errors[("LostReply", "finished without a reply", ())].append(rank)
        if errors:
            result.status = "error"
            first = True
            for key, ranks in errors.items():
                ename, evalue, _ = key
                said = messages.get(key, {})
                if said:
                    evalue = said[ranks[0]]
                shown = first_traceback.get(key, [])
                label = format_ranks(ranks)
                if shown:
                    lines = [f"\x1b[1;31m{label}\x1b[0m", *shown]
                else:
                    lines = [f"\x1b[1;31m{label} {ename}\x1b[0m: {evalue}"]
                if len(set(said.values())) > 1:
                    by_message: dict[str, list[int]] = defaultdict(list)
                    for rank in ranks:
                        by_message[said[rank]].append(rank)
                    lines += [
                        f"\x1b[1;31m{format_ranks(who)} {ename}\x1b[0m: {text}"
                        for text, who in by_message.items()
                    ]
                self.frontend.publish(
                    "error", {"ename": ename, "evalue": f"{label} {evalue}", "traceback": lines}
                )
                if first:
                    result.ename, result.evalue, result.traceback = ename, evalue, lines
                    first = False
        result.result = self._merge_results(cell)
        return result

    def _merge_results(self, cell: _Cell) -> dict[str, Any] | None:
        if not cell.results:
            return None
        # Ranks agree when their whole bundles do: an HTML object's text/plain
        # is the same on every rank whatever its HTML.
        groups: dict[str, list[int]] = defaultdict(list)
        for rank in sorted(cell.results):
            groups[json.dumps(cell.results[rank]["data"], sort_keys=True)].append(rank)
        if len(groups) == 1:
            # One value: the data stays the value itself (nbconvert, papermill
            # and Out[n] read it); the ranks are in the metadata and in a
            # label shown just before it.
            (ranks,) = groups.values()
            result = copy.deepcopy(cell.results[ranks[0]])
            label = format_ranks(ranks)
            result.setdefault("metadata", {})["chorus"] = {"ranks": ranks, "label": label}
            self.frontend.stream("stdout", label_line(ranks))
            return result
        # Several distinct results: rich ones as they are, each after its
        # label, and one text/plain execute_result listing every rank's value.
        for ranks in groups.values():
            data = cell.results[ranks[0]]["data"]
            if set(data) - {"text/plain"}:
                self.frontend.stream("stdout", label_line(ranks))
                self.frontend.publish("display_data", tagged(cell.results[ranks[0]], ranks))
        text = "\n".join(
            f"{format_ranks(ranks)} {cell.results[ranks[0]]['data'].get('text/plain', '')}"
            for ranks in groups.values()
        )
        return {
            "data": {"text/plain": text},
            "metadata": {"chorus": {"ranks": sorted(cell.results)}},
        }


_NUMBER = re.compile(r"\d+")


def _late_interrupt_notice(late: Sequence[Rank]) -> str:
    """What the cell says when the last interrupt has not reached some ranks yet."""
    ranks = format_ranks(r.rank for r in late)
    hosts = ", ".join(dict.fromkeys(r.host for r in late))
    return (
        f"[chorus] the interrupt sent to ranks {ranks} ({hosts}) has not reached them after "
        f"{INTERRUPT_DELIVERY_WAIT:g} s; this cell runs anyway, and the interrupt may still "
        "stop it on those ranks\n"
    )


def _activity(snapshot: RankSnapshot) -> str:
    """``in all_sum on world`` (inside a collective) or ``running line 3 in f (cell 2)``."""
    for call in snapshot["calls"]:
        if call["record"]["state"] in ("entered", "agreed"):
            return f"running: inside {call['record']['op']} on {call['group']}"
    main = next((t for t in snapshot["threads"] if t["main"]), None)
    frames = [f for f in (main or {"frames": []})["frames"] if not f["library"]]
    if not frames:
        return "running"
    frame = frames[-1]
    cell = frame.get("cell")
    where = f"cell [{cell}]" if cell is not None else Path(frame["file"]).name
    return f"running: line {frame['line']} in {frame['function']} ({where})"


def _error_key(content: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    """What makes two ranks' errors "the same": numbers in the message do not count.

    Ranks may have run different numbers of cells (``In [N]``), and a message
    often holds the rank's own number; the frames must match otherwise (the
    last traceback entry is the message itself).
    """
    *frames, message = content["traceback"] or [""]
    traceback = (*(_CELL_NUMBER.sub("In[*]", line) for line in frames), _NUMBER.sub("#", message))
    return (content["ename"], _NUMBER.sub("#", content["evalue"]), traceback)
