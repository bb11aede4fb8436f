"""What the ranks are doing: each group's flight record of its last calls.

Every group keeps its last ``CHORUS_FLIGHT_RECORDS`` calls (default 4096, 0
turns recording off), on every backend, from the moment it exists:

>>> import chorus, chorus.debug
>>> chorus.all_sum(np.ones(3))
>>> chorus.debug.flight_record()[-1]["op"], chorus.debug.flight_record()[-1]["state"]
('all_sum', 'completed')

A record is written before the call talks to any peer and finished when it
returns or raises, so a rank that hangs shows its current call as
``entered`` (waiting for the others to arrive) or ``agreed`` (moving data).

:func:`snapshot` is where this rank is (stacks and newest calls);
:func:`where` is where every rank of the job is, asked through the launcher
or kernel that started them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import FrameType
from typing import cast

from chorus import _core
from chorus.group import Group, default_group
from chorus.where import (
    REPORT_SIGNAL,
    RUNNING,
    SNAPSHOT_MARKER,
    SUPERVISOR_UNAVAILABLE,
    CallRecord,
    CallSite,
    Frame,
    GroupCall,
    RankSnapshot,
    Report,
    ThreadStack,
    WhereAnswers,
    merge_answers,
)

__all__ = [
    "WhereUnavailableError",
    "flight_record",
    "install_report_signal",
    "snapshot",
    "where",
]

# Seconds where() waits for the supervisor: it gives the ranks 3 s to
# answer, and a question already being asked may be shared.
WHERE_TIMEOUT = 15.0


def flight_record(group: Group | None = None, last: int | None = None) -> list[CallRecord]:
    """The ``last`` (default: all kept) calls of ``group`` (default: the world), oldest first.

    Safe to call from any thread while another thread is inside a call on
    the group: each record is read whole.
    """
    impl = default_group(group).handle
    records = _core.flight_record(impl) if last is None else _core.flight_record(impl, last)
    frames = None
    for record in records:
        if record["shape"] is not None:
            record["shape"] = tuple(record["shape"])
        thread = record.pop("thread")
        if record["site"] is None and record["state"] in RUNNING:
            # Sites are recorded only on request (CHORUS_FLIGHT_SITES); a
            # running call's line is on its thread's stack.
            if frames is None:
                frames = sys._current_frames()
            record["site"] = _site_on_stack(frames.get(thread))
    return cast("list[CallRecord]", records)


def _site_on_stack(frame: FrameType | None) -> CallSite | None:
    """The innermost frame of the user's code (not a library's, not chorus's): the line that called in."""
    while frame is not None:
        file = frame.f_code.co_filename
        if not _is_library(file, frame.f_globals):
            return CallSite(
                file=file, line=frame.f_lineno, function=frame.f_code.co_name, cell=None
            )
        frame = frame.f_back
    return None


def snapshot() -> RankSnapshot:
    """Where this rank is now: every thread's Python stack and each group's newest call.

    Cheap and safe from any thread or a signal handler; it never talks to the
    other ranks (they may be the ones that hang).
    """
    import socket
    import threading
    import time
    import traceback

    from chorus import group as groups

    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    threads: list[ThreadStack] = []
    me = threading.get_ident()
    for ident, top in sys._current_frames().items():
        if ident == me:
            # Not this function's own frames (nor a signal handler's that called it).
            while top.f_back is not None and top.f_code.co_filename == __file__:
                top = top.f_back
        walked = list(traceback.walk_stack(top))[::-1]  # outermost first
        summaries = traceback.StackSummary.extract(walked)
        frames = [
            Frame(
                file=f.filename,
                line=f.lineno or 0,
                function=f.name,
                code=(f.line or "").strip(),
                library=_is_library(f.filename, frame.f_globals),
            )
            for f, (frame, _) in zip(summaries, walked, strict=True)
        ]
        threads.append(
            ThreadStack(name=names.get(ident, f"thread {ident}"), main=ident == main, frames=frames)
        )
    threads.sort(key=lambda t: not t["main"])
    calls: list[GroupCall] = []
    for group in groups.live_groups():
        newest = flight_record(group, last=1)
        if newest:
            calls.append(GroupCall(group=group.name, size=group.size(), record=newest[0]))
    world = groups._first
    if world is not None:
        rank, size = world.rank(), world.size()
    else:
        # Before chorus.init(): what the environment says this rank is.
        from chorus.env import read_rank_env

        try:
            env = read_rank_env()
            rank, size = env.rank, env.size
        except ValueError:
            rank, size = 0, 1
    return RankSnapshot(
        rank=rank,
        size=size,
        host=socket.gethostname(),
        pid=os.getpid(),
        time=time.time(),
        threads=threads,
        calls=calls,
        setting_up_since=groups._setting_up_since,
    )


