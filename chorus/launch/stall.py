"""The launcher's side of "where is every rank": ask, collect, report, watch for stalls.

The launcher asks every running rank with ``SIGURG`` (a signal that does
nothing to a process that did not ask for it); a rank that called
``chorus.init()`` answers with one marked line on its stderr (its
:func:`chorus.debug.snapshot`), which the output pump hands here instead of
printing it. :meth:`WhereCollector.report` merges the answers
(:mod:`chorus.where`); ranks that exited or did not answer in time are named
as such.

Stall watching (``--stall-report``, ``--stall-timeout``): every few seconds
the launcher asks again; a call that some ranks have waited in for the
given time while the others cannot join it (they made no such call, or wait
in another) is a stall. The report is printed once per stalled call.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

from chorus.where import REPORT_SIGNAL, RankSnapshot, Report, WhereAnswers, merge_answers

# How long the ranks get to answer.
ANSWER_TIMEOUT = 3.0
# Verdicts that mean the ranks cannot all be making progress.
STALLED = ("missing-call", "missing-init", "different-calls")


class Asked(Protocol):
    """A rank as the collector needs it (launch.process.RankProcess and the remote one)."""

    rank: int

    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...


class WhereCollector:
    """Collects the ranks' snapshots and merges them into a report."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._waiting: dict[int, asyncio.Future[RankSnapshot]] = {}
        # One question at a time: Ctrl-\ during a stall watcher's poll waits for it.
        self._asking = asyncio.Lock()

    def on_answer(self, rank: int) -> Callable[[bytes], None]:
        """The output pump's divert callback for ``rank``'s stderr."""

        def take(data: bytes) -> None:
            try:
                snapshot = json.loads(data)
            except ValueError:
                return
            future = self._waiting.get(rank)
            if future is not None and not future.done() and "error" not in snapshot:
                future.set_result(snapshot)

        return take

    async def report(
        self, ranks: Sequence[Asked], exited: dict[int, str], timeout: float = ANSWER_TIMEOUT
    ) -> Report:
        """Ask every running rank, wait up to ``timeout`` s, merge what came back."""
        return merge_answers(await self.answers(ranks, exited, timeout))

    async def answers(
        self, ranks: Sequence[Asked], exited: dict[int, str], timeout: float = ANSWER_TIMEOUT
    ) -> WhereAnswers:
        """Ask every running rank, wait up to ``timeout`` s: the snapshots, and who did not answer."""
        async with self._asking:
            return await self._ask(ranks, exited, timeout)

    async def _ask(
        self, ranks: Sequence[Asked], exited: dict[int, str], timeout: float
    ) -> WhereAnswers:
        loop = asyncio.get_running_loop()
        running = [r for r in ranks if r.returncode is None]
        self._waiting = {r.rank: loop.create_future() for r in running}
        signum = getattr(signal, REPORT_SIGNAL)
        for rank in running:
            rank.send_signal(signum)
        futures = list(self._waiting.values())
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        snapshots = [f.result() for f in futures if f.done()]
        missing = {str(number): why for number, why in exited.items()}
        for number, future in self._waiting.items():
            if not future.done():
                future.cancel()
                missing[str(number)] = (
                    f"no answer within {timeout:g} s (not in chorus.init yet, busy in"
                    " code that holds the GIL, or a SIGURG handler of its own)"
                )
        self._waiting = {}
        return WhereAnswers(size=self.size, snapshots=snapshots, missing=missing)


def stall_key(report: Report) -> tuple[object, ...] | None:
    """What identifies a stall (its verdict and calls), or None when the ranks may progress."""
    if report.verdict.kind not in STALLED:
        return None
    calls: list[tuple[object, ...]] = [(s.rank, "init") for s in report.states if s.setting_up]
    for state in report.states:
        if state.running is not None:
            record = state.running["record"]
            calls.append((state.rank, state.running["group"], record["op"], record["seq"]))
    return (report.verdict.kind, tuple(sorted(calls)))


def longest_wait(report: Report) -> float:
    """Seconds the longest-waiting rank has been in its call."""
    return max(
        (s.since for s in report.states if s.running is not None or s.setting_up), default=0.0
    )
