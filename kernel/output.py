"""Merging the output streams of N ranks into one labelled stream.

Ranks print the same thing most of the time (the same code runs
everywhere), so the merger holds each rank's complete lines briefly and, when
every rank still running has produced its next line, emits identical lines
once as ``[0-3] text`` and differing ones grouped by text (``[0,2] a``,
``[1,3] b``). A line nobody matches within ``hold`` seconds is emitted on
its own, so a rank that prints alone still streams.

A partial line (``print(i, end=" ")``, a progress bar redrawn with ``\r``)
that stays incomplete for ``live_after`` seconds is shown live, per rank,
through the ``live`` callback: the Engine shows it as one output that
updates in place. A carriage return means what it means on a terminal: only
the text after the last one is shown, live and once the line is complete.
When the line completes, the live output is withdrawn and the line goes
through the merger like any other (identical final lines still collapse).
Partial lines still open at the end are emitted by :meth:`OutputMerger.flush`.

In ``byrank`` mode nothing is collapsed: output is kept until the cell ends,
then shown as one block per rank.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chorus.kernel.labels import format_ranks

# Seconds a complete line waits for the same line from the other ranks (ranks
# sharing 2 cores can lag each other by a few hundred ms).
DEFAULT_HOLD = 0.5
# Seconds a partial line stays incomplete before it is shown live.
DEFAULT_LIVE_AFTER = 0.2

Emit = Callable[[str, str], None]  # (stream name, text)
# (rank, stream name, the line as a terminal would show it; None: withdraw it)
Live = Callable[[int, str, "str | None"], None]


# A rank kernel's cell files live in a directory named after its pid
# (ipykernel_<pid>): pdb's "> .../ipykernel_4242/123.py(3)<module>()" is the
# same place on every rank.
_CELL_DIR = re.compile(r"ipykernel_\d+")


def same_line(line: str) -> str:
    """What two ranks' lines are compared by: cell-file paths made rank-neutral."""
    return _CELL_DIR.sub("ipykernel_*", line)


def on_terminal(line: str) -> str:
    """What a terminal shows of ``line``: the text after its last carriage return."""
    body = line.removesuffix("\r")  # "\r\n" ends a line too
    return body.rsplit("\r", 1)[-1]


@dataclass
class _RankStream:
    partial: str = ""
    partial_since: float = 0.0  # when the open partial line began
    shown: str | None = None  # what its live output shows, if it has one
    lines: deque[str] = field(default_factory=deque)  # complete, without the newline
    # When the oldest held line arrived: what ``hold`` is measured from.
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (lines in batch, time)
    taken: int = 0  # lines of arrivals[0]'s batch already emitted

    def oldest(self) -> float:
        return self.arrivals[0][1]

    def take(self, count: int) -> list[str]:
        """Remove and return the ``count`` oldest held lines."""
        if count == len(self.lines):
            taken = list(self.lines)
            self.lines.clear()
        else:
            taken = [self.lines.popleft() for _ in range(count)]
        self.taken += count
        while self.arrivals and self.taken >= self.arrivals[0][0]:
            self.taken -= self.arrivals.popleft()[0]
        return taken

    def clear(self) -> None:
        self.lines.clear()
        self.arrivals.clear()
        self.taken = 0


