"""ChorusKernel: one Jupyter kernel in front of N rank kernels.

Every cell runs on every rank (or the ranks chosen with ``%%ranks 0,2`` or a
persistent ``%target 0,2``); output comes back labelled and collapsed, one
prompt answers ``input()`` and pdb on all ranks, the interrupt button reaches
every rank. Completion, inspection and is_complete are answered by rank 0.

Directives the chorus kernel handles itself (not sent to the ranks):

``%%ranks 0,2``     first line of a cell: run the rest on ranks 0 and 2
``%target 0,2``     run the following cells on ranks 0 and 2 (``%target all``)
``%output byrank``  show each rank's output as one block (``%output collapse``)
``%chorus status``  a table of the ranks: rank, pid, state
``%chorus where``   where every rank is: stacks, calls, and a verdict (chorus.where)
``%chorus stall 30`` print that report once in a cell that has run 30 s while the
                    ranks cannot all be making progress (default 10; ``off``)
``%chorus focus 2`` JupyterLab's debugger shows rank 2 (variables between cells,
                    its frames first when stopped; kernel/debugger.py)
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import Any

import zmq
from chorus.kernel.comms import COMM_TYPES, CommMessage
from chorus.kernel.debugger import DebugProxy
from chorus.kernel.engine import CellResult, Engine
from chorus.kernel.history import CellHistory, HistoryQuery
from chorus.kernel.labels import parse_ranks
from ipykernel.jsonutil import json_clean
from ipykernel.kernelbase import Kernel
from traitlets import Float, Integer, Unicode

import chorus
from chorus.hostfile import Hostfile, resolve_hosts
from chorus.launch.stall import stall_key
from chorus.where import Report


class ChorusKernel(Kernel):
    """A kernel whose cells run on N chorus ranks."""

    implementation = "chorus"
    implementation_version = chorus.__version__
    language_info = {  # noqa: RUF012 - ipykernel reads it as a class attribute
        "name": "python",
        "version": ".".join(map(str, sys.version_info[:3])),
        "mimetype": "text/x-python",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
        "file_extension": ".py",
    }

    ranks_count = Integer(4, help="Number of ranks").tag(config=True)
    backend = Unicode("shm", help="chorus backend of the ranks").tag(config=True)
    rank_timeout = Float(60.0, help="CHORUS_TIMEOUT of the ranks").tag(config=True)
    hosts = Unicode("", help="run ranks over ssh on these hosts (ranks_count per host)").tag(
        config=True
    )
    hostfile = Unicode("", help="run ranks over ssh as this hostfile says").tag(config=True)
    python = Unicode("", help="the interpreter on remote hosts").tag(config=True)
    stall_after = Float(
        10.0, help="seconds a cell runs before a stall is reported in it (0: never)"
    ).tag(config=True)

    banner = Unicode(f"chorus {chorus.__version__}: every cell runs on every rank")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hostfile = self._hostfile()
        if hostfile is not None:
            self.ranks_count = len(hostfile.hosts)
        self.engine = Engine(
            _KernelFrontend(self),
            size=self.ranks_count,
            backend=self.backend,
            timeout=self.rank_timeout,
            hosts=hostfile,
            python=self.python or None,
        )
        self.targets: list[int] = list(range(self.ranks_count))
        # JupyterLab's debugger, across the ranks' own debuggers.
        self.debugger = DebugProxy(
            self.ranks_count,
            ask=self.engine.debug_request,
            emit=self._publish_debug_event,
            running=self.engine.running,
            describe=self.engine.describe,
            where_running=self.engine.activity,
        )
        self.engine.debug_events = self.debugger.on_event
        self.engine.ranks.held = self.debugger.held
        self.banner = (
            f"chorus {chorus.__version__}: every cell runs on {self.ranks_count} ranks "
            f"(backend {self.backend}); %%ranks 0,2, %target, %output byrank, %chorus status"
        )
        self._ready: asyncio.Task[None] | None = None
        self._prompt_parent: tuple[Any, Any] | None = None
        self._main_loop: asyncio.AbstractEventLoop | None = None  # where the ranks' clients live
        # The frontend's comm messages (widgets) go to the rank owning the comm.
        for msg_type in COMM_TYPES:
            self.shell_handlers[msg_type] = self._comm_from_frontend
        # Every cell, once (the ranks keep only their session's, in memory).
        self.history = CellHistory()

    def _hostfile(self) -> Hostfile | None:
        """The ranks' hosts from ``hostfile`` or ``hosts`` (``None``: all ranks here)."""
        return resolve_hosts(
            hosts=self.hosts or None, hostfile=self.hostfile or None, per_host=self.ranks_count
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        # The frontend's interrupt reaches this process only (ranks lead their
        # own sessions); forward it to every rank. ipykernel ignores SIGINT by default.
        signal.signal(signal.SIGINT, self._on_sigint)
        self.io_loop.add_callback(self._ensure_started)

    def _ensure_started(self) -> asyncio.Task[None]:
        self._main_loop = asyncio.get_running_loop()
        if self._ready is None:
            self._ready = asyncio.ensure_future(self.engine.start(self.log.info))
        return self._ready

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.engine.interrupt()

    # kernelbase swaps in default_int_handler around every request, which
    # would raise KeyboardInterrupt inside our event loop instead of
    # forwarding the interrupt to the ranks: keep our handler installed.
    def pre_handler_hook(self) -> None:
        """Keep the forwarding SIGINT handler while a request runs."""

    def post_handler_hook(self) -> None:
        """Nothing to restore (see :meth:`pre_handler_hook`)."""

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        """Stop every rank kernel (request, SIGTERM, SIGKILL), then reply."""
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        await self.engine.shutdown()
        self.history.close()
        return {"status": "ok", "restart": restart}

    # -- execution -------------------------------------------------------------------

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        reply, output = await self._execute(
            code, silent, store_history, user_expressions, allow_stdin
        )
        # A directive sent on the control channel (another console's
        # "%chorus where" while a cell runs) is not a cell of this session.
        on_shell = self._main_loop in (None, asyncio.get_running_loop())
        if store_history and not silent and on_shell:
            self.history.store(self.execution_count, code, output)
        return reply

    async def do_history(
        self,
        hist_access_type: str,
        output: bool,
        raw: bool,
        session: int = 0,
        start: int = 0,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
    ) -> dict[str, Any]:
        """Answered from this kernel's own record of the cells (kernel/history.py)."""
        query = HistoryQuery(
            hist_access_type, output, raw, session, start, stop, n, pattern, unique
        )
        return self.history.reply(query)

    async def _execute(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, Any] | None,
        allow_stdin: bool,
    ) -> tuple[dict[str, Any], str | None]:
        """The execute_reply, and the result's text for the history (None: no result)."""
        words = code.strip().split()
        if words[:2] in (["%chorus", "where"], ["%chorus", "stall"]):
            # Also sent on the control channel while a cell runs (another
            # console on this kernel): handled on that thread, asking on ours.
            return await self._where_directive(words[1:]), None
        try:
            await self._ensure_started()
        except Exception as err:  # noqa: BLE001 - shown to the user, then retried
            self._ready = None  # let the next cell try again
            return self._error("RanksNotStarted", str(err)), None

        if code.strip() in ("exit", "quit", "exit()", "quit()"):
            # As IPython's exit: ask the frontend to shut the kernel down.
            exit_reply = {
                "status": "ok",
                "execution_count": self.execution_count,
                "payload": [{"source": "ask_exit", "keepkernel": False}],
                "user_expressions": {},
            }
            return exit_reply, None
        directive = self._directive(code)
        if directive is not None:
            return directive, None
        targets = self.targets
        first, _, rest = code.partition("\n")
        if first.startswith("%%ranks"):
            try:
                targets = parse_ranks(first[len("%%ranks") :], self.ranks_count)
            except ValueError as err:
                return self._error("ValueError", str(err)), None
            code = rest

        self._prompt_parent = (
            self._get_shell_context_var(self._shell_parent_ident),
            self.get_parent("shell"),
        )
        watch = asyncio.ensure_future(self._watch_stall())
        try:
            result = await self.engine.execute(
                code,
                targets,
                silent=silent,
                store_history=store_history,
                user_expressions=user_expressions,
                allow_stdin=allow_stdin,
                execution_count=None if silent else self.execution_count,
            )
        finally:
            watch.cancel()
            self.debugger.cell_finished()
        output = None if result.result is None else result.result["data"].get("text/plain")
        return self._reply(result, silent), output

    # -- where is every rank ----------------------------------------------------------

    async def _where(self) -> Report:
        """The merged report, asked for on the main loop whichever thread asks."""
        main = self._main_loop
        if main is None or main is asyncio.get_running_loop():
            return await self.engine.where()
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self.engine.where(), main)
        )

    async def _where_directive(self, words: list[str]) -> dict[str, Any]:
        if words[0] == "where":
            report = await self._where()
            self._say(report.text() + "\n")
        else:
            value = words[1] if len(words) > 1 else ""
            try:
                seconds = 0.0 if value == "off" else float(value)
            except ValueError:
                seconds = -1.0
            if seconds < 0 or not value:
                return self._error("UsageError", "%chorus stall takes seconds or off")
            self.stall_after = seconds
            self._say(
                "[chorus] stall reports: off\n"
                if seconds == 0
                else f"[chorus] a cell that runs {seconds:g} s while the ranks cannot all make"
                " progress shows where every rank is\n"
            )
        return {
            "status": "ok",
            "execution_count": self.execution_count,
            "payload": [],
            "user_expressions": {},
        }

    async def _watch_stall(self) -> None:
        """While a cell runs: after ``stall_after`` s, report a stall once (the cell goes on)."""
        if self.stall_after <= 0:
            return
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(self.stall_after)
        reported: set[tuple[object, ...]] = set()
        while True:
            if self.debugger.stopped:
                # Ranks stopped in the debugger hold the others up: no stall.
                await asyncio.sleep(2.0)
                continue
            report = await self.engine.where()
            key = stall_key(report)
            if key is not None and key not in reported:
                reported.add(key)
                ran = asyncio.get_running_loop().time() - started
                self.send_response(
                    self.iopub_socket,
                    "stream",
                    {
                        "name": "stderr",
                        "text": f"[chorus] this cell has run for {ran:.0f} s and its ranks cannot"
                        " all be making progress:\n"
                        + report.text()
                        + "\n[chorus] the cell goes on waiting: interrupt the kernel to stop it"
                        " (%chorus stall off: no more of these reports)\n",
                    },
                )
            await asyncio.sleep(2.0)

    def _reply(self, result: CellResult, silent: bool) -> dict[str, Any]:
        if result.result is not None and not silent:
            content = {**result.result, "execution_count": self.execution_count}
            self.send_response(self.iopub_socket, "execute_result", content)
        if result.status != "ok":
            return {
                "status": "error",
                "execution_count": self.execution_count,
                "ename": result.ename,
                "evalue": result.evalue,
                "traceback": result.traceback,
            }
        return {
            "status": "ok",
            "execution_count": self.execution_count,
            "payload": result.payload,
            "user_expressions": result.user_expressions,
        }

    def _error(self, ename: str, evalue: str) -> dict[str, Any]:
        traceback = [f"\x1b[1;31m{ename}\x1b[0m: {evalue}"]
        self.send_response(
            self.iopub_socket, "error", {"ename": ename, "evalue": evalue, "traceback": traceback}
        )
        return {
            "status": "error",
            "execution_count": self.execution_count,
            "ename": ename,
            "evalue": evalue,
            "traceback": traceback,
        }

    def _directive(self, code: str) -> dict[str, Any] | None:
        """Handle ``%target``, ``%output`` and ``%chorus status`` cells."""
        words = code.strip().split()
        if not words or words[0] not in ("%target", "%output", "%chorus"):
            return None
        if words[0] == "%target":
            try:
                self.targets = parse_ranks(" ".join(words[1:]), self.ranks_count)
            except ValueError as err:
                return self._error("ValueError", str(err))
            self._say(f"[chorus] cells now run on ranks {self.targets}\n")
        elif words[0] == "%output":
            mode = words[1] if len(words) > 1 else ""
            if mode not in ("collapse", "byrank"):
                return self._error("ValueError", "%output takes collapse or byrank")
            self.engine.output_mode = mode
            self._say(f"[chorus] output mode: {mode}\n")
        elif words[1:2] == ["status"]:
            self._say(self.engine.status())
        elif words[1:2] == ["focus"] and len(words) == 3 and words[2].isdigit():
            try:
                self.debugger.set_focus(int(words[2]))
            except ValueError as err:
                return self._error("ValueError", str(err))
            self._say(
                f"[chorus] the debugger shows rank {words[2]}: its variables between cells,"
                " its frames first when stopped\n"
            )
        else:
            return self._error(
                "UsageError", "the chorus kernel knows: %chorus status, where, stall, focus R"
            )
        return {
            "status": "ok",
            "execution_count": self.execution_count,
            "payload": [],
            "user_expressions": {},
        }

    def _say(self, text: str) -> None:
        self.send_response(self.iopub_socket, "stream", {"name": "stdout", "text": text})

    # -- comms (widgets) -----------------------------------------------------------------

    def _comm_from_frontend(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        self.engine.comms.from_frontend(parent)

    async def comm_info_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        target = parent["content"].get("target_name")
        content = self.engine.comms.info(target)
        assert self.session is not None
        self.session.send(stream, "comm_info_reply", content, parent, ident)

    # -- the debug protocol ---------------------------------------------------------------

    async def do_debug_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answered by the DebugProxy, on the main loop where the rank clients live."""
        deadline = asyncio.get_running_loop().time() + 30
        while self._main_loop is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # the kernel's first moments: its main loop starts
        main = self._main_loop
        if main is None:
            return self.debugger.refusal(msg, "the chorus kernel has not started yet")
        if main is asyncio.get_running_loop():
            return await self._debug_on_main(msg)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._debug_on_main(msg), main)
        )

    async def _debug_on_main(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("command") != "debugInfo":
            try:
                await asyncio.wait_for(asyncio.shield(self._ensure_started()), 120)
            except Exception as err:  # noqa: BLE001 - the response says it
                return self.debugger.refusal(msg, f"the ranks did not start: {err}")
        return await self.debugger.handle(msg)

    # -- requests answered by rank 0 -------------------------------------------------------

    async def _ask_rank0(self, send: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            await asyncio.wait_for(asyncio.shield(self._ensure_started()), 30)
        except Exception:  # noqa: BLE001 - ranks not up: answer "nothing found"
            return None
        return await self.engine.request(0, send, **kwargs)

    async def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        content = await self._ask_rank0("complete", code=code, cursor_pos=cursor_pos)
        return content or {
            "status": "ok",
            "matches": [],
            "cursor_start": cursor_pos,
            "cursor_end": cursor_pos,
            "metadata": {},
        }

    async def do_inspect(
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        content = await self._ask_rank0(
            "inspect", code=code, cursor_pos=cursor_pos, detail_level=detail_level
        )
        return content or {"status": "ok", "found": False, "data": {}, "metadata": {}}

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        content = await self._ask_rank0("is_complete", code=code)
        return content or {"status": "unknown"}

    # -- stdin towards the frontend -------------------------------------------------------

    def ask_frontend(self, prompt: str, password: bool, cancel: threading.Event) -> str:
        """One input_request to the frontend; blocks (run it in a thread).

        As kernelbase's ``_input_request``: purge stale replies, send, poll
        with a short timeout, ``"\\x04"`` means EOF; and it gives up when
        ``cancel`` is set (an interrupt), so no thread is left waiting.
        """
        if self._prompt_parent is None:
            msg = "no cell is running"
            raise EOFError(msg)
        ident, parent = self._prompt_parent
        while True:
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as err:
                if err.errno == zmq.EAGAIN:
                    break
                raise
        content = json_clean({"prompt": prompt, "password": password})
        assert self.session is not None  # set by the kernel app before any request
        self.session.send(self.stdin_socket, "input_request", content, parent, ident=ident)
        while not cancel.is_set():
            readable, _, _ = zmq.select([self.stdin_socket], [], [], 0.05)
            if readable:
                _ident, reply = self.session.recv(self.stdin_socket)
                if reply is not None:
                    value: str = reply["content"].get("value", "")
                    if value == "\x04":
                        raise EOFError
                    return value
        raise asyncio.CancelledError


class _KernelFrontend:
    """The engine's :class:`~chorus.kernel.engine.Frontend` for ChorusKernel."""

    live_updates = True
    restart_hint = "restart the kernel"

    def __init__(self, kernel: ChorusKernel) -> None:
        self.kernel = kernel

    def stream(self, name: str, text: str) -> None:
        self.kernel.send_response(self.kernel.iopub_socket, "stream", {"name": name, "text": text})

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        self.kernel.send_response(self.kernel.iopub_socket, msg_type, content)

    def comm(self, message: CommMessage) -> None:
        kernel = self.kernel
        parent = message.parent
        if parent is None and kernel._prompt_parent is not None:
            parent = kernel._prompt_parent[1]  # the running (or last) cell's request
        assert kernel.session is not None
        kernel.session.send(
            kernel.iopub_socket,
            message.msg_type,
            message.content,
            parent=parent,
            ident=kernel._topic(message.msg_type),
            buffers=list(message.buffers),
            metadata=message.metadata,
        )

    async def ask(self, prompt: str, password: bool) -> str:
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.kernel.ask_frontend, prompt, password, cancel)
        finally:
            cancel.set()  # on cancellation the thread stops polling within 50 ms
