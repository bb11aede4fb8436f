"""The rich outputs of N ranks in rank order: identical ones once, images side by side.

Every rank runs the same cell, so the k-th display of each rank usually
shows the same kind of thing (a figure, a table), and they arrive in the
order the ranks happen to finish. The merger holds each rank's displays
until every rank still running has made its next one (or ``hold`` seconds
pass), then shows that row in rank order:

- identical mime bundles once, after a label with all their ranks (``[0-3]``);
- different images as one labelled grid, side by side;
- anything else one display per group of identical ones, after its label.

The ranks' data is shown as they made it: the label is a line of its own
(``labels.label_line``), the ranks are in the metadata.

A display with a ``display_id`` is shown at once (it may be updated later,
so it cannot be merged with others); the Engine does that itself.
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from chorus.kernel.labels import format_ranks, label_html, tagged

DEFAULT_HOLD = 0.5
_IMAGES = ("image/png", "image/jpeg")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# Shows one display_data content.
Publish = Callable[[dict[str, Any]], None]
# Shows the label of these ranks, before their display.
ShowLabel = Callable[[list[int]], None]


class DisplayMerger:
    """Holds the ranks' displays and shows each row of them merged, in rank order.

    Parameters
    ----------
    ranks
        The ranks expected to display (the cell's targets).
    publish, show_label
        Where merged displays go, and how the label before each is shown.
    hold
        Seconds a display waits for the other ranks' next one.
    """

    def __init__(
        self,
        ranks: Iterable[int],
        publish: Publish,
        show_label: ShowLabel,
        hold: float = DEFAULT_HOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.active = set(ranks)
        self.publish = publish
        self.show_label = show_label
        self.hold = hold
        self.clock = clock
        self._held: dict[int, deque[tuple[float, dict[str, Any]]]] = defaultdict(deque)

    def feed(self, rank: int, content: dict[str, Any]) -> None:
        """``rank`` displayed ``content`` (a display_data without a display id)."""
        self._held[rank].append((self.clock(), content))
        self._match(final=False)

    def holds(self, rank: int) -> bool:
        """Whether a display of ``rank`` waits (its later text must wait too)."""
        return bool(self._held.get(rank))

    def rank_done(self, rank: int) -> None:
        """``rank`` finished the cell: stop waiting for its displays."""
        self.active.discard(rank)
        self._match(final=False)

    def tick(self) -> None:
        """Show rows that waited longer than ``hold`` (call periodically)."""
        self._match(final=False)

    def flush(self) -> None:
        """Show everything held."""
        self._match(final=True)

    def _match(self, final: bool) -> None:
        while True:
            ready = sorted(rank for rank, held in self._held.items() if held)
            if not ready:
                return
            if not final and not self.active.issubset(ready):
                oldest = min(self._held[rank][0][0] for rank in ready)
                if self.clock() - oldest < self.hold:
                    return
            row = [(rank, self._held[rank].popleft()[1]) for rank in ready]
            self._show(row)

    def _show(self, row: list[tuple[int, dict[str, Any]]]) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        contents: dict[str, dict[str, Any]] = {}
        for rank, content in row:
            key = json.dumps(content.get("data", {}), sort_keys=True, default=str)
            groups[key].append(rank)
            contents.setdefault(key, content)
        if len(groups) > 1 and all(_image(c) for c in contents.values()):
            self.publish(_grid([(ranks, contents[key]) for key, ranks in groups.items()]))
            return
        for key, ranks in groups.items():
            self.show_label(ranks)
            self.publish(tagged(contents[key], ranks))


def _image(content: dict[str, Any]) -> str | None:
    """The image mime type of a static image; None for anything else.

    A widget (an ipympl figure) may carry a PNG for viewers without widgets:
    it is a widget, not an image.
    """
    data = content.get("data", {})
    if WIDGET_VIEW in data:
        return None
    return next((mime for mime in _IMAGES if mime in data), None)


def _grid(groups: list[tuple[list[int], dict[str, Any]]]) -> dict[str, Any]:
    """One display with each group's image and label, side by side."""
    cells = []
    plain = []
    for ranks, content in groups:
        label = format_ranks(ranks)
        mime = _image(content)
        assert mime is not None
        image = content["data"][mime]
        if isinstance(image, bytes):
            image = base64.b64encode(image).decode()
        cells.append(
            '<figure style="margin:0">'
            f"<figcaption>{label_html(label)}</figcaption>"
            f'<img src="data:{mime};base64,{image.strip()}" style="max-width:100%"/></figure>'
        )
        plain.append(f"{label} {content['data'].get('text/plain', '')}")
    html = (
        '<div class="chorus-rank-grid" style="display:grid;'
        'grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:6px">'
        + "".join(cells)
        + "</div>"
    )
    every = sorted(rank for ranks, _ in groups for rank in ranks)
    return {
        "data": {"text/html": html, "text/plain": "\n".join(plain)},
        "metadata": {
            "chorus": {
                "ranks": every,
                "label": format_ranks(every),
                "role": "grid",
                "groups": [ranks for ranks, _ in groups],
            }
        },
    }
