"""OutputMerger alone, on a fake clock: what is collapsed, what waits, what goes out."""

from __future__ import annotations

from chorus.kernel.labels import format_ranks
from chorus.kernel.output import OutputMerger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def merger(ranks: range, mode: str = "collapse") -> tuple[OutputMerger, list[str], Clock]:
    shown: list[str] = []
    clock = Clock()
    merged = OutputMerger(
        ranks, lambda name, text: shown.append(f"{name}:{text}"), mode, 0.5, clock
    )
    return merged, shown, clock


def test_identical_lines_collapse_and_differing_ones_group_by_text() -> None:
    merged, shown, _ = merger(range(4))
    for rank in range(4):
        merged.feed(rank, "stdout", f"same\n{rank % 2}\nr{rank}\n")
    assert "".join(shown) == (
        "stdout:[0-3] same\n[0,2] 0\n[1,3] 1\n[0] r0\n[1] r1\n[2] r2\n[3] r3\n"
    )


def test_lines_wait_for_running_ranks_until_hold_then_go_out_alone() -> None:
    merged, shown, clock = merger(range(3))
    merged.feed(0, "stdout", "a\nb\n")
    clock.now += 0.2
    merged.feed(1, "stdout", "a\n")
    merged.tick()
    assert shown == []  # rank 2 may still print "a"
    clock.now += 0.31  # rank 0's lines have waited 0.51 s, rank 1's 0.31 s
    merged.tick()
    # The oldest row goes out; rank 0's "b" arrived with it, so it has waited
    # as long and goes too; nothing is left waiting for a twin any more.
    assert "".join(shown) == "stdout:[0,1] a\n[0] b\n"
    merged.feed(2, "stdout", "a\n")
    merged.rank_done(0)
    merged.rank_done(1)
    merged.rank_done(2)
    assert shown[-1] == "stdout:[2] a\n"
    assert not merged.pending()


def test_hold_counts_from_each_lines_own_arrival() -> None:
    merged, shown, clock = merger(range(2))
    merged.feed(0, "stdout", "one\n")
    clock.now += 0.4
    merged.feed(0, "stdout", "two\n")
    clock.now += 0.2  # "one" waited 0.6 s, "two" 0.2 s
    merged.tick()
    assert "".join(shown) == "stdout:[0] one\n"
    clock.now += 0.2
    merged.tick()
    assert "".join(shown) == "stdout:[0] one\n"  # "two" has waited only 0.4 s
    clock.now += 0.2
    merged.tick()
    assert "".join(shown) == "stdout:[0] one\n" + "stdout:[0] two\n"


def test_finished_rank_is_not_waited_for_and_streams_stay_apart() -> None:
    merged, shown, _ = merger(range(2))
    merged.feed(1, "stderr", "warn\n")
    merged.feed(0, "stdout", "x\n")
    assert shown == []
    merged.rank_done(1)
    # Rank 1 printed no stdout and is done: rank 0's line goes out. Its
    # warning still waits for a twin on rank 0's stderr, until rank 0 is done.
    assert shown == ["stdout:[0] x\n"]
    merged.rank_done(0)
    assert shown == ["stdout:[0] x\n", "stderr:[1] warn\n"]


def test_many_rows_keep_their_order_per_rank() -> None:
    merged, shown, _ = merger(range(3))
    # Unequal batches: rank 0 sends everything at once, the others in pieces.
    merged.feed(0, "stdout", "".join(f"{i}\n" for i in range(1000)))
    for start in range(0, 1000, 7):
        for rank in (1, 2):
            merged.feed(
                rank, "stdout", "".join(f"{i}\n" for i in range(start, min(start + 7, 1000)))
            )
    assert "".join(shown).replace("stdout:", "") == "".join(f"[0-2] {i}\n" for i in range(1000))
    assert not merged.pending()


def test_partial_lines_only_on_flush_and_grouped() -> None:
    merged, shown, _ = merger(range(3))
    for rank in range(3):
        merged.feed(rank, "stdout", "name? " if rank < 2 else "other> ")
    assert shown == []
    assert merged.pending()
    merged.flush()
    assert shown == ["stdout:[0,1] name? ", "stdout:[2] other> "]
    merged.feed(0, "stdout", "ok\n")  # the rest of rank 0's line, later
    merged.rank_done(1)
    merged.rank_done(2)
    assert shown[-1] == "stdout:[0] ok\n"


