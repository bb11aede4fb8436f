"""``%chorus``, ``%%all`` and ``%autoall``: chorus ranks behind a plain IPython.

The magics drive the same :class:`~chorus.kernel.engine.Engine` (and, through
it, the same rank kernels) as the chorus kernel, so output
labelling, the one prompt for all ranks (``input()``, pdb) and interrupts
behave exactly as there. The engine runs on an asyncio loop in a background
thread (IPython's own loop may be running, e.g. inside ipykernel); whatever it
shows or asks is handed to the thread running the magic, which prints,
displays and calls ``input()`` as any cell would.

Examples
--------
>>> %load_ext chorus
>>> %chorus start -n 4
>>> %%all
... x = chorus.all_sum(np.ones(3) * rank)
... print(x)
[0-3] [6. 6. 6.]
>>> %chorus pull x
[array([6., 6., 6.]), array([6., 6., 6.]), array([6., 6., 6.]), array([6., 6., 6.])]
"""

from __future__ import annotations

import ast
import asyncio
import base64
import getpass
import pickle
import queue
import shlex
import sys
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from chorus.kernel.comms import CommMessage
from chorus.kernel.engine import CellResult, Engine
from chorus.kernel.labels import parse_ranks
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import publish_display_data

from chorus.backends import default_backend
from chorus.hostfile import Hostfile, resolve_hosts

if TYPE_CHECKING:
    from chorus.magics.ipp import IppRanks

Event = tuple[str, tuple[Any, ...]]


class _ThreadFrontend:
    """The engine's Frontend: queues everything for the magic's thread."""

    def __init__(self, live_updates: bool = False) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        # In a notebook (ipykernel) outputs update in place; in a terminal not.
        self.live_updates = live_updates
        self.restart_hint = "%chorus stop, then %chorus start,"

    def stream(self, name: str, text: str) -> None:
        self.events.put(("stream", (name, text)))

    def publish(self, msg_type: str, content: dict[str, Any]) -> None:
        self.events.put(("publish", (msg_type, content)))

    def comm(self, message: CommMessage) -> None:
        """Ranks' widgets are not shown through the magics (the chorus kernel shows them)."""

    async def ask(self, prompt: str, password: bool) -> str:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.events.put(("ask", (prompt, password, answer)))
        return await answer


