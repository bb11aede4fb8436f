"""The merged report's verdicts, from snapshots as ranks write them."""

from __future__ import annotations

from chorus.where import CallRecord, RankSnapshot, merge, rank_list


def _record(op: str, seq: int, state: str, start: float = 100.0) -> CallRecord:
    return CallRecord(
        id=seq, seq=seq, op=op, collective=True, state=state, failure=None, reason=None,
        culprit=None, dtype="float64", shape=(3,), nbytes=24, root=None, peer=None, tag=None,
        start=start, end=None if state in ("entered", "agreed") else start + 0.001,
        site={"file": "/work/train.py", "line": 40 + seq, "function": "<module>", "cell": None},
    )  # fmt: skip


def _snapshot(rank: int, call: CallRecord, line: int = 12) -> RankSnapshot:
    frame = {"file": "/work/train.py", "line": line, "function": "<module>", "code": "x",
             "library": False}  # fmt: skip
    return RankSnapshot(
        rank=rank, size=4, host="h", pid=1000 + rank, time=110.0,
        threads=[{"name": "MainThread", "main": True, "frames": [frame]}],  # type: ignore[list-item]
        calls=[{"group": "world", "size": 4, "record": call}], setting_up_since=None,
    )  # fmt: skip


def test_ranks_in_different_calls_are_named_with_the_ones_behind() -> None:
    # (d) two ranks wait in all_sum #5, two in all_sum #6.
    snaps = [_snapshot(r, _record("all_sum", 5 if r < 2 else 6, "entered")) for r in range(4)]
    report = merge(snaps)
    assert report.verdict.kind == "different-calls"
    assert report.verdict.waiting == [0, 1, 2, 3]
    text = report.text()
    assert "ranks 0,1 in all_sum #5; ranks 2,3 in all_sum #6" in text
    assert "Ranks 0,1 made fewer calls on this group than the others" in text


def test_every_rank_in_the_same_call_is_not_a_stall() -> None:
    snaps = [_snapshot(r, _record("barrier", 9, "agreed")) for r in range(4)]
    verdict = merge(snaps).verdict
    assert verdict.kind == "together"
    assert "every rank is in barrier #9" in verdict.text
    assert "moving data" in verdict.text


def test_no_rank_in_a_call_and_ranks_that_did_not_answer() -> None:
    snaps = [_snapshot(r, _record("all_sum", 3, "completed")) for r in range(3)]
    report = merge(snaps, missing={3: "exited with code 1"})
    assert report.verdict.kind == "missing-ranks"
    assert "rank 3 did not answer" in report.verdict.text
    assert "[3]  no report: exited with code 1" in report.text().replace("    ", "  ")
    assert merge(snaps[:2], size=2).verdict.kind == "no-call"


def test_a_missing_rank_is_among_those_that_never_made_the_call() -> None:
    snaps = [_snapshot(0, _record("all_sum", 4, "entered"))]
    snaps += [_snapshot(r, _record("all_sum", 3, "completed")) for r in (1, 2)]
    report = merge(snaps, size=4, missing={3: "no answer within 3 s"})
    assert report.verdict.kind == "missing-call"
    assert report.verdict.waiting == [0]
    assert report.verdict.others == [1, 2, 3]
    assert "which ranks 1-3 never made" in report.verdict.text
    assert "rank 3 did not answer (no answer within 3 s)" in report.verdict.text


def test_rank_lists_fold_runs_of_three() -> None:
    assert rank_list([3, 0, 1, 2, 7, 9, 10]) == "[0-3,7,9,10]"
    assert rank_list([]) == "[]"


def test_ranks_that_never_called_on_the_world_are_the_ones_missing() -> None:
    waiting = _snapshot(0, _record("all_sum", 1, "entered"))
    others = [_snapshot(r, _record("all_sum", 1, "entered")) for r in (1, 2, 3)]
    for snap in others:
        snap["calls"] = []  # they never made a call on the world group
    report = merge([waiting, *others])
    assert report.verdict.kind == "missing-call", report.text()
    assert report.verdict.others == [1, 2, 3]
    assert "their last call there was none yet" in report.verdict.text
