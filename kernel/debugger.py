"""The Jupyter debugger across ranks: one Debug Adapter Protocol peer in front of N.

Each rank kernel is a stock IPython kernel with its own debugger (debugpy,
driven through ``debug_request`` on its control channel). :class:`DebugProxy`
makes them one debugger for the frontend (JupyterLab's debugger panel, or
any DAP client speaking the Jupyter debug protocol):

- requests that configure the debugger (``initialize``, ``attach``,
  ``setBreakpoints``, ``dumpCell``, ...) go to every rank, and their replies
  are merged: a breakpoint that binds on some ranks only says which;
- a rank's ids (threads, frames, variable references) are its own: the
  frontend sees proxy ids (positive int32, never reused), each standing for
  one ``(rank, id)``; frames and variables of a rank are dropped when it runs
  on;
- cell files: every rank writes a cell to its own temporary folder (the
  folder holds the pid); the frontend is told the chorus kernel's folder and
  paths are rewritten both ways;
- JupyterLab shows one thread and never asks for threads, so a stop is one
  ``stopped`` event for the focused rank, and its call stack holds every
  stopped rank's frames, named ``[rank r] function``, the focused rank's
  first; every frame's scopes end with a "Ranks" scope saying where each
  rank is. A client that asks for ``threads`` (VS Code) gets one thread per
  rank and one ``stopped`` event per rank;
- ``continue``, ``next``, ``stepIn`` and ``stepOut`` move every stopped rank
  together (a rank stepped alone into a collective waits there for the
  others); ``singleThread`` in the request, or ``%lockstep off`` in the
  debugger's evaluate box, moves the named rank only. ``%rank 2`` there
  focuses rank 2 (its frames first; what one-rank steps move).

Everything here runs on the chorus kernel's main event loop, where the rank
clients live; the kernel hands requests over from its control thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from chorus.kernel.labels import format_ranks

# A DAP message (request, response or event), as the Jupyter debug protocol carries it.
Dap = dict[str, Any]
# Sends one DAP request to a rank's debugger; its response (raises when none comes).
AskRank = Callable[[int, Dap, float], Awaitable[Dap]]

INT32_MAX = 2**31 - 1
# Ranks that stop at one breakpoint stop within moments of each other: the
# frontend is told once they have (or after this long, then again as more stop).
STOP_GATHER = 0.3
# How long a rank's debugger may take to answer (initialize starts debugpy).
SLOW_ANSWER = 30.0
ANSWER = 10.0
# ids in the reference table that belong to no rank (the "Ranks" scope).
NO_RANK = -1
# Events every rank sends alike: the frontend gets the lowest rank's only.
_ONCE = {"initialized", "process", "exited", "terminated", "breakpoint", "capabilities"}
# Events with nothing for the frontend (N copies of every module import).
_DROPPED = {"module", "thread", "loadedSource", "debugpySockets", "debugpyWaitingForServer"}
RESUMES = ("continue", "next", "stepIn", "stepOut")


class IdTable:
    """Proxy ids for ranks' own ids: positive int32, not reused while the table lives."""

    def __init__(self) -> None:
        self._next = itertools.count(1)
        self._ours: dict[int, tuple[int, int]] = {}
        self._theirs: dict[tuple[int, int], int] = {}

    def ours(self, rank: int, theirs: int) -> int:
        """The proxy id for ``rank``'s id ``theirs`` (made on first use)."""
        key = (rank, theirs)
        found = self._theirs.get(key)
        if found is not None:
            return found
        ours = next(self._next)
        while ours > INT32_MAX or ours in self._ours:
            if ours > INT32_MAX:
                self._next = itertools.count(1)
            ours = next(self._next)
        self._ours[ours] = key
        self._theirs[key] = ours
        return ours

    def theirs(self, ours: Any) -> tuple[int, int] | None:
        """``(rank, id)`` behind a proxy id; ``None`` for an unknown (or dropped) one."""
        return self._ours.get(ours) if isinstance(ours, int) else None

    def drop(self, rank: int) -> None:
        """Forget every id of ``rank`` (its frames and variables are gone once it runs)."""
        for key in [k for k in self._theirs if k[0] == rank]:
            del self._ours[self._theirs.pop(key)]

    def clear(self) -> None:
        self._ours.clear()
        self._theirs.clear()


