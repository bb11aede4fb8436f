"""Standard streams of a job: stdin fanned out, labelled output fanned in.

Every rank's stdout goes to the launcher's stdout and every rank's stderr to
its stderr, one whole line at a time with a ``[rank] `` label. All writes
happen on the event loop's thread through one :class:`OutputSink` per
destination, so lines of different ranks never interleave. A partial line (a
prompt such as pdb's ``(Pdb) ``) is written as-is once its rank has been quiet
for a moment, or at EOF.

Every chunk read from the launcher's stdin is written to every rank's stdin,
so one terminal drives ``breakpoint()`` in all ranks; EOF closes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat
from collections.abc import Callable, Sequence

__all__ = ["OutputSink", "broadcast_stdin", "pump_output"]

READ_SIZE = 65536
# A partial line is flushed after this long without more bytes from its rank.
PARTIAL_LINE_DELAY = 0.05
# A line longer than this is written in pieces rather than buffered further.
MAX_LINE = 1 << 20


class OutputSink:
    """One destination (the launcher's stdout or stderr) shared by all ranks.

    The sink remembers whether its last write ended mid-line and for whom.
    When another rank writes while a partial line is open, the sink ends that
    line first, so every line starts with its own label.

    Parameters
    ----------
    fd
        The file descriptor to write to. Writes block (output is the
        back-pressure for ranks that print faster than it drains); a
        non-blocking fd is waited on with ``select``.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._open_line_owner: object | None = None
        self._broken = False

    def write(self, owner: object, prefix: bytes, data: bytes) -> None:
        """Write ``data`` from ``owner``, labelling each line with ``prefix``.

        ``data`` holds whole lines, except that it may end with a partial
        line, which stays open until the same owner continues it.
        """
        out = bytearray()
        if self._open_line_owner is not None and self._open_line_owner is not owner:
            out += b"\n"
            self._open_line_owner = None
        *lines, tail = data.split(b"\n")
        for line in lines:
            if self._open_line_owner is None:
                out += prefix
            out += line
            out += b"\n"
            self._open_line_owner = None
        if tail:
            if self._open_line_owner is None:
                out += prefix
            out += tail
            self._open_line_owner = owner
        self._write_all(bytes(out))

    def input_echoed(self) -> None:
        """Note that the terminal echoed a line typed by the user.

        When this sink writes to the terminal that echoes the launcher's
        input, the cursor is now at the start of a line: a rank that goes on
        after its prompt (``(Pdb) `` then the answer) gets a new label
        instead of continuing a line that is no longer the current one.
        """
        if os.isatty(self.fd):
            self._open_line_owner = None

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._broken:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [])
                continue
            except InterruptedError:
                continue
            except OSError:
                # The reader went away (EPIPE) or the fd is closed: drop output,
                # keep the ranks running; their exit status still counts.
                self._broken = True
                return
            view = view[written:]


def _divert(data: bytes, marker: bytes, divert: Callable[[bytes], None]) -> bytes:
    """``data`` without its lines that start with ``marker`` (handed to ``divert``)."""
    kept = []
    for line in data.splitlines(keepends=True):
        if line.startswith(marker):
            divert(line[len(marker) :].rstrip(b"\n"))
        else:
            kept.append(line)
    return b"".join(kept)


async def pump_output(
    stream: asyncio.StreamReader,
    sink: OutputSink,
    prefix: bytes,
    *,
    partial_delay: float = PARTIAL_LINE_DELAY,
    marker: bytes = b"",
    divert: Callable[[bytes], None] | None = None,
) -> None:
    """Copy one rank stream to ``sink`` line by line until EOF.

    Parameters
    ----------
    stream
        A rank's stdout or stderr.
    sink
        Where its lines go.
    prefix
        The label put before each line (``b"[2] "``, or ``b""``).
    partial_delay
        Seconds of quiet after which a partial line is written as-is.
    marker, divert
        Whole lines that start with ``marker`` go to ``divert`` (without
        it) instead of the sink: a rank's answers to the launcher.
    """
    loop = asyncio.get_running_loop()
    owner = object()
    pending = b""
    # When the oldest unwritten byte of ``pending`` arrived: a partial line is
    # written at most ``partial_delay`` later, even if more bytes keep coming.
    pending_since = 0.0
    while True:
        # An answer to the launcher is never shown in part: wait for its end.
        answering = divert is not None and pending.startswith(marker)
        try:
            if pending and not answering:
                async with asyncio.timeout_at(pending_since + partial_delay):
                    chunk = await stream.read(READ_SIZE)
            else:
                chunk = await stream.read(READ_SIZE)
        except TimeoutError:
            sink.write(owner, prefix, pending)
            pending = b""
            continue
        if not chunk:
            if pending and not answering:
                sink.write(owner, prefix, pending)
            return
        if not pending:
            pending_since = loop.time()
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if cut:
            lines = pending[:cut]
            if divert is not None and marker in lines:
                lines = _divert(lines, marker, divert)
            if lines:
                sink.write(owner, prefix, lines)
            pending = pending[cut:]
            pending_since = loop.time()
        if len(pending) >= MAX_LINE and not (divert is not None and pending.startswith(marker)):
            sink.write(owner, prefix, pending)
            pending = b""


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _stdin_kind(fd: int) -> str:
    """``"closed"``, ``"pollable"`` (pipe, tty, socket) or ``"file"``."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "closed"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "pollable"
    if stat.S_ISCHR(mode) and os.isatty(fd):
        return "pollable"
    # Regular files and /dev/null cannot be polled (epoll says EPERM) but
    # never block either.
    return "file"


async def _write_to_rank(stdin: asyncio.StreamWriter, data: bytes) -> None:
    if stdin.is_closing():
        return
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        # That rank has exited or closed its stdin; the others still get input.
        stdin.close()


def _close_all(stdins: Sequence[asyncio.StreamWriter]) -> None:
    for stdin in stdins:
        with contextlib.suppress(OSError):
            stdin.close()


async def broadcast_stdin(
    fd: int,
    stdins: Sequence[asyncio.StreamWriter],
    sinks: Sequence[OutputSink] = (),
) -> None:
    """Copy everything read from ``fd`` to every rank's stdin, then close them.

    The launcher's stdin is never switched to non-blocking mode (for a tty it
    would be shared with the shell, and with stdout): we wait for it to be
    readable on the event loop and then read once. A closed ``fd`` or
    ``/dev/null`` gives the ranks an immediate EOF.

    Parameters
    ----------
    fd
        The launcher's stdin, normally 0.
    stdins
        The ranks' stdin streams.
    sinks
        Output sinks told when a typed line was echoed by the terminal.
    """
    kind = _stdin_kind(fd)
    echoes = kind == "pollable" and os.isatty(fd)
    try:
        while kind != "closed":
            if kind == "pollable":
                await _readable(fd)
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                # EIO: the terminal hung up. Treat as end of input.
                data = b""
            if not data:
                break
            if echoes and data.endswith(b"\n"):
                for sink in sinks:
                    sink.input_echoed()
            await asyncio.gather(*(_write_to_rank(s, data) for s in stdins))
    finally:
        _close_all(stdins)
