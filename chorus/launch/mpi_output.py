"""Turn Open MPI's tagged output (``--tag-output``) into chorus's ``[rank] line`` labels.

mpirun prefixes every piece of output it forwards with ``[job,rank]<stdout>:``
(Open MPI 4) — also pieces that continue a line, so a rank that prints ``0``
and then the newline in two writes arrives as ``[1,0]<stdout>:0[1,0]<stdout>:``
followed by the newline. :class:`TagRelabeler` keeps a partial line per rank
and writes whole lines with chorus's label, as ``chorus launch`` does for its
own ranks.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["TagRelabeler"]

_TAG = re.compile(rb"\[\d+,(\d+)\]<(?:stdout|stderr|stddiag)>:")


class TagRelabeler:
    """Feed bytes from one of mpirun's streams; whole lines come out labelled.

    Parameters
    ----------
    write
        Called with labelled bytes (``b"[2] text\\n"``), whole lines only
        (except at :meth:`close`).
    prefix
        Label lines at all (``chorus launch --no-prefix`` strips the tags only).
    """

    def __init__(self, write: Callable[[bytes], None], prefix: bool = True) -> None:
        self.write = write
        self.prefix = prefix
        self._rank: int | None = None
        self._partial: dict[int | None, bytes] = {}
        self._carry = b""

    def _emit(self, rank: int | None, data: bytes) -> None:
        pending = self._partial.pop(rank, b"") + data
        *lines, rest = pending.split(b"\n")
        label = f"[{rank}] ".encode() if self.prefix and rank is not None else b""
        if lines:
            self.write(b"".join(label + line + b"\n" for line in lines))
        if rest:
            self._partial[rank] = rest

    def feed(self, data: bytes) -> None:
        """Process a chunk; a tag split across chunks is kept for the next one."""
        data = self._carry + data
        self._carry = b""
        # A '[' near the end may start a tag that the next chunk completes.
        cut = data.rfind(b"[")
        if cut != -1 and b">" not in data[cut:] and len(data) - cut < 40:
            data, self._carry = data[:cut], data[cut:]
        position = 0
        for match in _TAG.finditer(data):
            if match.start() > position:
                self._emit(self._rank, data[position : match.start()])
            self._rank = int(match.group(1))
            position = match.end()
        if position < len(data):
            self._emit(self._rank, data[position:])

    def close(self) -> None:
        """Flush partial lines (each ended with a newline)."""
        if self._carry:
            self._emit(self._rank, self._carry)
            self._carry = b""
        for rank in list(self._partial):
            self._emit(rank, b"\n")