class OutputMerger:
    """Collects ``stream`` text per rank and emits it labelled.

    Parameters
    ----------
    ranks
        The ranks whose output is expected (the cell's targets).
    emit
        Called with ``(name, text)`` for every chunk to show; ``name`` is
        ``"stdout"`` or ``"stderr"``.
    mode
        ``"collapse"`` (default) or ``"byrank"``.
    hold
        Seconds a line waits for its twins on other ranks.
    live
        Shows a rank's open partial line live (see the module's docstring);
        without it partial lines wait for :meth:`flush`.
    live_after
        Seconds a partial line stays open before it is shown live.
    """

    def __init__(
        self,
        ranks: Iterable[int],
        emit: Emit,
        mode: str = "collapse",
        hold: float = DEFAULT_HOLD,
        clock: Callable[[], float] = time.monotonic,
        live: Live | None = None,
        live_after: float = DEFAULT_LIVE_AFTER,
    ) -> None:
        self.active = set(ranks)
        self.emit = emit
        self.mode = mode
        self.hold = hold
        self.clock = clock
        self.live = live
        self.live_after = live_after
        # Ranks whose lines must wait (a display of theirs is held before them).
        self.blocked: set[int] = set()
        self._streams: dict[str, dict[int, _RankStream]] = defaultdict(
            lambda: defaultdict(_RankStream)
        )

    def feed(self, rank: int, name: str, text: str) -> None:
        """Add ``text`` printed by ``rank`` on stream ``name``; emit what is ready."""
        stream = self._streams[name][rank]
        was_open = bool(stream.partial)
        data = stream.partial + text
        *complete, stream.partial = data.split("\n")
        if complete:
            stream.lines.extend(on_terminal(line) for line in complete)
            stream.arrivals.append((len(complete), self.clock()))
            if stream.shown is not None and self.live is not None:
                # The live line is complete: it goes out with the others now.
                self.live(rank, name, None)
                stream.shown = None
        if stream.partial and (complete or not was_open):
            stream.partial_since = self.clock()
        if self.mode == "collapse":
            self._match(name, final=False)

    def rank_done(self, rank: int) -> None:
        """``rank`` finished the cell: stop waiting for its lines."""
        self.active.discard(rank)
        if self.mode == "collapse":
            for name in list(self._streams):
                self._match(name, final=False)

    def discard(self, rank: int) -> None:
        """Drop what ``rank`` printed that is still held (it cleared its output)."""
        for name, streams in self._streams.items():
            stream = streams.pop(rank, None)
            if stream is not None and stream.shown is not None and self.live is not None:
                self.live(rank, name, None)
        self.active.discard(rank)

    def tick(self) -> None:
        """Emit lines that waited longer than ``hold``; show open lines live (call periodically)."""
        if self.mode == "collapse":
            for name in list(self._streams):
                self._match(name, final=False)
            self._show_live()

    def _show_live(self) -> None:
        if self.live is None:
            return
        now = self.clock()
        for name, streams in self._streams.items():
            for rank, stream in streams.items():
                if not stream.partial or now - stream.partial_since < self.live_after:
                    continue
                visible = on_terminal(stream.partial)
                if visible != stream.shown:
                    stream.shown = visible
                    self.live(rank, name, visible)

    def pending(self) -> bool:
        """Whether any text is held back (complete or partial lines)."""
        return any(
            stream.lines or stream.partial
            for streams in self._streams.values()
            for stream in streams.values()
        )

    def flush(self, partial: bool = True) -> None:
        """Emit everything held, including partial lines when ``partial``."""
        for name in list(self._streams):
            if self.mode == "collapse":
                self._match(name, final=True)
            else:
                self._emit_by_rank(name)
            if partial:
                self._emit_partials(name)

    # -- internals -----------------------------------------------------------

    def _match(self, name: str, final: bool) -> None:
        streams = self._streams[name]
        out: list[str] = []  # one message for everything ready now, not one per line
        while True:
            ready = sorted(r for r, s in streams.items() if s.lines and r not in self.blocked)
            if not ready:
                break
            held = [streams[r] for r in ready]
            if not final and not self.active.issubset(ready):
                # A rank still running has no line here yet: its twin may be
                # on the way. The oldest line goes out alone after ``hold``.
                if self.clock() - min(h.oldest() for h in held) < self.hold:
                    break
                rows = 1
            else:
                # Nobody to wait for: every row that all these ranks hold
                # goes out now (the set of ranks stays the same for them).
                rows = min(len(h.lines) for h in held)
            label = format_ranks(ready)
            alone = [f"[{rank}] " for rank in ready]
            for texts in zip(*(h.take(rows) for h in held), strict=True):
                keys = [same_line(text) for text in texts]
                if keys.count(keys[0]) == len(keys):
                    out.append(f"{label} {texts[0]}\n")
                    continue
                groups: dict[str, list[int]] = {}
                for i, key in enumerate(keys):
                    groups.setdefault(key, []).append(i)
                for members in groups.values():
                    text = texts[members[0]]
                    if len(members) == 1:
                        out.append(f"{alone[members[0]]}{text}\n")
                    else:
                        out.append(f"{format_ranks(ready[i] for i in members)} {text}\n")
        if out:
            self.emit(name, "".join(out))

    def _emit_by_rank(self, name: str) -> None:
        streams = self._streams[name]
        for rank in sorted(streams):
            stream = streams[rank]
            if not stream.lines:
                continue
            body = "".join(line + "\n" for line in stream.lines)
            stream.clear()
            self.emit(name, f"── rank {rank} ──\n{body}")

    def _emit_partials(self, name: str) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for rank, stream in sorted(self._streams[name].items()):
            if not stream.partial:
                continue
            if stream.shown is not None and self.live is not None:
                # Already on screen, live: its last state stays there.
                final = on_terminal(stream.partial)
                if final != stream.shown:
                    self.live(rank, name, final)
                stream.shown = None
            else:
                groups[on_terminal(stream.partial)].append(rank)
            stream.partial = ""
        for text, ranks in groups.items():
            self.emit(name, f"{format_ranks(ranks)} {text}")
