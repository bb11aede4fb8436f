"""Rank labels: ``[0-3]``, ``[0,2]``, ``[1]``."""

from __future__ import annotations

import functools
from collections.abc import Iterable


def format_ranks(ranks: Iterable[int]) -> str:
    """``[0-3]`` for a run, ``[0,2,5-7]`` for several runs, ``[1]`` for one rank."""
    return _format_sorted(tuple(sorted(set(ranks))))


@functools.lru_cache(maxsize=1024)  # output labels every line with one of a few rank sets
def _format_sorted(ordered: tuple[int, ...]) -> str:
    parts: list[str] = []
    start = prev = None
    for rank in ordered:
        if start is None:
            start = prev = rank
        elif prev is not None and rank == prev + 1:
            prev = rank
        else:
            parts.append(_run(start, prev))
            start = prev = rank
    if start is not None:
        parts.append(_run(start, prev))
    return "[" + ",".join(parts) + "]"


def _run(start: int, end: int | None) -> str:
    if end is None or end == start:
        return str(start)
    if end == start + 1:
        return f"{start},{end}"
    return f"{start}-{end}"


def parse_ranks(text: str, size: int) -> list[int]:
    """Parse ``"0,2"``, ``"1-3"``, ``"all"`` or ``"*"`` into sorted ranks.

    Raises
    ------
    ValueError
        A malformed spec or a rank outside ``0 .. size-1``; the message says which.
    """
    text = text.strip()
    if text in ("all", "*", ""):
        return list(range(size))
    ranks: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                ranks.update(range(low, high + 1))
            else:
                ranks.add(int(part))
        except ValueError:
            msg = f"bad rank list {text!r}: expected e.g. 0,2 or 1-3 or all"
            raise ValueError(msg) from None
    bad = sorted(r for r in ranks if not 0 <= r < size)
    if bad:
        msg = f"rank {bad[0]} is out of range: there are {size} ranks (0-{size - 1})"
        raise ValueError(msg)
    return sorted(ranks)