def test_byrank_mode_keeps_everything_for_one_block_per_rank() -> None:
    merged, shown, _ = merger(range(2), mode="byrank")
    merged.feed(1, "stdout", "b1\nb2\n")
    merged.feed(0, "stdout", "a1\n")
    merged.rank_done(0)
    merged.rank_done(1)
    assert shown == []
    merged.flush()
    assert shown == ["stdout:── rank 0 ──\na1\n", "stdout:── rank 1 ──\nb1\nb2\n"]
    assert not merged.pending()


def test_format_ranks() -> None:
    assert format_ranks([3, 1, 2, 0]) == "[0-3]"
    assert format_ranks([0, 2, 5, 6, 7]) == "[0,2,5-7]"
    assert format_ranks([4, 5]) == "[4,5]"
    assert format_ranks(iter([1])) == "[1]"


def live_merger(
    ranks: range,
) -> tuple[OutputMerger, list[str], list[tuple[int, str, str | None]], Clock]:
    shown: list[str] = []
    lives: list[tuple[int, str, str | None]] = []
    clock = Clock()
    merged = OutputMerger(
        ranks,
        lambda name, text: shown.append(f"{name}:{text}"),
        "collapse",
        0.5,
        clock,
        live=lambda rank, name, text: lives.append((rank, name, text)),
        live_after=0.2,
    )
    return merged, shown, lives, clock


def test_a_progress_bar_is_live_per_rank_and_its_final_line_merges() -> None:
    merged, shown, lives, clock = live_merger(range(2))
    for rank in range(2):
        merged.feed(rank, "stderr", "\r  0%|     |")
    merged.tick()
    assert lives == []  # not yet: it may complete at once
    clock.now += 0.3
    merged.tick()
    assert lives == [(0, "stderr", "  0%|     |"), (1, "stderr", "  0%|     |")]
    merged.feed(0, "stderr", "\r 50%|##   |")
    merged.tick()
    merged.tick()  # unchanged: no second update
    assert lives[2:] == [(0, "stderr", " 50%|##   |")]
    assert shown == []
    for rank in range(2):
        merged.feed(rank, "stderr", "\r100%|#####|\n")
    # Each live line withdrawn, then the final lines, labels intact, collapsed.
    assert lives[3:] == [(0, "stderr", None), (1, "stderr", None)]
    assert shown == ["stderr:[0,1] 100%|#####|\n"]


def test_carriage_returns_keep_only_what_a_terminal_shows() -> None:
    merged, shown, _ = merger(range(2))
    merged.feed(0, "stdout", "step 1\rstep 2\rdone\n")
    merged.feed(1, "stdout", "done\r\n")
    assert shown == ["stdout:[0,1] done\n"]


def test_a_line_still_open_at_the_end_stays_where_it_is_shown_live() -> None:
    merged, shown, lives, clock = live_merger(range(2))
    merged.feed(0, "stdout", "0 1 ")
    merged.feed(1, "stdout", "x")
    clock.now += 0.3
    merged.tick()
    merged.feed(0, "stdout", "2 ")
    merged.flush()
    # Rank 0's live line gets its last state; rank 1's was shown live as is.
    assert lives == [(0, "stdout", "0 1 "), (1, "stdout", "x"), (0, "stdout", "0 1 2 ")]
    assert shown == []


def test_partial_lines_without_live_outputs_wait_for_the_end() -> None:
    merged, shown, _ = merger(range(2))
    merged.feed(0, "stdout", "a\rb")
    merged.tick()
    assert shown == []
    merged.flush()
    assert shown == ["stdout:[0] b"]


def test_pdb_locations_in_each_ranks_cell_files_collapse() -> None:
    merged, shown, _ = merger(range(3))
    for rank in range(3):
        merged.feed(rank, "stdout", f"> /tmp/ipykernel_{4000 + rank}/2251.py(2)<module>()\n")
    assert shown == ["stdout:[0-2] > /tmp/ipykernel_4000/2251.py(2)<module>()\n"]
