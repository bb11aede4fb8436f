"""Rank labels: ``[0-3]``, ``[0,2]``, ``[1]``."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence
from typing import Any


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


def label_line(ranks: Sequence[int]) -> str:
    """The label ``[0-3]`` as a line of text, shown (on stdout) before the output it labels.

    A rank's rich output is shown as it is, after its label: the label
    inside the data would change what nbconvert, papermill and widget views
    read, and Markdown, LaTeX and SVG have no place to put it. A line of
    text rather than a display of its own: every display_data of a cell
    should carry what the cell displayed (Jupyter's kernel conformance tests
    check that), and the text labels of the same cell are lines too.
    """
    return format_ranks(ranks) + "\n"


def label_html(label: str) -> str:
    """The label as HTML, for outputs chorus composes itself (image grids, rank areas)."""
    return f'<div class="chorus-rank-label" style="font-size:smaller;opacity:0.7">{label}</div>'


def tagged(content: dict[str, Any], ranks: Sequence[int]) -> dict[str, Any]:
    """A display message's content with its ranks in the metadata, its data untouched."""
    out = copy.deepcopy(content)
    out.setdefault("data", {})
    out.setdefault("metadata", {})["chorus"] = {
        "ranks": list(ranks),
        "label": format_ranks(ranks),
    }
    return out


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
