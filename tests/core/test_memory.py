"""Memory per call: a collective needs its input, its output and a bounded
scratch, and keeps nothing large after it returns (issue 13).

Ceilings, not speed: each rank resets its peak resident size before a call
(/proc/self/clear_refs) and reads it (VmHWM) and its resident size after.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import RankRunner

MIB = 1 << 20
NBYTES = 256 * MIB
# What a call may use beyond its output: the backends' bounded scratch (the
# ring's windows are 8 segments of 1 MiB for receiving and 8 for forwarding,
# mesh's the same order, shm's segment is shared and a few MiB), plus
# allocator and page-table noise.
SCRATCH = 48 * MIB

RANK = """
import json, numpy as np, chorus
g = chorus.init(strict=True)
n = {nbytes} // 4
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096

def start():
    # Linux: writing 5 resets the peak (VmHWM) to the resident set now.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss()

def grown(before):
    status = open("/proc/self/status").read()
    hwm = int(status.split("VmHWM:")[1].split()[0]) * 1024
    return (max(hwm - before, 0), rss() - before)

x = np.ones(n, np.float32)
x[:] = 1.0                                   # every page of the input is resident
chorus.all_sum(np.ones(4))                   # set-up (segments, links) is not the call's
report = {{"rank": g.rank()}}
before = start()
chorus.all_sum(x, out=x)                     # in place: no copy of the input
report["in_place"] = grown(before)
assert float(x[0]) == g.size() and float(x[n // 2]) == g.size()
before = start()
y = chorus.all_sum(x)
report["out"] = grown(before)
assert float(y[0]) == g.size() ** 2 and float(y[-1]) == g.size() ** 2
del y
before = start()
z = chorus.sum_scatter(x)                    # output: this rank's block only
report["scatter"] = grown(before)
assert z.size == n // g.size() and float(z[0]) == g.size() ** 2
print("MEMORY", json.dumps(report), flush=True)
"""


@pytest.mark.parametrize("backend", ["shm", "ring", "mesh"])
def test_a_large_all_sum_uses_its_output_and_a_bounded_scratch(
    ranks: RankRunner, backend: str
) -> None:
    job = ranks.start(RANK.format(nbytes=NBYTES), 2, backend=backend)
    results = job.wait(timeout=120)
    everything = "\n".join(f"--- rank {r.rank}\n{r.stdout}{r.stderr}" for r in results)
    reports = []
    for result in results:
        assert result.returncode == 0, everything
        lines = [line for line in result.stdout.splitlines() if line.startswith("MEMORY ")]
        assert lines, everything
        reports.append(json.loads(lines[0].split(" ", 1)[1]))
    for report in reports:
        # A fresh output: the peak grows by the output (NBYTES) and the bounded
        # scratch, and the output is what stays.
        grew, kept = report["out"]
        assert grew <= NBYTES + SCRATCH, (backend, report)
        assert kept <= NBYTES + SCRATCH, (backend, report)
        # sum_scatter: its output is 1/N of the input; no working copy.
        grew, kept = report["scatter"]
        assert grew <= NBYTES // 2 + SCRATCH, (backend, report)
        assert kept <= NBYTES // 2 + SCRATCH, (backend, report)
        # In place: neither a copy of the input nor an output.
        grew, kept = report["in_place"]
        assert grew <= SCRATCH, (backend, report)
        assert kept <= SCRATCH, (backend, report)
