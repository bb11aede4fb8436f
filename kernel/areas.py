"""Per-rank output areas: ``clear_output`` from one rank clears that rank's output only.

A Jupyter cell has one output area, and ``clear_output`` empties all of it:
forwarded as it is, one rank's ``clear_output(wait=True)`` loop would wipe
every other rank's output. So the first ``clear_output`` of any rank places
an area for every rank of the cell, in rank order (outputs with display ids,
empty until used); from then on a rank that cleared has its text and
displays go to its area, and its clears empty it (``wait=True``: when its
next output arrives, as in Jupyter). What the rank
printed before its first clear was already shown with everyone's; lines
still held for merging are dropped, as the clear would have removed them.
Updates are sent at most once per :meth:`RankAreas.tick`.

An area is one output (one display id) that chorus composes from the
rank's text and its last display, so its label is inside it: a label
display of its own would stay behind when the area moves on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chorus.kernel.labels import label_html, tagged
from chorus.kernel.output import on_terminal

# (msg_type, content) to show: display_data, then update_display_data.
Publish = Callable[[str, dict[str, Any]], None]


@dataclass
class _Area:
    display_id: str
    used: bool = False  # the rank cleared its output: its output goes here
    lines: list[str] = field(default_factory=list)  # complete lines as a terminal shows them
    partial: str = ""
    rich: dict[str, Any] | None = None  # the last display shown in the area
    clear_on_next: bool = False  # clear_output(wait=True): empty it when output comes
    dirty: bool = True

    def reset(self) -> None:
        self.lines.clear()
        self.partial = ""
        self.rich = None
        self.clear_on_next = False
        self.dirty = True


class RankAreas:
    """The output areas of the ranks that cleared their output in this cell."""

    def __init__(self, publish: Publish, prefix: str, ranks: list[int]) -> None:
        self.publish = publish
        self.prefix = prefix
        self.ranks = sorted(ranks)
        self._areas: dict[int, _Area] = {}
        self._shown: set[int] = set()

    def __contains__(self, rank: int) -> bool:
        area = self._areas.get(rank)
        return area is not None and area.used

    def clear(self, rank: int, wait: bool) -> None:
        """``rank`` sent ``clear_output(wait=wait)``."""
        if not self._areas:
            # The areas' place: where the first clear came, in rank order.
            for each in self.ranks:
                self._areas[each] = _Area(f"{self.prefix}-{each}")
                self._send(each, self._areas[each])
        area = self._areas[rank]
        area.used = True
        if wait:
            area.clear_on_next = True
        else:
            area.reset()

    def write(self, rank: int, text: str) -> None:
        """Text ``rank`` printed (stdout or stderr) into its area."""
        area = self._areas[rank]
        self._before_output(area)
        data = area.partial + text
        *complete, area.partial = data.split("\n")
        area.lines.extend(on_terminal(line) for line in complete)
        area.dirty = True

    def show(self, rank: int, content: dict[str, Any]) -> None:
        """A display ``rank`` made: it replaces the area's previous one."""
        area = self._areas[rank]
        self._before_output(area)
        area.rich = copy.deepcopy(content)
        area.dirty = True

    def tick(self) -> None:
        """Send the areas that changed."""
        for rank, area in self._areas.items():
            if area.dirty and area.used:
                self._send(rank, area)

    @staticmethod
    def _before_output(area: _Area) -> None:
        if area.clear_on_next:
            area.reset()

    def _send(self, rank: int, area: _Area) -> None:
        area.dirty = False
        lines = [*area.lines, *([on_terminal(area.partial)] if area.partial else [])]
        if area.rich is not None:
            content = _label_inside(area.rich, rank)
            if lines:  # text printed after the display: shown in its plain text
                plain = content["data"].get("text/plain", "")
                content["data"]["text/plain"] = "\n".join([plain, *lines])
        else:
            content = {
                "data": {"text/plain": "\n".join(f"[{rank}] {line}" for line in lines)},
                "metadata": {"chorus": {"ranks": [rank], "label": f"[{rank}]"}},
            }
        content.setdefault("metadata", {}).setdefault("chorus", {})["role"] = "area"
        content["transient"] = {"display_id": area.display_id}
        kind = "update_display_data" if rank in self._shown else "display_data"
        self._shown.add(rank)
        self.publish(kind, content)


def _label_inside(content: dict[str, Any], rank: int) -> dict[str, Any]:
    """The area's display with the label ``[rank]`` in its text and HTML."""
    out = tagged(content, [rank])
    data = out["data"]
    label = f"[{rank}]"
    if "text/plain" in data:
        plain = data["text/plain"]
        data["text/plain"] = f"{label} {plain}" if "\n" not in plain else f"{label}\n{plain}"
    if "text/html" in data:
        data["text/html"] = label_html(label) + data["text/html"]
    else:
        for mime in ("image/png", "image/jpeg"):
            if mime in data:
                image = data[mime].strip()
                data["text/html"] = f'{label_html(label)}<img src="data:{mime};base64,{image}"/>'
                break
    return out
