"""DisplayMerger alone, on a fake clock: rank order, identical displays once, images in a grid.

Each display goes out after its label, its data untouched.
"""

from __future__ import annotations

from typing import Any

from chorus.kernel.displays import DisplayMerger
from chorus.kernel.labels import format_ranks


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


class Shown(list[dict[str, Any]]):
    """What the merger showed: labels as {"label": ...}, then each display."""

    def show_label(self, ranks: list[int]) -> None:
        self.append({"label": format_ranks(ranks)})

    def append(self, content: dict[str, Any]) -> None:
        meta = content.get("metadata", {}).get("chorus", {})
        if "data" in content and meta.get("role") != "grid":
            before = self[-1] if self else {}
            assert "data" not in before, "a display without its label before it"
            assert before["label"] == meta["label"]
        super().append(content)

    @property
    def displays(self) -> list[dict[str, Any]]:
        """The displays themselves, with their label as "label"."""
        return [{**s, "label": s["metadata"]["chorus"]["label"]} for s in self if "data" in s]


def merger(ranks: range) -> tuple[DisplayMerger, Shown, Clock]:
    shown = Shown()
    clock = Clock()
    return DisplayMerger(ranks, shown.append, shown.show_label, 0.5, clock), shown, clock


def html(text: str) -> dict[str, Any]:
    return {"data": {"text/html": text, "text/plain": text}, "metadata": {}}


def png(pixels: str) -> dict[str, Any]:
    return {"data": {"image/png": pixels, "text/plain": "<Figure>"}, "metadata": {}}


def test_identical_displays_show_once_labelled_with_every_rank() -> None:
    merged, shown, _ = merger(range(4))
    for rank in (3, 1, 0, 2):  # completion order
        merged.feed(rank, html("<b>table</b>"))
    assert [s["label"] for s in shown.displays] == ["[0-3]"]
    # The data is the rank's own: no label inside it.
    assert shown.displays[0]["data"] == html("<b>table</b>")["data"]


def test_a_row_waits_for_every_running_rank_then_goes_in_rank_order() -> None:
    merged, shown, clock = merger(range(3))
    merged.feed(2, html("two"))
    merged.feed(0, html("zero"))
    assert shown == []
    merged.feed(1, html("one"))
    assert [(s["label"], s["data"]["text/plain"]) for s in shown.displays] == [
        ("[0]", "zero"),
        ("[1]", "one"),
        ("[2]", "two"),
    ]
    assert not any(merged.holds(r) for r in range(3))
    # A rank that never displays: the others' go out after the hold.
    merged.feed(0, html("late"))
    merged.tick()
    assert len(shown.displays) == 3
    assert merged.holds(0)
    clock.now += 0.6
    merged.tick()
    assert shown.displays[-1]["label"] == "[0]"


def test_different_images_are_one_grid_in_rank_order() -> None:
    merged, shown, _ = merger(range(4))
    for rank in (2, 0, 3, 1):
        merged.feed(rank, png("AAAA" if rank % 2 else f"B{rank}"))
    (grid,) = shown
    meta = grid["metadata"]["chorus"]
    assert meta["role"] == "grid"
    assert meta["groups"] == [[0], [1, 3], [2]]
    page = grid["data"]["text/html"]
    assert page.index("[0]") < page.index("[1,3]") < page.index("[2]")
    assert "data:image/png;base64,B0" in page


def test_a_finished_rank_is_not_waited_for_and_flush_shows_the_rest() -> None:
    merged, shown, _ = merger(range(2))
    merged.feed(0, html("a"))
    merged.rank_done(1)
    assert [s["label"] for s in shown.displays] == ["[0]"]
    merged.feed(0, html("b"))
    merged.feed(0, html("c"))
    merged.flush()
    assert [s["data"]["text/plain"] for s in shown.displays] == ["a", "b", "c"]


def test_widgets_with_a_png_fallback_stay_widgets_each_after_its_label() -> None:
    merged, shown, _ = merger(range(2))
    for rank in range(2):
        view = {"model_id": f"m{rank}", "version_major": 2, "version_minor": 0}
        data = {"application/vnd.jupyter.widget-view+json": view, "image/png": f"P{rank}"}
        merged.feed(rank, {"data": data, "metadata": {}})
    assert [s["label"] for s in shown.displays] == ["[0]", "[1]"]
    assert len(shown) == 4
