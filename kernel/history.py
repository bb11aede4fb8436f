"""The chorus kernel's cell history: one writer for every rank, read the way IPython reads its own.

Rank kernels keep only the running session's history, in memory (N ranks
writing one ``history.sqlite`` contended on its lock at every cell). The
chorus kernel writes each cell once, to the same database and in the same
tables IPython uses (``~/.ipython/profile_default/history.sqlite``), so
``history_request`` (jupyter console's up-arrow and search, JupyterLab's
console) and later IPython sessions see it, and
:class:`~IPython.core.history.HistoryAccessor` answers tail, range and search.
"""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from IPython.core.history import HistoryAccessor
from IPython.core.profiledir import ProfileDir, ProfileDirError
from IPython.paths import get_ipython_dir


def _default_file() -> str:
    """IPython's history database of the default profile, the profile made if need be.

    On a new machine nothing has made ``~/.ipython/profile_default`` yet (IPython
    makes it at its first start); without a profile there is no history, not a
    kernel that fails to start.
    """
    try:
        profile = ProfileDir.create_profile_dir_by_name(get_ipython_dir(), "default")  # type: ignore[no-untyped-call]
    except (OSError, ProfileDirError):
        return ":memory:"
    return str(Path(profile.location) / "history.sqlite")


@dataclass
class HistoryQuery:
    """A ``history_request``'s content (jupyter_client's messaging spec)."""

    hist_access_type: str  # "tail", "range" or "search"
    output: bool = False
    raw: bool = True
    session: int = 0
    start: int = 0
    stop: int | None = None
    n: int | None = None
    pattern: str | None = None
    unique: bool = False


class CellHistory:
    """This kernel's session in IPython's history database.

    Parameters
    ----------
    hist_file
        The database (default: IPython's, of the default profile).
    """

    def __init__(self, hist_file: str = "") -> None:
        # Cells also arrive on the control thread (%chorus where from a
        # second console): one connection, shared under a lock.
        self.accessor = HistoryAccessor(
            hist_file=hist_file or _default_file(), connection_options={"check_same_thread": False}
        )
        self._lock = threading.Lock()
        self.session = 0
        self._cells = 0
        if self.accessor.enabled:
            with self._lock, contextlib.suppress(sqlite3.Error), self.accessor.db:
                started = datetime.datetime.now().isoformat(" ")
                cursor = self.accessor.db.execute(
                    "INSERT INTO sessions VALUES (NULL, ?, NULL, NULL, '')", (started,)
                )
                self.session = int(cursor.lastrowid or 0)

    def store(self, line: int, source: str, output: str | None = None) -> None:
        """Record cell ``line`` of this session (and its result's text, if any)."""
        if not self.session:
            return
        with self._lock, contextlib.suppress(sqlite3.Error), self.accessor.db:
            db = self.accessor.db
            db.execute(
                "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?)",
                (self.session, line, source, source),
            )
            if output is not None:
                db.execute(
                    "INSERT OR REPLACE INTO output_history VALUES (?, ?, ?)",
                    (self.session, line, output),
                )
        self._cells += 1

    def reply(self, query: HistoryQuery) -> dict[str, Any]:
        """The content of a ``history_reply`` (as ipykernel answers for IPython)."""
        with self._lock:
            return {"status": "ok", "history": self._find(query)}

    def _find(self, query: HistoryQuery) -> list[Any]:
        accessor = self.accessor
        raw, output = query.raw, query.output
        if query.hist_access_type == "tail":
            found = accessor.get_tail(query.n, raw=raw, output=output, include_latest=True)
        elif query.hist_access_type == "range":
            session = query.session
            if session <= 0:  # 0: this session, -1: the one before, ...
                session += self.session
            found = accessor.get_range(session, query.start, query.stop, raw=raw, output=output)
        elif query.hist_access_type == "search":
            found = accessor.search(
                query.pattern or "*", raw=raw, output=output, n=query.n, unique=query.unique
            )
        else:
            found = []
        return list(found)

    def close(self) -> None:
        """Mark the session ended, as IPython does."""
        if not self.session:
            return
        with self._lock, contextlib.suppress(sqlite3.Error), self.accessor.db:
            ended = datetime.datetime.now().isoformat(" ")
            self.accessor.db.execute(
                "UPDATE sessions SET end=?, num_cmds=? WHERE session==?",
                (ended, self._cells, self.session),
            )
        self.session = 0