class _EngineThread:
    """An asyncio loop in a daemon thread, owning the ranks and the engine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="chorus")
        self.thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@magics_class
class ChorusMagics(Magics):
    """``%chorus start|stop|status|pull|push``, ``%%all`` and ``%autoall``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.runner: _EngineThread | None = None
        self.engine: Engine | None = None
        # ipykernel's shell shows display updates in place; a terminal prints each.
        self.frontend = _ThreadFrontend(live_updates=type(shell).__name__ == "ZMQInteractiveShell")
        # Not `self.autoall`: that is the %autoall magic method itself.
        self.autoall_on = False
        self.ipp: IppRanks | None = None

    # -- %chorus -----------------------------------------------------------------------

    @magic_arguments()
    @argument("action", choices=["start", "stop", "status", "where", "pull", "push"])
    @argument("rest", nargs="*", help="pull NAME | push NAME=EXPR")
    @argument(
        "-n", "--ranks", type=int, default=None, help="ranks (start; default 4, or 1 per host)"
    )
    @argument("--backend", default="shm", help="chorus backend of the ranks (start)")
    @argument("--timeout", type=float, default=60.0, help="CHORUS_TIMEOUT of the ranks (start)")
    @argument("--hosts", default=None, help="rank kernels over ssh on these hosts (-n per host)")
    @argument("--hostfile", default=None, help="rank kernels over ssh as this hostfile says")
    @argument("--python", default=None, help="the interpreter on remote hosts")
    @argument(
        "--ipp",
        action="store_true",
        help="start the ranks as ipyparallel engines (see --engines) instead of rank kernels",
    )
    @argument(
        "--engines",
        default="local",
        help="ipyparallel engine launcher with --ipp: local, mpi, ssh, slurm, ... (default local)",
    )
    @line_magic
    def chorus(self, line: str) -> Any:
        """Start, stop and inspect chorus ranks; move values in and out.

        ``%chorus start -n 4 [--backend shm]``  start 4 rank kernels
        ``%chorus start --hosts h1,h2 [-n 2]``  rank kernels over ssh, n per host
        ``%chorus status``                      a table: rank, pid, state
        ``%chorus where``                       where every rank is, and a verdict
        ``%chorus pull x``                      a list of each rank's ``x``
        ``%chorus push x=np.arange(3)``         set ``x`` on every rank
        ``%chorus stop``                        stop the ranks
        """
        args = parse_argstring(self.chorus, _without_comment(line))
        if args.action == "start":
            if args.ranks is None:
                args.ranks = 1 if args.hosts or args.hostfile else 4
            if args.ipp:
                backend = (
                    None if args.backend == "shm" and args.engines != "local" else args.backend
                )
                return self.start_ipp(args.ranks, args.engines, backend, args.timeout)
            hosts = _placement(args)
            backend = args.backend
            if hosts is not None and backend == "shm":
                backend = default_backend(None, remote=True)  # shm cannot span hosts
            return self.start_ranks(args.ranks, backend, args.timeout, hosts, args.python)
        if args.action == "stop":
            self.stop_ranks()
            return None
        if self.ipp is not None:
            return self.ipp.command(args.action, args.rest, self.shell)
        engine = self._engine()
        if args.action == "status":
            print(engine.status(), end="")
            return None
        if args.action == "where":
            assert self.runner is not None
            print(self.runner.submit(engine.where()).result().text())
            return None
        if not args.rest:
            msg = f"%chorus {args.action} needs an argument"
            raise ValueError(msg)
        if args.action == "pull":
            return self.pull(args.rest[0])
        # The expression as typed: quotes and all (the parsed words lost them).
        name, _, expr = line.strip().split(None, 1)[1].partition("=")
        if not name.strip().isidentifier() or not expr.strip():
            msg = "usage: %chorus push NAME=EXPRESSION"
            raise ValueError(msg)
        assert self.shell is not None
        self.push(name.strip(), self._evaluate(expr))
        return None

    def _evaluate(self, expression: str) -> Any:
        """``expression`` in the user's namespace, where ``np`` and ``chorus`` mean
        what they mean on the ranks unless the user defined them otherwise."""
        import numpy

        import chorus

        assert self.shell is not None
        names = {"np": numpy, "chorus": chorus, **self.shell.user_ns}
        return eval(expression, names)

    def start_ranks(
        self,
        ranks: int,
        backend: str,
        timeout: float,
        hosts: Hostfile | None = None,
        python: str | None = None,
    ) -> None:
        """Start ``ranks`` rank kernels, here or on ``hosts`` (stopping running ones first)."""
        self.stop_ranks()
        self.runner = _EngineThread()
        self.engine = Engine(
            self.frontend, size=ranks, backend=backend, timeout=timeout, hosts=hosts, python=python
        )
        where = "" if hosts is None else f" on {', '.join(hosts.distinct_hosts)}"
        count = self.engine.size
        print(f"[chorus] starting {count} ranks{where} (backend {backend}) ...", flush=True)
        try:
            self.runner.submit(self.engine.start()).result()
        except RuntimeError:
            self.stop_ranks()
            raise
        print(f"[chorus] {count} ranks ready: %%all runs a cell on all of them", flush=True)

    def start_ipp(self, ranks: int, engines: str, backend: str | None, timeout: float) -> None:
        """Start ``ranks`` ipyparallel engines with ``engines``' launcher; make them ranks."""
        self.stop_ranks()
        print(f"[chorus] starting {ranks} ipyparallel engines ({engines}) ...", flush=True)
        from chorus.magics.ipp import IppRanks

        self.ipp = IppRanks.start(ranks, engines, backend, timeout)
        print(
            f"[chorus] {ranks} engines joined chorus (backend {self.ipp.backend}): "
            "%%all runs a cell on all of them",
            flush=True,
        )

    def stop_ranks(self) -> None:
        """Shut every rank down (request, SIGTERM, SIGKILL) and stop the loop."""
        if self.ipp is not None:
            self.ipp.stop()
            self.ipp = None
        if self.runner is not None and self.engine is not None:
            self.runner.submit(self.engine.shutdown()).result(timeout=30)
        if self.runner is not None:
            self.runner.close()
        self.runner = self.engine = None

    def _engine(self) -> Engine:
        if self.engine is None:
            # UsageError: IPython shows the message alone, not the magic's traceback.
            msg = "no chorus ranks: run %chorus start -n 4 first"
            raise UsageError(msg)
        return self.engine

    # -- %%all and %autoall ----------------------------------------------------------------

    @magic_arguments()
    @argument("--ranks", default="all", help="ranks to run on, e.g. 0,2 or 1-3")
    @cell_magic
    def all(self, line: str, cell: str) -> None:
        """Run the cell on every rank (or ``--ranks 0,2``), as the chorus kernel does."""
        args = parse_argstring(self.all, _without_comment(line))
        if self.ipp is not None:
            self.ipp.execute(cell, parse_ranks(args.ranks, len(self.ipp.order)))
            return
        engine = self._engine()
        targets = parse_ranks(args.ranks, engine.size)
        result = self.run_on_ranks(cell, targets)
        if result.result is not None:
            publish_display_data(result.result["data"], result.result.get("metadata", {}))
        if result.status != "ok":
            raise RanksFailed(result)

    @line_magic
    def autoall(self, line: str) -> None:
        """Toggle sending every following cell to all ranks (``%autoall off`` to stop)."""
        assert self.shell is not None
        transformers = self.shell.input_transformers_cleanup
        self.autoall_on = line.strip() != "off" and not (self.autoall_on and not line.strip())
        if self.autoall_on and _autoall_transformer not in transformers:
            transformers.append(_autoall_transformer)
        if not self.autoall_on and _autoall_transformer in transformers:
            transformers.remove(_autoall_transformer)
        state = "on: every cell runs on all ranks" if self.autoall_on else "off"
        print(f"[chorus] autoall {state}")

    # -- running ---------------------------------------------------------------------------

    def run_on_ranks(
        self,
        code: str,
        targets: list[int],
        user_expressions: dict[str, str] | None = None,
        show: bool = True,
        expressions_everywhere: bool = False,
    ) -> CellResult:
        """Execute ``code`` on ``targets``, showing output and answering prompts here."""
        engine = self._engine()
        assert self.runner is not None
        future = self.runner.submit(
            engine.execute(
                code,
                targets,
                user_expressions=user_expressions,
                silent=not show,
                expressions_everywhere=expressions_everywhere,
            )
        )
        while True:
            try:
                try:
                    kind, payload = self.frontend.events.get(timeout=0.05)
                except queue.Empty:
                    if future.done():
                        break
                    continue
                self._handle(kind, payload)
            except KeyboardInterrupt:
                self.runner.call(engine.interrupt)
        while not self.frontend.events.empty():
            self._handle(*self.frontend.events.get())
        result: CellResult = future.result()
        return result

    def _handle(self, kind: str, payload: tuple[Any, ...]) -> None:
        if kind == "stream":
            name, text = payload
            stream = sys.stdout if name == "stdout" else sys.stderr
            stream.write(text)
            stream.flush()
        elif kind == "publish":
            msg_type, content = payload
            if msg_type == "error":
                sys.stderr.write("\n".join(content.get("traceback", [])) + "\n")
            elif msg_type in ("display_data", "update_display_data"):
                publish_display_data(
                    content.get("data", {}),
                    content.get("metadata", {}),
                    **_display_extras(msg_type, content),
                )
        elif kind == "ask":
            prompt, password, answer = payload
            assert self.runner is not None
            try:
                value = getpass.getpass(prompt) if password else input(prompt)
            except EOFError:
                value = "\x04"
            self.runner.call(_resolve, answer, value)

    def pull(self, name: str) -> list[Any]:
        """Each rank's value of ``name`` (pickled over the wire), in rank order."""
        engine = self._engine()
        expression = f"__import__('base64').b64encode(__import__('pickle').dumps({name})).decode()"
        ranks = list(range(engine.size))
        result = self.run_on_ranks(
            "", ranks, {"v": expression}, show=False, expressions_everywhere=True
        )
        values = []
        for rank in ranks:
            reply = result.user_expressions_by_rank.get(rank, {}).get("v", {})
            if reply.get("status") != "ok":
                msg = f"rank {rank}: {reply.get('ename')}: {reply.get('evalue')}"
                raise RuntimeError(msg)
            text = ast.literal_eval(reply["data"]["text/plain"])
            values.append(pickle.loads(base64.b64decode(text)))
        return values

    def push(self, name: str, value: Any) -> None:
        """Set ``name`` to ``value`` on every rank."""
        engine = self._engine()
        blob = base64.b64encode(pickle.dumps(value)).decode()
        code = f"{name} = __import__('pickle').loads(__import__('base64').b64decode('{blob}'))"
        result = self.run_on_ranks(code, list(range(engine.size)), show=False)
        if result.status != "ok":
            msg = f"push failed: {result.ename}: {result.evalue}"
            raise RuntimeError(msg)


