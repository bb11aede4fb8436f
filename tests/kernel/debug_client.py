"""A Jupyter debug-protocol client on a running chorus kernel, as JupyterLab's debugger talks."""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

Dap = dict[str, Any]

INITIALIZE = {
    "clientID": "chorus-tests",
    "clientName": "chorus tests",
    "adapterID": "",
    "pathFormat": "path",
    "linesStartAt1": True,
    "columnsStartAt1": True,
    "supportsVariableType": True,
    "supportsVariablePaging": True,
    "supportsRunInTerminalRequest": True,
    "locale": "en",
}


@dataclass
class RunningCell:
    msg_id: str
    reply: dict[str, Any] | None = None
    stdout: str = ""
    stderr: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    idle: bool = False

    @property
    def done(self) -> bool:
        return self.reply is not None and self.idle


class DebugClient:
    """Sends debug_requests and cells, and sorts what comes back on iopub."""

    def __init__(self, client: BlockingKernelClient) -> None:
        self.client = client
        self._seq = itertools.count(1)
        self.events: list[Dap] = []
        self.cells: dict[str, RunningCell] = {}

    def request(self, command: str, arguments: Dap | None = None, timeout: float = 60) -> Dap:
        """The debug_reply's content to one DAP request (earlier, late replies passed over)."""
        seq = next(self._seq)
        msg = self.client.session.msg(
            "debug_request",
            {"type": "request", "seq": seq, "command": command, "arguments": arguments or {}},
        )
        self.client.control_channel.send(msg)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = self.client.get_control_msg(timeout=0.05)
            except queue.Empty:
                self.pump()
                continue
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                assert reply["header"]["msg_type"] == "debug_reply", reply
                content: Dap = reply["content"]
                assert content["request_seq"] == seq, content
                assert content["command"] == command, content
                return content
        raise AssertionError(f"no debug_reply to {command} within {timeout} s")

    def ok(self, command: str, arguments: Dap | None = None, timeout: float = 60) -> Dap:
        """As :meth:`request`, asserting success."""
        content = self.request(command, arguments, timeout)
        assert content["success"], content
        return content

    def start(self) -> None:
        self.ok("initialize", INITIALIZE)
        self.ok("attach")

    def stop(self) -> None:
        self.ok("disconnect", {"restart": False, "terminateDebuggee": True})

    def break_at(self, code: str, *lines: int) -> str:
        """Dump ``code`` as a cell, set breakpoints on ``lines``; the cell's path."""
        path: str = self.ok("dumpCell", {"code": code})["body"]["sourcePath"]
        reply = self.ok(
            "setBreakpoints",
            {
                "breakpoints": [{"line": line} for line in lines],
                "source": {"path": path},
                "sourceModified": False,
            },
        )
        assert [b["line"] for b in reply["body"]["breakpoints"]] == list(lines), reply
        self.ok("configurationDone")
        return path

    def execute(self, code: str) -> RunningCell:
        cell = RunningCell(self.client.execute(code))
        self.cells[cell.msg_id] = cell
        return cell

    def execute_on_control(self, code: str) -> RunningCell:
        """A directive sent as another console sends it while a cell runs (its output only)."""
        msg = self.client.session.msg(
            "execute_request",
            {"code": code, "silent": False, "store_history": False, "user_expressions": {}},
        )
        self.client.control_channel.send(msg)
        cell = RunningCell(msg["header"]["msg_id"])
        self.cells[cell.msg_id] = cell
        return cell

    def pump(self, timeout: float = 0.02) -> None:
        """Take everything waiting on iopub and shell (at most ``timeout`` s for the first)."""
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                break
            timeout = 0
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "debug_event":
                self.events.append(content)
                continue
            cell = self.cells.get(msg["parent_header"].get("msg_id", ""))
            if cell is None:
                continue
            if kind == "stream":
                if content["name"] == "stdout":
                    cell.stdout += content["text"]
                else:
                    cell.stderr += content["text"]
            elif kind == "error":
                cell.errors.append(content)
            elif kind == "status" and content["execution_state"] == "idle":
                cell.idle = True
        while True:
            try:
                reply = self.client.get_shell_msg(timeout=0)
            except queue.Empty:
                break
            cell = self.cells.get(reply["parent_header"].get("msg_id", ""))
            if cell is not None:
                cell.reply = reply

    def wait_event(self, event: str, after: int = 0, timeout: float = 60) -> Dap:
        """The first ``event`` among the events from index ``after`` on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for found in self.events[after:]:
                if found["event"] == event:
                    return found
            self.pump()
        raise AssertionError(f"no {event} event within {timeout} s; events: {self.events[after:]}")

    def wait_cell(self, cell: RunningCell, timeout: float = 60) -> RunningCell:
        deadline = time.monotonic() + timeout
        while not cell.done:
            if time.monotonic() > deadline:
                raise AssertionError(f"cell did not finish within {timeout} s: {cell}")
            self.pump()
        return cell

    def run_to_stop(self, code: str, ranks: int) -> tuple[RunningCell, int, list[Dap]]:
        """Run ``code`` until it stops: the cell, the stopped thread, ``ranks`` ranks' frames."""
        seen = len(self.events)
        cell = self.execute(code)
        thread: int = self.wait_event("stopped", seen)["body"]["threadId"]
        return cell, thread, self.frames(thread, ranks)

    def next_line(self, thread: int, ranks: int) -> tuple[int, dict[int, int]]:
        """Step (``next``): the stopped thread after it, and each rank's line."""
        seen = len(self.events)
        self.ok("next", {"threadId": thread})
        thread = self.wait_event("stopped", seen)["body"]["threadId"]
        tops = top_frames(self.frames(thread, ranks))
        return thread, {rank: frame["line"] for rank, frame in tops.items()}

    def continue_to_end(self, thread: int, cell: RunningCell) -> RunningCell:
        """Continue every stopped rank; the cell, finished ok."""
        self.ok("continue", {"threadId": thread})
        self.wait_cell(cell)
        assert cell.reply is not None
        assert cell.reply["content"]["status"] == "ok", cell
        return cell

    def frames(self, thread: int, ranks: int) -> list[Dap]:
        """The call stack once it holds frames of ``ranks`` ranks (stops arrive one by one)."""
        deadline = time.monotonic() + 30
        while True:
            frames: list[Dap] = self.ok("stackTrace", {"threadId": thread})["body"]["stackFrames"]
            if len({f["name"].split("]")[0] for f in frames}) >= ranks:
                return frames
            if time.monotonic() > deadline:
                raise AssertionError(f"frames of {ranks} ranks expected: {frames}")
            self.pump(0.2)

    def scope(self, frame_id: int, name: str) -> list[Dap]:
        """The variables of the scope ``name`` ("Locals", "Globals", "Ranks") of a frame."""
        scopes = self.ok("scopes", {"frameId": frame_id})["body"]["scopes"]
        (ref,) = [s["variablesReference"] for s in scopes if s["name"] == name]
        variables: list[Dap] = self.ok("variables", {"variablesReference": ref})["body"][
            "variables"
        ]
        return variables


def top_frames(frames: list[Dap]) -> dict[int, Dap]:
    """Each rank's innermost frame, by rank (frames are named ``[rank r] function``)."""
    tops: dict[int, Dap] = {}
    for frame in frames:
        rank = int(frame["name"].split("]")[0].removeprefix("[rank "))
        tops.setdefault(rank, frame)
    return tops
