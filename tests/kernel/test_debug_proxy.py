"""DebugProxy's own bookkeeping, with ranks' answers scripted (the real ranks: test_debugger.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from chorus.kernel import debugger
from chorus.kernel.debugger import DebugProxy, IdTable, rewrite_paths


def test_proxy_ids_are_positive_int32_and_never_reused_while_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(debugger, "INT32_MAX", 5)
    table = IdTable()
    first = [table.ours(rank, 100) for rank in range(4)]
    assert first == [1, 2, 3, 4]
    assert table.ours(2, 100) == 3  # the same id of the same rank: the same proxy id
    assert table.theirs(3) == (2, 100)
    table.drop(1)  # rank 1 ran on: its ids go
    assert table.theirs(2) is None
    later = [table.ours(0, 200), table.ours(0, 201)]
    # 5 is the largest, then the numbers wrap past the ids still alive.
    assert later == [5, 2], later
    assert table.theirs(2) == (0, 201)
    assert table.theirs("3") is None


def test_paths_are_rewritten_under_the_prefix_only() -> None:
    message = {
        "body": {
            "stackFrames": [
                {"source": {"path": "/tmp/ipykernel_7/123.py"}},
                {"source": {"path": "/usr/lib/python3/os.py"}},
            ],
            "sourcePath": "/tmp/ipykernel_7/9.py",
        }
    }
    moved = rewrite_paths(message, "/tmp/ipykernel_7/", "/tmp/ipykernel_1/")
    frames = moved["body"]["stackFrames"]
    assert [f["source"]["path"] for f in frames] == [
        "/tmp/ipykernel_1/123.py",
        "/usr/lib/python3/os.py",
    ]
    assert moved["body"]["sourcePath"] == "/tmp/ipykernel_1/9.py"
    assert message["body"]["sourcePath"] == "/tmp/ipykernel_7/9.py"  # a copy


def test_a_breakpoint_bound_on_some_ranks_only_says_which() -> None:
    async def ask(rank: int, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        lines = request["arguments"]["breakpoints"]
        points = [
            {
                "line": b["line"],
                "verified": rank != 1 or b["line"] != 3,
                "source": request["arguments"]["source"],
            }
            for b in lines
        ]
        return {"type": "response", "success": True, "body": {"breakpoints": points}}

    proxy = DebugProxy(4, ask, lambda event: None, lambda: [0, 1, 2, 3], lambda r: f"rank {r}")
    path = proxy.prefix + "42.py"
    request = {
        "seq": 7,
        "command": "setBreakpoints",
        "arguments": {"source": {"path": path}, "breakpoints": [{"line": 2}, {"line": 3}]},
    }
    reply = asyncio.run(proxy.handle(request))
    assert (reply["success"], reply["request_seq"], reply["command"]) == (True, 7, "setBreakpoints")
    points = {p["line"]: p for p in reply["body"]["breakpoints"]}
    assert points[2]["verified"] is True
    assert "message" not in points[2]
    assert points[3]["verified"] is True
    assert points[3]["message"] == "bound on ranks [0,2,3] only"
    assert proxy.breakpoints[path] == [{"line": 2}, {"line": 3}]


def test_a_rank_that_does_not_answer_fails_the_request_naming_it() -> None:
    async def ask(rank: int, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        if rank == 2:
            raise TimeoutError
        return {"type": "response", "success": True, "body": {}}

    proxy = DebugProxy(
        4, ask, lambda event: None, lambda: [0, 1, 2, 3], lambda r: f"rank {r} on h{r}"
    )
    reply = asyncio.run(proxy.handle({"seq": 1, "command": "configurationDone", "arguments": {}}))
    assert reply["success"] is False
    assert reply["message"] == "rank 2 on h2 did not answer within 10 s", reply
