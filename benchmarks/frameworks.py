"""Start-up of torch.distributed and JAX in chorus ranks against their own launchers, in one run.

    python benchmarks/frameworks.py [-n 4] [--repeat 3] [--out benchmarks/results]

Each job runs a script that imports the framework, starts its distributed
runtime with no arguments (``dist.init_process_group("gloo")``,
``jax.distributed.initialize()``), does one all-reduce and exits. Measured
from starting the launcher:

- ready: until the last rank has finished its first all-reduce (each rank
  prints the wall clock then);
- job: until the launcher exited.

Peers: ``torchrun --standalone --nproc-per-node N`` for torch, and
``mpirun -n N`` for JAX (which detects Open MPI by itself). Medians over
``--repeat`` runs, interleaved. Needs torch, jax and Open MPI in this Python's
environment (the test environment has them). Results go to ``frameworks.json``
and ``frameworks.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCH = """\
import time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
print(f"READY {time.time()}", flush=True)  # one write: lines from ranks may share a pipe
dist.barrier()
dist.destroy_process_group()
import os
os._exit(0)  # torch 2.13's teardown can abort at exit (under torchrun too)
"""

JAX = """\
import time
import jax, jax.numpy as jnp
jax.distributed.initialize()
x = jax.pmap(lambda v: jax.lax.psum(v, "i"), axis_name="i")(jnp.ones(jax.local_device_count()))
x.block_until_ready()
print(f"READY {time.time()}", flush=True)  # one write: lines from ranks may share a pipe
jax.distributed.shutdown()
"""


def _bin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        msg = f"{name} is not installed"
        raise SystemExit(msg)
    return found


def _run(command: list[str], ranks: int) -> tuple[float, float]:
    """(ready, job) seconds of one job."""
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    ended = time.time()
    if done.returncode != 0:
        msg = f"{command} failed:\n{done.stdout}\n{done.stderr}"
        raise SystemExit(msg)
    # Ranks' lines may interleave (mpirun does not keep them whole): find every stamp.
    ready = [float(stamp) for stamp in re.findall(r"READY (\d+\.\d+)", done.stdout)]
    if len(ready) != ranks:
        msg = f"{command}: {len(ready)} of {ranks} ranks ready:\n{done.stdout}"
        raise SystemExit(msg)
    return max(ready) - started, ended - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=4, help="ranks (default 4)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    n = args.n
    work = Path(tempfile.mkdtemp(prefix="chorus-frameworks-"))
    (work / "torch_ready.py").write_text(TORCH)
    (work / "jax_ready.py").write_text(JAX)
    chorus = [sys.executable, "-m", "chorus", "launch", "-n", str(n)]
    mpirun = [_bin("mpirun"), "-n", str(n), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        mpirun.append("--allow-run-as-root")
    jobs = {
        ("torch", "chorus launch"): [*chorus, str(work / "torch_ready.py")],
        ("torch", "torchrun"): [
            _bin("torchrun"),
            "--standalone",
            f"--nproc-per-node={n}",
            str(work / "torch_ready.py"),
        ],
        ("jax", "chorus launch"): [*chorus, str(work / "jax_ready.py")],
        ("jax", "mpirun"): [*mpirun, sys.executable, str(work / "jax_ready.py")],
    }
    times: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in jobs}
    for round_ in range(args.repeat):
        for key, command in jobs.items():
            times[key].append(_run(command, n))
            print(
                f"round {round_ + 1}/{args.repeat} {key[0]} {key[1]}: "
                f"ready {times[key][-1][0]:.2f} s",
                file=sys.stderr,
            )
    medians = {
        key: (statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs))
        for key, runs in times.items()
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    record = {
        "date": stamp,
        "ranks": n,
        "repeat": args.repeat,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "results": [
            {"framework": f, "launcher": l, "ready_s": r, "job_s": j}
            for (f, l), (r, j) in medians.items()
        ],
    }
    (out / "frameworks.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        (
            f"# Frameworks' start-up in chorus ranks ({stamp}, {n} ranks, median of {args.repeat},"
            f" {record['machine']})"
        ),
        "",
        "| framework | launcher | ready (s) | job (s) | chorus / peer (ready) |",
        "|---|---|---|---|---|",
    ]
    for framework, peer in (("torch", "torchrun"), ("jax", "mpirun")):
        ours, theirs = medians[(framework, "chorus launch")], medians[(framework, peer)]
        lines.append(
            f"| {framework} | chorus launch | {ours[0]:.2f} | {ours[1]:.2f} |"
            f" {ours[0] / theirs[0]:.2f} |"
        )
        lines.append(f"| {framework} | {peer} | {theirs[0]:.2f} | {theirs[1]:.2f} | |")
    (out / "frameworks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
