"""The flight recorder: every call of every group, with its fields, its end and its line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RankRunner

# A mix of calls, a mismatched one, an interrupted one (rank 0 interrupts
# itself inside all_sum while rank 1 is still asleep, so rank 1 comes late),
# point to point, and a look at the record from another thread while the
# main thread waits inside a call. Each rank prints its record as JSON.
MIX = """
import json, os, signal, threading, time, numpy as np, chorus, chorus.debug
g = chorus.init(strict=True)
r = g.rank()
chorus.all_sum(np.ones((3, 4)))                                    # LINE all_sum
chorus.barrier()                                                   # LINE barrier
chorus.broadcast(np.arange(5.0), root=1)                           # LINE broadcast
try:
    chorus.all_sum(np.ones(3 + r))                                 # LINE mismatch
except ValueError:
    pass
if r == 0:
    chorus.send(np.ones(4, np.int32), 1)                           # LINE send
else:
    chorus.recv((4,), np.int32, 0)                                 # LINE recv
chorus.barrier()
try:
    if r == 0:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    else:
        time.sleep(1.5)
    chorus.all_sum(np.ones(2))                                     # LINE interrupted
except KeyboardInterrupt:
    pass
except chorus.PeerError:
    pass
chorus.barrier()
# While the main thread waits in all_sum (rank 1 is asleep), look from another.
seen = {{}}
def look():
    time.sleep(0.5)
    seen.update(chorus.debug.flight_record(last=1)[0])
if r == 0:
    threading.Thread(target=look).start()
else:
    time.sleep(1.5)
chorus.all_sum(np.ones(7, np.float32))                             # LINE waiting
time.sleep(0.2)
print("RECORD", json.dumps({{"calls": chorus.debug.flight_record(), "seen": seen}}), flush=True)
"""


def _lines(code: str) -> dict[str, int]:
    """The line numbers marked ``# LINE name`` in the rank code."""
    return {
        line.split("# LINE ")[1].strip(): number
        for number, line in enumerate(code.splitlines(), start=1)
        if "# LINE " in line
    }


def _records(
    ranks: RankRunner, code: str, backend: str, env: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    results = ranks.start(code, 2, backend=backend, env=env).wait(timeout=90)
    everything = "\n".join(f"--- rank {r.rank}\n{r.stdout}{r.stderr}" for r in results)
    out = []
    for result in results:
        assert result.returncode == 0, everything
        line = next(x for x in result.stdout.splitlines() if x.startswith("RECORD "))
        out.append(json.loads(line.split(" ", 1)[1]))
    return out, everything


@pytest.mark.parametrize("backend", ["shm", "ring", "mesh"])
def test_the_record_holds_every_call_its_end_and_its_line(
    ranks: RankRunner, tmp_path: Path, backend: str
) -> None:
    code = MIX.format()
    lines = _lines(code)
    (reports, everything) = _records(ranks, code, backend, env={"CHORUS_FLIGHT_SITES": "1"})
    for rank, report in enumerate(reports):
        calls = report["calls"]
        ops = [c["op"] for c in calls]
        p2p = "send" if rank == 0 else "recv"
        want = ["all_sum", "barrier", "broadcast", "all_sum", p2p, "barrier", "all_sum",
                "barrier", "all_sum"]  # fmt: skip
        assert ops == want, everything
        assert [c["id"] for c in calls] == list(range(1, len(calls) + 1))
        first, barrier, bcast, mismatch, pt, _, interrupted, _, waited = calls
        # Fields of completed collectives.
        expect(first, everything, state="completed", failure=None, seq=1, dtype="float64",
               shape=[3, 4], nbytes=96, collective=True)  # fmt: skip
        assert first["start"] <= first["end"]
        expect(barrier, everything, seq=2, dtype=None, shape=None)
        expect(bcast, everything, seq=3, root=1, shape=[5])
        # The caller's line, not chorus's.
        for record, name in [(first, "all_sum"), (barrier, "barrier"), (mismatch, "mismatch")]:
            expect(record["site"], everything, line=lines[name], function="<module>")
        # A mismatch fails as such on every rank.
        expect(mismatch, everything, state="failed", failure="mismatch", shape=[3 + rank])
        # Point to point: the peer, the tag, their own numbering.
        expect(pt, everything, collective=False, seq=1, peer=1 - rank, tag=0, nbytes=16,
               state="completed")  # fmt: skip
        expect(pt["site"], everything, line=lines[p2p])
        # The interrupted call: rank 0 was interrupted; rank 1 failed because of it.
        if rank == 0:
            expect(interrupted, everything, state="failed", failure="interrupted")
        else:
            expect(interrupted, everything, state="failed", failure="peer", culprit=0)
            assert interrupted["reason"] in ("interrupted", "late"), everything
        # The last call completed, and was seen in flight from another thread.
        expect(waited, everything, state="completed", dtype="float32")
        if rank == 0:
            seen = report["seen"]
            expect(seen, everything, op="all_sum", id=waited["id"], state="entered", end=None)
            expect(seen["site"], everything, line=lines["waiting"])


def expect(record: dict[str, Any], everything: str, **fields: object) -> None:
    """The record has these values (all of them, shown together when not)."""
    assert {name: record.get(name) for name in fields} == fields, everything


KEEP = """
import json, numpy as np, chorus, chorus.debug
g = chorus.init(strict=True)
for i in range(10):
    chorus.all_sum(np.full(2, i))
print("RECORD", json.dumps({"calls": chorus.debug.flight_record()}), flush=True)
"""


def test_the_record_keeps_the_last_calls_or_nothing(ranks: RankRunner) -> None:
    reports, everything = _records(ranks, KEEP, "shm", env={"CHORUS_FLIGHT_RECORDS": "3"})
    for report in reports:
        assert [c["id"] for c in report["calls"]] == [8, 9, 10], everything
        assert [c["seq"] for c in report["calls"]] == [8, 9, 10], everything
        # Lines of finished calls only with CHORUS_FLIGHT_SITES=1 (they cost time).
        assert [c["site"] for c in report["calls"]] == [None] * 3, everything
    reports, everything = _records(ranks, KEEP, "shm", env={"CHORUS_FLIGHT_RECORDS": "0"})
    for report in reports:
        assert report["calls"] == [], everything


def test_a_running_call_names_its_line_without_recorded_sites(ranks: RankRunner) -> None:
    code = MIX.format()
    lines = _lines(code)
    reports, everything = _records(ranks, code, "shm")
    seen = reports[0]["seen"]
    expect(seen, everything, state="entered", end=None)
    expect(seen["site"], everything, line=lines["waiting"], function="<module>")
    assert reports[0]["calls"][0]["site"] is None, everything
