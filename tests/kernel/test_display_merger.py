"""DisplayMerger alone, on a fake clock: rank order, identical displays once, images in a grid."""

from __future__ import annotations

from typing import Any

from chorus.kernel.displays import DisplayMerger
from chorus.kernel.labels import format_ranks


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def label(content: dict[str, Any], ranks: list[int]) -> dict[str, Any]:
    return {**content, "label": format_ranks(ranks)}


def merger(ranks: range) -> tuple[DisplayMerger, list[dict[str, Any]], Clock]:
    shown: list[dict[str, Any]] = []
    clock = Clock()
    return DisplayMerger(ranks, shown.append, label, 0.5, clock), shown, clock


def html(text: str) -> dict[str, Any]:
    return {"data": {"text/html": text, "text/plain": text}, "metadata": {}}


def png(pixels: str) -> dict[str, Any]:
    return {"data": {"image/png": pixels, "text/plain": "<Figure>"}, "metadata": {}}


def test_identical_displays_show_once_labelled_with_every_rank() -> None:
    merged, shown, _ = merger(range(4))
    for rank in (3, 1, 0, 2):  # completion order
        merged.feed(rank, html("<b>table</b>"))
    assert [s["label"] for s in shown] == ["[0-3]"]


def test_a_row_waits_for_every_running_rank_then_goes_in_rank_order() -> None:
    merged, shown, clock = merger(range(3))
    merged.feed(2, html("two"))
    merged.feed(0, html("zero"))
    assert shown == []
    merged.feed(1, html("one"))
    assert [(s["label"], s["data"]["text/plain"]) for s in shown] == [
        ("[0]", "zero"),
        ("[1]", "one"),
        ("[2]", "two"),
    ]
    assert not any(merged.holds(r) for r in range(3))
    # A rank that never displays: the others' go out after the hold.
    merged.feed(0, html("late"))
    merged.tick()
    assert len(shown) == 3
    assert merged.holds(0)
    clock.now += 0.6
    merged.tick()
    assert shown[-1]["label"] == "[0]"


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
    assert [s["label"] for s in shown] == ["[0]"]
    merged.feed(0, html("b"))
    merged.feed(0, html("c"))
    merged.flush()
    assert [s["data"]["text/plain"] for s in shown] == ["a", "b", "c"]


def test_widgets_with_a_png_fallback_stay_widgets_each_after_its_label() -> None:
    shown: list[dict[str, Any]] = []
    merged = DisplayMerger(
        range(2), shown.append, label, 0.5, Clock(), caption=lambda ranks: {"caption": ranks}
    )
    for rank in range(2):
        view = {"model_id": f"m{rank}", "version_major": 2, "version_minor": 0}
        data = {"application/vnd.jupyter.widget-view+json": view, "image/png": f"P{rank}"}
        merged.feed(rank, {"data": data, "metadata": {}})
    assert [s.get("caption", s.get("label")) for s in shown] == [[0], "[0]", [1], "[1]"]