def rewrite_paths(message: Any, old: str, new: str) -> Any:
    """A copy of ``message`` with every ``path``/``sourcePath`` under ``old`` moved under ``new``."""
    if isinstance(message, dict):
        copy = {}
        for key, value in message.items():
            if key in ("path", "sourcePath") and isinstance(value, str) and value.startswith(old):
                copy[key] = new + value[len(old) :]
            else:
                copy[key] = rewrite_paths(value, old, new)
        return copy
    if isinstance(message, list):
        return [rewrite_paths(item, old, new) for item in message]
    return message


class DebugProxy:
    """One debugger for the frontend in front of every rank's.

    Parameters
    ----------
    size
        How many ranks.
    ask
        Sends a DAP request to a rank's debugger and returns its response
        (the Engine's ``debug_request``); raises when the rank cannot answer.
    emit
        Sends a DAP event to the frontend.
    running
        The ranks whose process runs now.
    describe
        ``"rank 2"`` or ``"rank 2 on host-b"``: how errors name a rank.
    where_running
        For ranks not stopped in the debugger: a line saying what each does
        (in a collective, or which line it runs); may be slow, never raises.
    """

    def __init__(
        self,
        size: int,
        ask: AskRank,
        emit: Callable[[Dap], None],
        running: Callable[[], list[int]],
        describe: Callable[[int], str],
        where_running: Callable[[list[int]], Awaitable[dict[int, str]]] | None = None,
    ) -> None:
        from ipykernel.compiler import get_tmp_directory

        self.size = size
        self._ask = ask
        self._emit = emit
        self._running = running
        self._describe = describe
        self._where_running = where_running
        # The chorus kernel's own cell folder: the one the frontend is told.
        self.prefix = str(get_tmp_directory()) + os.sep  # type: ignore[no-untyped-call]
        self._rank_prefix: dict[int, str] = {}
        # Ranks whose debugger is initialized / attached (they stay so: see _on_initialize).
        self._initialized: set[int] = set()
        self._attached: set[int] = set()
        self._capabilities: Dap = {}
        self.started = False
        self.breakpoints: dict[str, list[Dap]] = {}  # chorus path -> the lines asked for
        self.threads = IdTable()
        self.refs = IdTable()  # frames and variable references
        # Ranks stopped in the debugger: their thread, why, and their innermost frame.
        self.stopped: dict[int, int] = {}
        self._reasons: dict[int, Dap] = {}
        self._where: dict[int, str] = {}
        self.focus = 0
        self.lockstep = True
        # A client that asks for threads sees one thread per rank (VS Code);
        # one that never does (JupyterLab) sees every rank in one call stack.
        self.per_thread = False
        self._seq = itertools.count(1)
        self._rank_seq = itertools.count(1)
        self._told: set[int] = set()  # stopped ranks the frontend has been told about
        self._gather: asyncio.Task[None] | None = None

    # -- requests -------------------------------------------------------------------

    async def handle(self, request: Dap) -> Dap:
        """The response to one DAP request from the frontend (exactly one, never raises)."""
        command = str(request.get("command", ""))
        handler = getattr(self, f"_on_{command}", None)
        try:
            if handler is not None:
                return await handler(request)  # type: ignore[no-any-return]
            return await self._forward_to_focus(request)
        except Exception as err:  # noqa: BLE001 - a failure is the response's message
            return self._response(request, success=False, message=f"{command}: {err}")

    async def _on_initialize(self, request: Dap) -> Dap:
        # A rank's debugger is set up once and stays attached: ipykernel
        # (7.4) never answers an initialize after a disconnect, and its
        # control channel (where requests, interrupts of the debugger) would
        # wait behind it for ever. A frontend's disconnect is done here.
        ranks = [r for r in self._running() if r not in self._initialized]
        answers, failed = await self._everywhere(request, SLOW_ANSWER, ranks)
        if failed:
            return self._failed(request, failed)
        for rank, answer in sorted(answers.items()):
            info = await self._ask_rank(rank, {"command": "debugInfo", "arguments": {}}, ANSWER)
            self._rank_prefix[rank] = info.get("body", {}).get("tmpFilePrefix", "")
            self._initialized.add(rank)
            self._capabilities = self._capabilities or answer.get("body", {})
        self.started = True
        body = {**self._capabilities, "supportsSingleThreadExecutionRequests": True}
        return self._response(request, body=body)

    async def _on_attach(self, request: Dap) -> Dap:
        ranks = [r for r in self._running() if r not in self._attached]
        answers, failed = await self._everywhere(request, SLOW_ANSWER, ranks)
        self._attached.update(answers)
        if failed:
            return self._failed(request, failed)
        return self._response(request)

    async def _on_configurationDone(self, request: Dap) -> Dap:
        return await self._merged(request, ANSWER)

    async def _on_setExceptionBreakpoints(self, request: Dap) -> Dap:
        return await self._merged(request, ANSWER)

    async def _on_disconnect(self, request: Dap) -> Dap:
        """The frontend leaves: no breakpoint stays, every stopped rank runs on."""
        failed: dict[int, str] = {}
        attached = [r for r in self._running() if r in self._attached]
        for path in list(self.breakpoints):
            clear = {
                "command": "setBreakpoints",
                "arguments": {"source": {"path": path}, "breakpoints": []},
            }
            failed.update((await self._everywhere(clear, ANSWER, attached))[1])
        no_filters = {"command": "setExceptionBreakpoints", "arguments": {"filters": []}}
        failed.update((await self._everywhere(no_filters, ANSWER, attached))[1])
        stopped = dict(self.stopped)
        self.stopped.clear()
        for rank, thread in stopped.items():
            resume = {"command": "continue", "arguments": {"threadId": thread}}
            with contextlib.suppress(Exception):
                await self._ask_rank(rank, resume, ANSWER)
        self.started = False
        self.breakpoints.clear()
        self._told.clear()
        self.threads.clear()
        self.refs.clear()
        self.per_thread = False
        self.focus = 0
        self.lockstep = True
        if failed:
            return self._failed(request, failed)
        return self._response(request)

    async def _on_debugInfo(self, request: Dap) -> Dap:
        # Answered here: the frontend asks before the ranks may have started.
        from ipykernel.compiler import get_tmp_hash_seed

        stopped = []
        if self.stopped:
            focus = self._focused()
            stopped = [self.threads.ours(focus, self.stopped[focus])]
        body = {
            "isStarted": self.started,
            "hashMethod": "Murmur2",
            "hashSeed": get_tmp_hash_seed(),  # type: ignore[no-untyped-call]
            "tmpFilePrefix": self.prefix,
            "tmpFileSuffix": ".py",
            "breakpoints": [
                {"source": path, "breakpoints": lines} for path, lines in self.breakpoints.items()
            ],
            "stoppedThreads": stopped,
            "richRendering": True,
            "exceptionPaths": ["Python Exceptions"],
            "copyToGlobals": True,
        }
        return self._response(request, body=body)

    async def _on_dumpCell(self, request: Dap) -> Dap:
        answers, failed = await self._everywhere(request, ANSWER)
        if failed:
            return self._failed(request, failed)
        rank = min(answers)
        path = self._to_frontend(rank, answers[rank])["body"]["sourcePath"]
        # Kept here too: "source" requests for a cell are answered from it.
        Path(self.prefix).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(path).write_text(request["arguments"]["code"], encoding="utf-8")
        return self._response(request, body={"sourcePath": path})

    async def _on_setBreakpoints(self, request: Dap) -> Dap:
        answers, failed = await self._everywhere(request, ANSWER)
        if failed:
            return self._failed(request, failed)
        path = request.get("arguments", {}).get("source", {}).get("path", "")
        # Each line asked for, with the ranks where it bound.
        bound: dict[int, list[int]] = {}
        first: dict[int, Dap] = {}
        for rank in sorted(answers):
            response = self._to_frontend(rank, answers[rank])
            for point in response.get("body", {}).get("breakpoints", []):
                line = point.get("line")
                first.setdefault(line, point)
                if point.get("verified"):
                    bound.setdefault(line, []).append(rank)
        points = []
        for line, point in first.items():
            ranks = bound.get(line, [])
            merged = {**point, "verified": bool(ranks)}
            if ranks and len(ranks) < len(answers):
                merged["message"] = f"bound on ranks {format_ranks(ranks)} only"
            points.append(merged)
        self.breakpoints[path] = [{"line": p["line"]} for p in points if p.get("verified")]
        if not self.breakpoints[path]:
            del self.breakpoints[path]
        return self._response(request, body={"breakpoints": points})

    async def _on_threads(self, request: Dap) -> Dap:
        self.per_thread = True
        threads = []
        for rank in self._running():
            try:
                answer = await self._ask_rank(rank, request, ANSWER)
            except Exception:  # noqa: BLE001, S112 - a rank that cannot answer has no threads to show
                continue
            for thread in answer.get("body", {}).get("threads", []):
                if _internal_thread(thread.get("name", "")):
                    continue
                ours = self.threads.ours(rank, thread["id"])
                threads.append({"id": ours, "name": f"[rank {rank}] {thread.get('name', '')}"})
        return self._response(request, body={"threads": threads})

    async def _on_stackTrace(self, request: Dap) -> Dap:
        args = request.get("arguments", {})
        owner = self.threads.theirs(args.get("threadId"))
        if self.per_thread:
            ranks = [owner[0]] if owner is not None and owner[0] in self.stopped else []
        else:
            focus = owner[0] if owner is not None and owner[0] in self.stopped else None
            focus = focus if focus is not None else self._focused()
            ranks = sorted(self.stopped, key=lambda r: (r != focus, r))
        frames: list[Dap] = []
        for rank in ranks:
            arguments = {**args, "threadId": self.stopped[rank]}
            if not self.per_thread:
                # Every frame of every rank: paging would cut ranks off.
                arguments.pop("startFrame", None)
                arguments.pop("levels", None)
            ask = {"command": "stackTrace", "arguments": arguments}
            try:
                answer = self._to_frontend(rank, await self._ask_rank(rank, ask, ANSWER))
            except Exception:  # noqa: BLE001, S112 - its frames are missing; the Ranks scope says why
                continue
            for index, frame in enumerate(answer.get("body", {}).get("stackFrames", [])):
                ours = {**frame, "id": self.refs.ours(rank, frame["id"])}
                ours["name"] = f"[rank {rank}] {frame.get('name', '')}"
                frames.append(ours)
                if index == 0:
                    self._where[rank] = _frame_text(frame)
        return self._response(request, body={"stackFrames": frames, "totalFrames": len(frames)})

    async def _on_scopes(self, request: Dap) -> Dap:
        args = request.get("arguments", {})
        rank, frame = self._owner(args.get("frameId"), "frame")
        answer = await self._ask_rank(
            rank, {**request, "arguments": {**args, "frameId": frame}}, ANSWER
        )
        scopes = [
            {**scope, "variablesReference": self._ref(rank, scope.get("variablesReference", 0))}
            for scope in answer.get("body", {}).get("scopes", [])
        ]
        scopes.append(
            {
                "name": "Ranks",
                "variablesReference": self.refs.ours(NO_RANK, 0),
                "expensive": False,
            }
        )
        return self._response(request, body={"scopes": scopes})

    async def _on_variables(self, request: Dap) -> Dap:
        args = request.get("arguments", {})
        owner = self.refs.theirs(args.get("variablesReference"))
        if owner is not None and owner[0] == NO_RANK:
            return self._response(request, body={"variables": await self._ranks_scope()})
        rank, ref = self._owner(args.get("variablesReference"), "variable reference")
        answer = await self._ask_rank(
            rank, {**request, "arguments": {**args, "variablesReference": ref}}, ANSWER
        )
        return self._mapped_variables(request, rank, answer)

    async def _on_inspectVariables(self, request: Dap) -> Dap:
        rank = self._focused()
        answer = await self._ask_rank(rank, request, ANSWER)
        return self._mapped_variables(request, rank, answer)

    async def _on_richInspectVariables(self, request: Dap) -> Dap:
        return await self._routed(request, "frameId")

    async def _on_copyToGlobals(self, request: Dap) -> Dap:
        return await self._routed(request, "srcFrameId")

    async def _on_setExpression(self, request: Dap) -> Dap:
        return await self._routed(request, "frameId")

    async def _on_setVariable(self, request: Dap) -> Dap:
        args = request.get("arguments", {})
        rank, ref = self._owner(args.get("variablesReference"), "variable reference")
        answer = await self._ask_rank(
            rank, {**request, "arguments": {**args, "variablesReference": ref}}, ANSWER
        )
        return self._relabel(request, rank, answer)

    async def _on_evaluate(self, request: Dap) -> Dap:
        expression = str(request.get("arguments", {}).get("expression", "")).strip()
        if expression.startswith(("%rank", "%lockstep")):
            return self._directive(request, expression)
        return await self._routed(request, "frameId")

    async def _on_pause(self, request: Dap) -> Dap:
        owner = self.threads.theirs(request.get("arguments", {}).get("threadId"))
        moving = [r for r in self._running() if r not in self.stopped]
        ranks = [owner[0]] if owner is not None and owner[0] in moving else moving
        failed: dict[int, str] = {}
        for rank in ranks:
            try:
                threads = await self._ask_rank(rank, {"command": "threads"}, ANSWER)
                main = next(
                    t["id"]
                    for t in threads.get("body", {}).get("threads", [])
                    if t.get("name") == "MainThread"
                )
                await self._ask_rank(
                    rank, {"command": "pause", "arguments": {"threadId": main}}, ANSWER
                )
            except Exception as err:  # noqa: BLE001 - reported in the response
                failed[rank] = str(err) or type(err).__name__
        if failed:
            return self._failed(request, failed)
        return self._response(request)

    async def _resume(self, request: Dap) -> Dap:
        args = dict(request.get("arguments", {}))
        owner = self.threads.theirs(args.pop("threadId", None))
        single = bool(args.pop("singleThread", False)) or not self.lockstep
        if single:
            rank = owner[0] if owner is not None else self._focused()
            ranks = [rank] if rank in self.stopped else []
        else:
            ranks = sorted(self.stopped)
        if not ranks:
            return self._response(request, success=False, message="no rank is stopped there")
        threads = {rank: self.stopped.pop(rank) for rank in ranks}
        for rank in ranks:
            self._ran_on(rank)
        failed: dict[int, str] = {}
        for rank in ranks:
            ask = {"command": request["command"], "arguments": {**args, "threadId": threads[rank]}}
            try:
                answer = await self._ask_rank(rank, ask, ANSWER)
            except Exception as err:  # noqa: BLE001 - reported in the response
                failed[rank] = str(err) or type(err).__name__
                continue
            if not answer.get("success", False):
                failed[rank] = answer.get("message", "refused")
        if failed:
            return self._failed(request, failed)
        body = {"allThreadsContinued": not self.stopped} if request["command"] == "continue" else {}
        return self._response(request, body=body)

    _on_continue = _resume
    _on_next = _resume
    _on_stepIn = _resume
    _on_stepOut = _resume

    async def _forward_to_focus(self, request: Dap) -> Dap:
        """Requests with nothing rank-specific in them (``source``, ``modules``, ...)."""
        rank = self._focused()
        answer = await self._ask_rank(rank, request, ANSWER)
        return self._relabel(request, rank, answer)

    def set_focus(self, rank: int) -> None:
        """Show ``rank``: its frames first, its variables between cells, what one-rank steps move.

        Raises
        ------
        ValueError
            There is no such rank.
        """
        if not 0 <= rank < self.size:
            msg = f"there are ranks 0-{self.size - 1}, not {rank}"
            raise ValueError(msg)
        self.focus = rank
        if rank in self.stopped:
            # JupyterLab shows the thread of the last stopped event: make it this rank's.
            self._told.add(rank)
            self._send_stopped(rank, sorted(self.stopped))

    def held(self) -> dict[int, str]:
        """The ranks stopped in the debugger, each with where (as far as known)."""
        return {
            rank: "stopped in the debugger"
            + (f": {self._where[rank]}" if rank in self._where else "")
            for rank in self.stopped
        }

    def refusal(self, request: Dap, why: str) -> Dap:
        """A failed response to ``request`` that says ``why``."""
        return self._response(request, success=False, message=why)

    # -- events from the ranks ----------------------------------------------------------

    def on_event(self, rank: int, event: Dap) -> None:
        """A rank's debug_event (called on the main loop as it arrives)."""
        name = event.get("event", "")
        body = event.get("body", {})
        if name == "stopped":
            if rank in self.stopped:
                self.refs.drop(rank)  # a new stop: the old frames are gone
            self.stopped[rank] = body.get("threadId", 1)
            self._reasons[rank] = body
            self._told.discard(rank)
            self._gather_stops()
        elif name == "continued":
            if rank in self.stopped and (
                body.get("allThreadsContinued") or body.get("threadId") == self.stopped[rank]
            ):
                self._continued([rank])
        elif name == "output":
            self._output(rank, event)
        elif name in _DROPPED:
            return
        elif name in _ONCE:
            if rank == min(self._running(), default=rank):
                self._send_event(name, self._to_frontend(rank, event).get("body"))
        else:
            self._send_event(name, self._to_frontend(rank, event).get("body"))

    def cell_finished(self) -> None:
        """The cell ended on every rank: none can be stopped any more."""
        if self.stopped:
            self._continued(list(self.stopped))

    def _continued(self, ranks: Iterable[int]) -> None:
        told = []
        for rank in ranks:
            thread = self.stopped.pop(rank, None)
            if rank in self._told and thread is not None:
                told.append(self.threads.ours(rank, thread))
            self._ran_on(rank)
        if self.per_thread:
            for thread in told:
                self._send_event("continued", {"threadId": thread, "allThreadsContinued": False})
        elif told and not self.stopped:
            self._send_event("continued", {"threadId": told[0], "allThreadsContinued": True})

    def _ran_on(self, rank: int) -> None:
        self.refs.drop(rank)
        self._told.discard(rank)
        self._where.pop(rank, None)
        self._reasons.pop(rank, None)

    def _gather_stops(self) -> None:
        if self._gather is None or self._gather.done():
            self._gather = asyncio.get_running_loop().create_task(self._tell_stops())

    async def _tell_stops(self) -> None:
        await asyncio.sleep(STOP_GATHER)
        new = [r for r in sorted(self.stopped) if r not in self._told]
        if not new:
            return
        if self.per_thread:
            for rank in new:
                self._told.add(rank)
                self._send_stopped(rank, new)
            return
        self._told.update(new)
        self._send_stopped(self._focused(), sorted(self.stopped))

    def _send_stopped(self, rank: int, ranks: list[int]) -> None:
        reason = self._reasons.get(rank, {})
        body = {
            "reason": reason.get("reason", "pause"),
            "threadId": self.threads.ours(rank, self.stopped[rank]),
            "allThreadsStopped": False,
            "preserveFocusHint": False,
            "description": f"stopped: ranks {format_ranks(ranks)}",
        }
        if "text" in reason:
            body["text"] = reason["text"]
        self._send_event("stopped", body)

    def _output(self, rank: int, event: Dap) -> None:
        body = event.get("body", {})
        if body.get("category") == "telemetry":
            if rank == min(self._running(), default=rank):
                self._send_event("output", body)
            return
        text = str(body.get("output", ""))
        self._send_event("output", {**body, "output": f"[{rank}] {text}"})

    def _send_event(self, name: str, body: Any) -> None:
        event: Dap = {"type": "event", "seq": next(self._seq), "event": name}
        if body is not None:
            event["body"] = body
        self._emit(event)

    # -- helpers ----------------------------------------------------------------------

    def _focused(self) -> int:
        """The rank the frontend looks at: the chosen one, else the lowest stopped one."""
        if self.stopped and self.focus not in self.stopped:
            return min(self.stopped)
        return self.focus

    def _directive(self, request: Dap, expression: str) -> Dap:
        """``%rank R`` (focus rank R) and ``%lockstep on|off``, typed in the evaluate box."""
        words = expression.split()
        if words[0] == "%rank" and len(words) == 2 and words[1].isdigit():
            rank = int(words[1])
            try:
                self.set_focus(rank)
            except ValueError as err:
                return self._response(request, success=False, message=str(err))
            result = f"rank {rank} is in focus"
        elif words[0] == "%lockstep" and words[1:] in (["on"], ["off"]):
            self.lockstep = words[1] == "on"
            result = (
                "steps move every stopped rank"
                if self.lockstep
                else f"steps move the focused rank only (rank {self._focused()})"
            )
        else:
            return self._response(
                request, success=False, message="chorus knows %rank R and %lockstep on|off"
            )
        return self._response(request, body={"result": result, "variablesReference": 0})

    async def _ranks_scope(self) -> list[Dap]:
        running = self._running()
        moving = [r for r in running if r not in self.stopped]
        doing: dict[int, str] = {}
        if moving and self._where_running is not None:
            doing = await self._where_running(moving)
        lines = []
        for rank in range(self.size):
            if rank in self.stopped:
                where = self._where.get(rank, "")
                reason = self._reasons.get(rank, {}).get("reason", "pause")
                value = f"stopped: {where} ({reason})" if where else f"stopped ({reason})"
            elif rank in running:
                value = doing.get(rank, "running")
            else:
                value = "not running"
            lines.append(
                {"name": f"rank {rank}", "value": value, "type": "str", "variablesReference": 0}
            )
        return lines

    def _owner(self, ours: Any, what: str) -> tuple[int, int]:
        owner = self.refs.theirs(ours)
        if owner is None or owner[0] == NO_RANK:
            msg = f"unknown {what} {ours!r} (its rank has run on since)"
            raise LookupError(msg)
        return owner

    def _ref(self, rank: int, theirs: int) -> int:
        """A variable reference for the frontend (0 stays 0: nothing to expand)."""
        return self.refs.ours(rank, theirs) if theirs else 0

    async def _routed(self, request: Dap, frame_key: str) -> Dap:
        """A request about one frame (``frame_key`` in its arguments), else the focused rank."""
        args = request.get("arguments", {})
        if args.get(frame_key) is None:
            rank = self._focused()
            ask = request
        else:
            rank, frame = self._owner(args[frame_key], "frame")
            ask = {**request, "arguments": {**args, frame_key: frame}}
        answer = await self._ask_rank(rank, ask, ANSWER)
        return self._relabel(request, rank, answer)

    def _mapped_variables(self, request: Dap, rank: int, answer: Dap) -> Dap:
        response = self._relabel(request, rank, answer)
        body = response.get("body") or {}
        for variable in body.get("variables", []):
            variable["variablesReference"] = self._ref(rank, variable.get("variablesReference", 0))
        return response

    def _relabel(self, request: Dap, rank: int, answer: Dap) -> Dap:
        """A rank's response as the answer to the frontend's request (paths rewritten)."""
        answer = self._to_frontend(rank, answer)
        response = self._response(
            request, success=bool(answer.get("success", False)), message=answer.get("message")
        )
        body = answer.get("body")
        if body is not None:
            response["body"] = body
        # evaluate / setVariable / setExpression answer with a rank's variable reference.
        if isinstance(body, dict) and body.get("variablesReference"):
            body["variablesReference"] = self._ref(rank, body["variablesReference"])
        return response

    async def _ask_rank(self, rank: int, request: Dap, timeout: float) -> Dap:
        ask = {
            "type": "request",
            "seq": next(self._rank_seq),
            "command": request["command"],
            "arguments": self._to_rank(rank, request.get("arguments", {})),
        }
        try:
            return await self._ask(rank, ask, timeout)
        except TimeoutError:
            msg = f"{self._describe(rank)} did not answer within {timeout:g} s"
            raise TimeoutError(msg) from None

    async def _everywhere(
        self, request: Dap, timeout: float, ranks: list[int] | None = None
    ) -> tuple[dict[int, Dap], dict[int, str]]:
        """Ask every running rank (or ``ranks``); their answers, and why each that failed did."""
        asked_all = ranks is None
        ranks = self._running() if ranks is None else ranks
        results = await asyncio.gather(
            *(self._ask_rank(rank, request, timeout) for rank in ranks), return_exceptions=True
        )
        answers: dict[int, Dap] = {}
        failed: dict[int, str] = {}
        for rank, result in zip(ranks, results, strict=True):
            if isinstance(result, BaseException):
                failed[rank] = str(result) or type(result).__name__
            elif not result.get("success", False):
                failed[rank] = result.get("message") or f"{request.get('command')} refused"
            else:
                answers[rank] = result
        if asked_all and not ranks:
            failed[NO_RANK] = "no rank is running"
        return answers, failed

    async def _merged(self, request: Dap, timeout: float) -> Dap:
        answers, failed = await self._everywhere(request, timeout)
        if failed:
            return self._failed(request, failed)
        first = answers[min(answers)]
        return self._response(request, body=first.get("body"))

    def _failed(self, request: Dap, failed: dict[int, str]) -> Dap:
        parts = [
            why
            if rank == NO_RANK or self._describe(rank) in why
            else f"{self._describe(rank)}: {why}"
            for rank, why in sorted(failed.items())
        ]
        return self._response(request, success=False, message="; ".join(parts))

    def _to_rank(self, rank: int, message: Any) -> Any:
        prefix = self._rank_prefix.get(rank)
        return rewrite_paths(message, self.prefix, prefix) if prefix else message

    def _to_frontend(self, rank: int, message: Dap) -> Dap:
        prefix = self._rank_prefix.get(rank)
        result: Dap = rewrite_paths(message, prefix, self.prefix) if prefix else message
        return result

    def _response(
        self,
        request: Dap,
        *,
        success: bool = True,
        body: Any = None,
        message: str | None = None,
    ) -> Dap:
        response: Dap = {
            "type": "response",
            "seq": next(self._seq),
            "request_seq": request.get("seq", 0),
            "command": request.get("command", ""),
            "success": success,
        }
        if body is not None:
            response["body"] = body
        if message:
            response["message"] = message
        return response


def _internal_thread(name: str) -> bool:
    """ipykernel's and IPython's own threads (a user never wants to step them)."""
    # ipykernel's unnamed helpers are "Thread-N" with no target in the name.
    return (
        name == "IPythonHistorySavingThread"
        or "_watch_pipe_fd" in name
        or bool(re.fullmatch(r"Thread-\d+", name))
    )


def _frame_text(frame: Dap) -> str:
    return f"{frame.get('name', '?')}, line {frame.get('line', '?')}"
