"""Peak and retained memory of one large all_sum, per backend (issue 13).

Starts N ranks (default 2) per backend with ``chorus launch`` and has each
rank make one all_sum of ``--gib`` GiB of float32, then report its peak RSS
(``ru_maxrss``) and its RSS after the call returned, both as multiples of the
input. The floor is 2.0: the input and the output. Run it alone: it needs
about 3 x N x GiB of memory.

    python benchmarks/memory.py [--gib 1] [-n 2] [--backends shm,ring,mesh]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

RANK = """
import json, resource, numpy as np, chorus
g = chorus.init(strict=True)
n = int({nbytes}) // 4
x = np.ones(n, np.float32)
x[:] = 1.0                                     # touch every page of the input
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
y = chorus.all_sum(x)
assert float(y[0]) == g.size() and float(y[-1]) == g.size()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
after = rss()
print("MEMORY", json.dumps({{"rank": g.rank(), "peak": peak, "before": before,
                            "after": after, "base_peak": base}}), flush=True)
"""


def measure(backend: str, ranks: int, nbytes: int) -> list[dict[str, int]]:
    code = RANK.format(nbytes=nbytes)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "chorus",
            "launch",
            "-n",
            str(ranks),
            "--backend",
            backend,
            "--no-prefix",
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if run.returncode != 0:
        msg = f"{backend}: exit {run.returncode}\n{run.stderr[-2000:]}"
        raise SystemExit(msg)
    return [
        json.loads(line.split(" ", 1)[1])
        for line in run.stdout.splitlines()
        if line.startswith("MEMORY ")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument("--backends", default="shm,ring,mesh")
    args = parser.parse_args()
    nbytes = int(args.gib * (1 << 30))
    print(
        f"all_sum of {args.gib:g} GiB float32, N={args.n}; multiples of the input "
        "(input + output = 2.0)"
    )
    print(f"{'backend':8} {'peak RSS':>9} {'RSS after':>10}")
    for backend in args.backends.split(","):
        reports = measure(backend, args.n, nbytes)
        peak = max(r["peak"] for r in reports) / nbytes
        after = max(r["after"] for r in reports) / nbytes
        print(f"{backend:8} {peak:9.2f} {after:10.2f}")


if __name__ == "__main__":
    main()
