"""The chorus kernel against ipyparallel, in one run: start-up, empty-cell round trip,
output throughput.

    python benchmarks/kernel.py [--ranks 4] [--repeat 3] [--cells 20] [--out benchmarks/results]

- start-up: from starting the kernel (or ``ipp.Cluster(n=N)``) until a cell has
  run on every rank (``pass``);
- round trip of an empty cell on every rank: chorus's ``execute("pass")``
  against ipyparallel's ``rc[:].execute("pass", block=True)``;
- output throughput: 10,000 lines per rank printed by one cell (median of
  5 runs), all of them received (counted), per peer. Both run the same cell,
  ``print(me, i)`` with ``me`` the process id (set in an untimed cell), so
  every rank's lines differ: the chorus kernel cannot collapse them and each
  peer makes the same ``write`` calls.

Medians over ``--repeat`` start-ups and ``--cells`` round trips. Results go to
``kernel.json`` and ``kernel.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LINES = 10_000
SET_UP_OUTPUT = "import os; me = os.getpid()"
PRINT_LINES = f"for i in range({LINES}):\n    print(me, i)"
OUTPUT_RUNS = 5  # the output cell's time is the median of this many


def _chorus_kernel(ranks: int) -> tuple[Any, Any]:
    from chorus.kernel.kernelspec import install
    from jupyter_client.manager import KernelManager

    prefix = tempfile.mkdtemp(prefix="chorus-bench-")
    install(name="chorus-bench", ranks=ranks, backend="shm", prefix=prefix)
    os.environ["JUPYTER_PATH"] = str(Path(prefix) / "share" / "jupyter")
    manager = KernelManager(kernel_name="chorus-bench")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=120)
    return manager, client


def _run_quiet(client: Any, code: str) -> int:
    """Execute ``code``; return how many stdout lines came back."""
    lines = 0

    def count(msg: dict[str, Any]) -> None:
        nonlocal lines
        if msg["header"]["msg_type"] == "stream":
            lines += msg["content"]["text"].count("\n")

    reply = client.execute_interactive(code, timeout=300, output_hook=count)
    if reply["content"]["status"] != "ok":
        msg = f"cell failed: {reply['content']}"
        raise RuntimeError(msg)
    return lines


def _time_output(run: Callable[[], int]) -> tuple[list[float], int]:
    """Seconds of each of OUTPUT_RUNS runs of the output cell, and the lines the last one got."""
    seconds, got = [], 0
    for _ in range(OUTPUT_RUNS):
        t0 = time.perf_counter()
        got = run()
        seconds.append(time.perf_counter() - t0)
    return seconds, got


def bench_chorus(ranks: int, repeat: int, cells: int) -> dict[str, Any]:
    startups = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        manager, client = _chorus_kernel(ranks)
        _run_quiet(client, "pass")
        startups.append(time.perf_counter() - t0)
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    manager, client = _chorus_kernel(ranks)
    try:
        _run_quiet(client, "pass")
        trips = []
        for _ in range(cells):
            t0 = time.perf_counter()
            _run_quiet(client, "pass")
            trips.append(time.perf_counter() - t0)
        _run_quiet(client, SET_UP_OUTPUT)
        output_s, got = _time_output(lambda: _run_quiet(client, PRINT_LINES))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    return {
        "startup_s": startups,
        "roundtrip_s": trips,
        "output_s": output_s,
        "output_lines": got,
    }


def bench_ipyparallel(ranks: int, repeat: int, cells: int) -> dict[str, Any]:
    import ipyparallel as ipp

    startups = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cluster = ipp.Cluster(n=ranks, log_level=40)
        client = cluster.start_and_connect_sync()
        client[:].execute("pass", block=True)
        startups.append(time.perf_counter() - t0)
        cluster.stop_cluster_sync()
    cluster = ipp.Cluster(n=ranks, log_level=40)
    client = cluster.start_and_connect_sync()
    try:
        view = client[:]
        view.execute("pass", block=True)
        trips = []
        for _ in range(cells):
            t0 = time.perf_counter()
            view.execute("pass", block=True)
            trips.append(time.perf_counter() - t0)
        view.execute(SET_UP_OUTPUT, block=True)

        def print_lines() -> int:
            result = view.execute(PRINT_LINES, block=True)
            return sum(out.count("\n") for out in result.stdout)

        output_s, got = _time_output(print_lines)
    finally:
        cluster.stop_cluster_sync()
    return {"startup_s": startups, "roundtrip_s": trips, "output_s": output_s, "output_lines": got}


def table(ranks: int, chorus: dict[str, Any], ipp: dict[str, Any]) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows = [
        (
            "start-up to first cell on all ranks (s)",
            med(chorus["startup_s"]),
            med(ipp["startup_s"]),
        ),
        (
            "empty cell round trip (ms)",
            1e3 * med(chorus["roundtrip_s"]),
            1e3 * med(ipp["roundtrip_s"]),
        ),
        (f"{LINES} lines per rank (s)", med(chorus["output_s"]), med(ipp["output_s"])),
    ]
    out = [
        f"ranks: {ranks}",
        "",
        "| measure | chorus kernel | ipyparallel | chorus / ipyparallel |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, ours, theirs in rows:
        out.append(f"| {name} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
    out.append(
        f"| lines received (expected {ranks * LINES}) | {chorus['output_lines']} | "
        f"{ipp['output_lines']} | |"
    )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    print(f"chorus kernel, {args.ranks} ranks ...", flush=True)
    chorus = bench_chorus(args.ranks, args.repeat, args.cells)
    print(f"ipyparallel, {args.ranks} engines ...", flush=True)
    ipp = bench_ipyparallel(args.ranks, args.repeat, args.cells)
    text = table(args.ranks, chorus, ipp)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel.md").write_text(text)
    record = {
        "ranks": args.ranks,
        "chorus": chorus,
        "ipyparallel": ipp,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "loadavg_after": os.getloadavg(),
    }
    (out / "kernel.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