class WhereUnavailableError(RuntimeError):
    """:func:`where` could not ask the supervisor.

    ``reason``: "no-supervisor" (nothing that can ask every rank started
    this process: plain ``python``, mpirun, Slurm, ipyparallel engines),
    "no-forward" (the ssh server of this rank's host refused to forward the
    launcher's port), "unreachable" (the supervisor is gone or did not
    answer in time) or "refused" (it did not accept the question).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def where(timeout: float = WHERE_TIMEOUT) -> Report:
    """Where every rank of the job is now: stacks, calls and a verdict, as in ``%chorus where``.

    Asks whoever started the ranks (``chorus launch``, the chorus kernel or
    ``%chorus start``): they ask every rank, this one included, and send the
    answers back, so it works while the other ranks hang in a collective,
    spin in Python or wait for input. ``print(chorus.debug.where().text())``
    shows the report; the returned :class:`~chorus.where.Report` holds it as
    data (``.verdict.kind``, ``.states``, ``.missing``).

    Raises
    ------
    WhereUnavailableError
        Nothing that can ask every rank started this process, or it did not
        answer (``reason`` says which; :func:`snapshot` still says where this
        rank is).
    """
    import json
    import socket
    import time

    from chorus.env import read_rank_env

    env = read_rank_env()
    if not env.supervisor:
        msg = (
            f"rank {env.rank} on {env.hostname}: chorus.debug.where() asks whoever started the"
            " ranks (chorus launch, the chorus kernel, %chorus start), and nothing that can was"
            " (no CHORUS_SUPERVISOR); chorus.debug.snapshot() says where this rank is"
        )
        raise WhereUnavailableError(msg, "no-supervisor")
    if env.supervisor.startswith(SUPERVISOR_UNAVAILABLE):
        why = env.supervisor.removeprefix(SUPERVISOR_UNAVAILABLE)
        msg = f"rank {env.rank} on {env.hostname}: chorus.debug.where() cannot ask: {why}"
        raise WhereUnavailableError(msg, "no-forward")
    host, _, port = env.supervisor.rpartition(":")
    question = {"token": env.token, "rank": env.rank, "question": "where"}
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(json.dumps(question).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
    except (OSError, ValueError) as err:
        msg = (
            f"rank {env.rank} on {env.hostname}: chorus.debug.where() got no answer from the"
            f" launcher or kernel at {env.supervisor} within {timeout:g} s ({err})"
        )
        raise WhereUnavailableError(msg, "unreachable") from None
    if not answer.get("ok"):
        msg = (
            f"rank {env.rank} on {env.hostname}: chorus.debug.where() was refused:"
            f" {answer.get('error', 'no reason given')}"
        )
        raise WhereUnavailableError(msg, "refused")
    return merge_answers(cast("WhereAnswers", answer["answers"]))


def _library_dirs() -> tuple[str, ...]:
    import sysconfig

    dirs = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.add(str(Path(__file__).resolve().parent))
    return tuple(sorted(d.rstrip("/") + "/" for d in dirs))


_LIBRARY_DIRS: tuple[str, ...] | None = None


def _is_library(file: str, module_globals: dict[str, object]) -> bool:
    """Python's own, an installed package's, or chorus's (its kernel and magics too)."""
    global _LIBRARY_DIRS
    if _LIBRARY_DIRS is None:
        _LIBRARY_DIRS = _library_dirs()
    spec = module_globals.get("__spec__")
    module = getattr(spec, "name", None) or str(module_globals.get("__name__", ""))
    if module == "chorus" or module.startswith("chorus."):
        return True
    return file.startswith(("<frozen", *_LIBRARY_DIRS))


def install_report_signal() -> bool:
    """Answer the launcher's ``SIGURG`` with a snapshot on stderr (``CHORUS_REPORTS=stderr``).

    The handler runs in the main thread between two bytecodes, also while
    the main thread waits inside a chorus call (the backends check for
    signals while they wait) or in ``input()``. A program that has its own
    SIGURG handler keeps it (no report from that rank). True when installed.
    """
    import json
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    signum = getattr(signal, REPORT_SIGNAL)
    if signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False

    def answer(_signum: int, _frame: object) -> None:
        try:
            data = SNAPSHOT_MARKER + json.dumps(snapshot()).encode() + b"\n"
        except Exception as err:  # noqa: BLE001 - a report must never break the program
            data = SNAPSHOT_MARKER + json.dumps({"error": repr(err)}).encode() + b"\n"
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(2, view) :]
            except InterruptedError:
                continue
            except OSError:
                return

    signal.signal(signum, answer)
    return True
