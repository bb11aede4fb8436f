"""One prompt for many ranks: collecting input requests and delivering replies.

Ranks that call ``input()``, ``getpass()`` or stop in pdb each send an
input_request. The broker waits until every rank still running the cell is
waiting (or no new request came for :data:`SETTLE` seconds, since some ranks
may be blocked elsewhere, e.g. in a collective), then asks the frontend once,
with a prompt that says which ranks wait (``[0-3] (Pdb) ``). The reply goes
to every waiting rank, or only to some when it starts with a rank prefix:
``!1 p x`` answers rank 1 alone, ``!0,2 c`` ranks 0 and 2.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

from chorus.kernel.labels import format_ranks, parse_ranks

if TYPE_CHECKING:
    from collections.abc import Callable

    from chorus.kernel.engine import Frontend
    from chorus.kernel.output import OutputMerger

# Seconds without a new input request before prompting for the ranks that wait.
SETTLE = 0.25
# Seconds of quiet output before a prompt: a rank's last lines travel on iopub,
# its input_request on stdin, and the two sockets do not keep their order.
QUIET = 0.1
# "!<ranks> <text>": digits, commas and dashes, then one space (so pdb's own
# "!statement" syntax, e.g. "!x = 1", is left alone).
_TARGETED = re.compile(r"^!(\d[\d,\-]*|all) (.*)$", re.DOTALL)


def split_targets(reply: str, size: int) -> tuple[list[int] | None, str]:
    """``("!1 p x", 4)`` -> ``([1], "p x")``; an untargeted reply -> ``(None, reply)``."""
    match = _TARGETED.match(reply)
    if match is None:
        return None, reply
    return parse_ranks(match.group(1), size), match.group(2)


class InputBroker:
    """Collects input requests of one cell's ranks and answers them together.

    The broker decides who gets which answer; ``answer(rank, text)`` (the
    engine's) delivers it. ``size`` is how many ranks there are (an answer
    may name some: ``[0,2] text``).
    """

    def __init__(
        self,
        size: int,
        answer: Callable[[int, str], None],
        frontend: Frontend,
        merger: OutputMerger,
        targets: set[int],
    ) -> None:
        self.size = size
        self.answer = answer
        self.frontend = frontend
        self.merger = merger
        self.targets = targets
        self.waiting: dict[int, tuple[str, bool]] = {}
        self._last_request = 0.0
        self._last_output = 0.0
        self._task: asyncio.Task[None] | None = None

    def request(self, rank: int, prompt: str, password: bool) -> None:
        """Rank ``rank`` asked for input."""
        self.waiting[rank] = (prompt, password)
        self._last_request = time.monotonic()

    def output_seen(self) -> None:
        """A rank printed something: hold the prompt until output is quiet."""
        self._last_output = time.monotonic()

    def update(self, busy: set[int]) -> None:
        """Called every tick with the ranks still running the cell."""
        for rank in list(self.waiting):
            if rank not in busy:
                del self.waiting[rank]
        if self._task is not None or not self.waiting:
            return
        now = time.monotonic()
        if now - self._last_output < QUIET or now - self._last_request < QUIET:
            return
        everyone_waits = busy <= set(self.waiting)
        if everyone_waits or now - self._last_request > SETTLE:
            if self.merger.pending():
                # Show held output first, and prompt only once it had time to
                # arrive: frontends may render a prompt before earlier iopub.
                self.merger.flush()
                self._last_output = now
                return
            self._task = asyncio.create_task(self._prompt())

    def cancel_prompt(self) -> None:
        """Drop the open prompt (the ranks were interrupted)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.waiting.clear()

    def close(self) -> None:
        self.cancel_prompt()

    async def _prompt(self) -> None:
        try:
            ranks = sorted(self.waiting)
            prompts = [self.waiting[r][0] for r in ranks]
            password = any(self.waiting[r][1] for r in ranks)
            # Ranks usually wait on the same prompt; if not, show the lowest rank's.
            prompt = prompts[0]
            try:
                reply = await self.frontend.ask(f"{format_ranks(ranks)} {prompt}", password)
            except EOFError:
                reply = "\x04"  # ipykernel turns this into EOFError in the rank
            try:
                chosen, text = split_targets(reply, self.size)
            except ValueError as err:
                self.frontend.stream("stderr", f"[chorus] {err}\n")
                return
            recipients = [r for r in self.waiting if chosen is None or r in chosen]
            if chosen is not None and not recipients:
                self.frontend.stream(
                    "stderr", f"[chorus] {format_ranks(chosen)} not waiting for input\n"
                )
            for rank in recipients:
                self.answer(rank, text)
                del self.waiting[rank]
        finally:
            self._task = None