class RanksFailed(Exception):
    """A ``%%all`` cell failed on some rank (the tracebacks were shown already)."""

    def __init__(self, result: CellResult) -> None:
        super().__init__(f"{result.ename}: {result.evalue}")
        self.result = result

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback of the magic itself.
        return [f"chorus: the cell failed on some ranks ({self})"]


def print_stream(name: str, text: str) -> None:
    """Write a rank's (merged) stream output to this process's stdout or stderr."""
    stream = sys.stdout if name == "stdout" else sys.stderr
    stream.write(text)
    stream.flush()


def _without_comment(line: str) -> str:
    """A magic's arguments without a trailing ``# comment`` (as READMEs write them)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return shlex.join(lexer)
    except ValueError:  # unbalanced quotes: the argument parser says what is wrong
        return line


def _display_extras(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    """publish_display_data's arguments for a display id and an update, if any."""
    transient = content.get("transient")
    if not transient:
        return {}
    return {"transient": transient, "update": msg_type == "update_display_data"}


def _resolve(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


def _autoall_transformer(lines: list[str]) -> list[str]:
    """Turn every cell into a ``%%all`` cell, except chorus's own commands."""
    if not lines:
        return lines
    first = lines[0].lstrip()
    if first.startswith(("%chorus", "%autoall", "%%all", "%load_ext", "%unload_ext")):
        return lines
    return ["%%all\n", *lines]


# IPython's "is this input complete?" skips transformers marked so: it judges
# the code as typed, and a terminal runs a line on one Enter (a %%all cell
# would wait for an empty line).
_autoall_transformer.has_side_effects = True  # type: ignore[attr-defined]


def _placement(args: Any) -> Hostfile | None:
    """The hosts of ``%chorus start --hosts/--hostfile`` (``-n`` is per host with --hosts)."""
    return resolve_hosts(hosts=args.hosts, hostfile=args.hostfile, per_host=args.ranks)
