"""chorus and its peers side by side: all_sum and all_gather on one machine.

Run ``python benchmarks/collectives.py [--quick] [--out DIR]`` (or
``bash benchmarks/run.sh``). The driver re-executes itself with the Python of
the benchmark's own virtual environment (``build/bench-venv``, created by
``benchmarks/setup_peers.sh`` when missing), then runs, in one invocation:

- chorus shm and chorus ring, started by ``chorus launch --backend B``,
- MLX's ring backend, started by ``mlx.launch`` and, separately, as N plain
  processes given the MLX_RANK / MLX_HOSTFILE environment that mlx.launch sets,
- PyTorch gloo under ``torchrun``,
- Open MPI through mpi4py under ``mpirun``,
- and, as a reference that is no library, a bare TCP ring that moves the
  bytes a ring algorithm moves and computes nothing (``tcp floor``).

Every peer runs once per round and the rounds follow one another (five in
a full run), so each column sees the same mix of the machine's fast and slow
phases; a cell pools the trials of every round.

Each job is one launch of one peer at one N; its ranks run every case (see
``workers/_harness.py``). While a job runs, the driver samples how many CPU
cores the rest of the machine keeps busy (``/proc/stat`` less the job's own
processes); a case measured with more background load than ``--noise`` cores
is run again once and the quieter attempt is kept. Every job has a hard
timeout and only the processes it started are ever signalled.

Results: ``collectives.md`` (tables), ``collectives.json`` (every trial, the
load readings, the versions) and ``busbw.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKERS = HERE / "workers"
DEFAULT_VENV = REPO / "build" / "bench-venv"
MARKER = "BENCH_JSON "

KIB = 1024
MIB = 1024 * KIB
FULL_CASES = [("all_sum", b) for b in (8, KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB)] + [
    ("all_gather", b) for b in (MIB, 16 * MIB)
]
QUICK_CASES = [("all_sum", 8), ("all_sum", MIB), ("all_sum", 16 * MIB)]

CHORUS_PEERS = ("chorus shm", "chorus ring")
# Columns that are not libraries: shown beside the peers, never "the best peer".
# (chorus shm without its flight recorder: the column that shows what recording costs)
# (chorus shm with y = all_sum(x): what a fresh result costs against out=)
REFERENCE_PEERS = ("tcp floor", "chorus shm (no recorder)", "chorus shm (y = all_sum(x))")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# --------------------------------------------------------------------------- processes


def _proc_table() -> dict[int, tuple[int, int]]:
    """Every process as ``pid -> (ppid, utime + stime in clock ticks)``."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2 :].split()
        table[int(entry.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return table


def _descendants(roots: Iterable[int], table: dict[int, tuple[int, int]]) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _busy_ticks() -> tuple[int, int]:
    """Machine-wide ``(task, interrupt)`` busy clock ticks from the first line of /proc/stat.

    Task ticks (user, nice, system) are what processes are charged with; interrupt
    ticks (irq, softirq) are not charged to any process, and on loopback TCP they
    are mostly the job's own traffic, so they are kept apart from the background.
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = values
    return user + nice + system, irq + softirq


def _loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


class LoadSampler:
    """Samples, every ``interval`` s, the cores kept busy by everything but ``roots``' trees.

    Each sample is ``[wall time at the end of the interval, background cores,
    job cores, interrupt cores]``: background = machine-wide task ticks less
    the ticks charged to the job's processes (and to this driver) over the
    interval; interrupt cores (irq + softirq) are recorded apart.
    """

    def __init__(self, roots: Sequence[int], interval: float = 0.25) -> None:
        self.roots = [*roots, os.getpid()]
        self.interval = interval
        self.samples: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _ours(self) -> dict[int, int]:
        table = _proc_table()
        return {pid: table[pid][1] for pid in _descendants(self.roots, table)}

    def _loop(self) -> None:
        busy, irq = _busy_ticks()
        ours = self._ours()
        last = time.time()
        while not self._stop.wait(self.interval):
            busy2, irq2 = _busy_ticks()
            ours2 = self._ours()
            now = time.time()
            job = sum(t - ours.get(pid, 0) for pid, t in ours2.items())
            scale = 1 / CLK_TCK / max(now - last, 1e-6)
            background = max(0.0, (busy2 - busy - job) * scale)
            self.samples.append(
                [now, round(background, 3), round(job * scale, 3), round((irq2 - irq) * scale, 3)]
            )
            busy, irq, ours, last = busy2, irq2, ours2, now

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> list[list[float]]:
        self._stop.set()
        self._thread.join()
        return self.samples

    def background(self, start: float, end: float) -> float | None:
        """Mean background cores over the samples that overlap ``[start, end]``."""
        inside = [s[1] for s in self.samples if s[0] >= start and s[0] - self.interval <= end]
        return round(statistics.fmean(inside), 3) if inside else None


def background_now(seconds: float = 0.5) -> float:
    """Cores kept busy by the rest of the machine over the next ``seconds`` (nothing of ours runs)."""
    busy, _ = _busy_ticks()
    time.sleep(seconds)
    busy2, _ = _busy_ticks()  # minus this driver, which sleeps
    return round((busy2 - busy) / CLK_TCK / seconds, 3)


def wait_quiet(limit: float, threshold: float) -> float:
    """Wait up to ``limit`` s for the background load to drop to ``threshold`` cores."""
    deadline = time.perf_counter() + limit
    reading = background_now()
    while reading > threshold and time.perf_counter() < deadline:
        reading = background_now()
    return reading


def _kill_tree(roots: Sequence[int]) -> None:
    """SIGTERM, then SIGKILL, every process started under ``roots`` (and nothing else)."""
    for sig, pause in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 0.0)):
        pids = _descendants(roots, _proc_table())
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if pids and pause:
            time.sleep(pause)


@dataclass
class Job:
    """One launch: one command (a launcher), or one command per rank (direct spawn)."""

    label: str
    commands: list[tuple[list[str], dict[str, str]]]
    timeout: float
    returncodes: list[int | None] = field(default_factory=list)
    wall_s: float = 0.0
    timed_out: bool = False
    output: str = ""
    sampler: LoadSampler | None = None

    def run(self, sample: bool = True) -> Job:
        """Start every command in its own session, wait, kill what is left at the deadline.

        Leftovers are found by walking /proc from the pids started here, so only
        this job's processes are ever signalled.
        """
        with tempfile.TemporaryDirectory(prefix="chorus-bench-") as tmp:
            logs = [Path(tmp) / f"{i}.log" for i in range(len(self.commands))]
            procs: list[subprocess.Popen[bytes]] = []
            start = time.perf_counter()
            try:
                for i, (argv, env) in enumerate(self.commands):
                    with open(logs[i], "wb") as log:
                        procs.append(
                            subprocess.Popen(
                                argv,
                                env=env,
                                stdout=log,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                start_new_session=True,
                            )
                        )
                if sample:
                    self.sampler = LoadSampler([p.pid for p in procs]).start()
                deadline = start + self.timeout
                failed_at: float | None = None
                while any(p.poll() is None for p in procs):
                    now = time.perf_counter()
                    if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                        failed_at = now  # a direct-spawn rank died: give the rest 3 s
                    if now > deadline or (failed_at is not None and now > failed_at + 3):
                        self.timed_out = now > deadline
                        _kill_tree([p.pid for p in procs])
                        break
                    time.sleep(0.02)
                for p in procs:
                    try:
                        p.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        _kill_tree([p.pid])
                        p.wait()
                self.wall_s = time.perf_counter() - start
            finally:
                if any(p.poll() is None for p in procs):
                    _kill_tree([p.pid for p in procs])
                if self.sampler is not None:
                    self.sampler.stop()
            self.returncodes = [p.returncode for p in procs]
            self.output = "".join(log.read_text(errors="replace") for log in logs)
        return self

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(rc == 0 for rc in self.returncodes)

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.output.splitlines():
            at = line.find(MARKER)
            if at >= 0:
                try:
                    found.append(json.loads(line[at + len(MARKER) :]))
                except json.JSONDecodeError:
                    continue
        return found

    def tail(self, lines: int = 15) -> str:
        kept = [ln for ln in self.output.splitlines() if MARKER not in ln]
        return "\n".join(kept[-lines:])


# --------------------------------------------------------------------------- peers


def _free_ports(count: int) -> int:
    """A base port with ``count`` consecutive ports free on 127.0.0.1 (checked, not reserved)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    msg = f"no {count} consecutive free ports on 127.0.0.1"
    raise RuntimeError(msg)


@dataclass(frozen=True)
class Peer:
    """A column of the table: a library, a backend and the way its ranks start."""

    name: str
    launcher: str
    worker: str

    def commands(
        self, n: int, venv: Path, env: dict[str, str], tmp: Path
    ) -> list[tuple[list[str], dict[str, str]]]:
        """The command lines (one per launcher, or one per rank) and their environments."""
        py = str(venv / "bin" / "python")
        worker = str(WORKERS / self.worker)
        if self.name.startswith("chorus"):
            backend = self.name.split()[1]
            chorus = str(venv / "bin" / "chorus")
            argv = [chorus, "launch", "-n", str(n), "--backend", backend, "--no-prefix"]
            if self.name.endswith("(no recorder)"):
                argv += ["--env", "CHORUS_FLIGHT_RECORDS=0"]  # what the flight record costs
            if self.name.endswith("(y = all_sum(x))"):
                argv += ["--env", "CHORUS_BENCH_FRESH_RESULT=1"]  # the call most users write
            return [([*argv, worker], env)]
        if self.name == "mlx ring (mlx.launch)":
            argv = [
                str(venv / "bin" / "mlx.launch"),
                "-n",
                str(n),
                "--backend",
                "ring",
                "--starting-port",
                str(_free_ports(n)),
                "--python",
                py,
                worker,
            ]
            return [(argv, env)]
        if self.name == "mlx ring (direct)":
            base = _free_ports(n)
            hostfile = tmp / f"mlx-hosts-{base}.json"
            hostfile.write_text(json.dumps([[f"127.0.0.1:{base + r}"] for r in range(n)]))
            return [
                ([py, worker], {**env, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)})
                for r in range(n)
            ]
        if self.name == "torch gloo":
            argv = [
                str(venv / "bin" / "torchrun"),
                "--standalone",
                "--nproc-per-node",
                str(n),
                worker,
            ]
            return [(argv, env)]
        if self.name == "openmpi":
            argv = [
                "mpirun",
                "-n",
                str(n),
                "--allow-run-as-root",
                "--oversubscribe",
                "--bind-to",
                "none",
            ]
            if n > NCPU:  # more ranks than cores: let waiting ranks give the core away
                argv += ["--mca", "mpi_yield_when_idle", "1"]
            return [([*argv, py, worker], env)]
        if self.name == "tcp floor":
            base = _free_ports(n)
            floor = {"FLOOR_SIZE": str(n), "FLOOR_PORT": str(base)}
            return [([py, worker], {**env, **floor, "FLOOR_RANK": str(r)}) for r in range(n)]
        msg = f"unknown peer {self.name!r}"
        raise ValueError(msg)


PEERS = [
    Peer("chorus shm", "chorus launch --backend shm", "chorus_worker.py"),
    Peer("chorus ring", "chorus launch --backend ring", "chorus_worker.py"),
    Peer(
        "chorus shm (no recorder)",
        "chorus launch --backend shm --env CHORUS_FLIGHT_RECORDS=0 (reference)",
        "chorus_worker.py",
    ),
    Peer(
        "chorus shm (y = all_sum(x))",
        "chorus launch --backend shm, a fresh result per call (reference)",
        "chorus_worker.py",
    ),
    Peer("mlx ring (mlx.launch)", "mlx.launch --backend ring", "mlx_worker.py"),
    Peer("mlx ring (direct)", "N processes with MLX_RANK/MLX_HOSTFILE", "mlx_worker.py"),
    Peer("torch gloo", "torchrun --standalone", "torch_worker.py"),
    Peer("openmpi", "mpirun", "mpi_worker.py"),
    Peer("tcp floor", "N processes in a bare TCP ring (reference)", "tcp_floor_worker.py"),
]


# --------------------------------------------------------------------------- measuring


def _base_env() -> dict[str, str]:
    """This environment without variables that would steer a launcher or a rank."""
    drop = ("CHORUS_", "MLX_", "OMPI_", "PMI_", "PMIX_", "SLURM_", "MASTER_", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' busbw / algbw: 2(n-1)/n for all-reduce, (n-1)/n for all-gather."""
    return 2 * (n - 1) / n if op == "all_sum" else (n - 1) / n


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """Median time per op over trials, algbw and busbw in GB/s (1e9 bytes/s)."""
    n, op, nbytes = record["n"], record["op"], record["bytes"]
    median_us = statistics.median(record["trials_us"])
    moved = nbytes * n if op == "all_gather" else nbytes  # all_gather: the output bytes
    algbw = moved / (median_us * 1e-6) / 1e9
    return {
        "median_us": median_us,
        "algbw_gbs": algbw,
        "busbw_gbs": algbw * bus_factor(op, n),
    }


def merge_rounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (peer, n, op, bytes): the trials of every round pooled.

    Rounds interleave the peers in time, so a slow phase of a shared machine
    (its memory bandwidth moves from minute to minute) lands on every column
    instead of on whichever peer happened to run then. The cell is the median
    over all pooled trials; each round's own median stays in ``rounds``.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["peer"], rec["n"], rec["op"], rec["bytes"]), []).append(rec)
    merged = []
    for recs in groups.values():
        out = dict(recs[0])
        out["trials_us"] = [t for r in recs for t in r["trials_us"]]
        out["check"] = next(
            (r["check"] for r in recs if r["check"] not in ("ok", "reference")), recs[0]["check"]
        )
        out["rounds"] = [
            {
                "round": r.get("round", 0),
                "median_us": r["median_us"],
                "background_cores": r.get("background_cores"),
                "attempt": r.get("attempt"),
            }
            for r in recs
        ]
        out["noisy"] = 2 * sum(bool(r.get("noisy")) for r in recs) > len(recs)
        for key in ("per_rank_us", "round"):
            out.pop(key, None)
        out.update(summarise(out))
        merged.append(out)
    return merged


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def keep_quietest(best: dict[tuple[str, int], dict[str, Any]], rec: dict[str, Any]) -> None:
    """Keep rec as its case's result unless an earlier attempt ran with less background load."""
    key = (rec["op"], rec["bytes"])
    old = best.get(key)
    if old is None or (rec["background_cores"] or 0) < (old["background_cores"] or 0):
        if old is not None:
            rec["replaced_attempt"] = old["attempt"]
        best[key] = rec


def cases_to_retry(
    cases: list[tuple[str, int]],
    best: dict[tuple[str, int], dict[str, Any]],
    timed_out: bool,
    noise: float,
) -> list[tuple[str, int]]:
    """Noisy cases, and missing ones unless the job ran out of time (a peer that
    hangs or crawls would only burn another timeout)."""
    return [
        c
        for c in cases
        if (tuple(c) not in best and not timed_out)
        or (tuple(c) in best and (best[tuple(c)]["background_cores"] or 0) > noise)
    ]


def measure_peer(
    peer: Peer, n: int, cases: list[tuple[str, int]], args: argparse.Namespace, tmp: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run one peer at one N; retry noisy or missing cases once. Returns (jobs, cases)."""
    jobs: list[dict[str, Any]] = []
    best: dict[tuple[str, int], dict[str, Any]] = {}
    todo = list(cases)
    for attempt in (1, 2):
        if not todo:
            break
        config = {"cases": todo, "trials": args.trials, "target_s": args.target, "warmup": 3}
        env = {**_base_env(), "BENCH_CONFIG": json.dumps(config)}
        before = wait_quiet(args.quiet_wait * attempt, args.noise)
        job = Job(peer.name, peer.commands(n, args.venv, env, tmp), args.timeout).run()
        assert job.sampler is not None
        records = job.records()
        status = "ok" if job.ok else ("TIMEOUT" if job.timed_out else f"rc={job.returncodes}")
        log(
            f"  {peer.name:24s} n={n} attempt {attempt}: {len(records)}/{len(todo)} cases, "
            f"{job.wall_s:.1f} s, {status}, background before {before:.2f} cores"
        )
        if not job.ok:
            log("    " + job.tail().replace("\n", "\n    "))
        jobs.append(
            {
                "peer": peer.name,
                "n": n,
                "attempt": attempt,
                "cases": todo,
                "argv": [c[0] for c in job.commands],
                "returncodes": job.returncodes,
                "timed_out": job.timed_out,
                "wall_s": job.wall_s,
                "background_before_cores": before,
                "loadavg_after": _loadavg(),
                "load_samples": job.sampler.samples,
                "output_tail": job.tail(40) if not job.ok else "",
            }
        )
        for rec in records:
            rec.update(summarise(rec))
            rec["peer"] = peer.name
            rec["attempt"] = attempt
            rec["background_cores"] = job.sampler.background(rec["t_start"], rec["t_end"])
            rec["background_before_cores"] = before
            keep_quietest(best, rec)
        todo = cases_to_retry(cases, best, job.timed_out, args.noise) if attempt == 1 else []
    for rec in best.values():
        rec["noisy"] = (rec["background_cores"] or 0) > args.noise
    return jobs, [best[k] for k in sorted(best, key=lambda k: (k[0] != "all_sum", k[1]))]


def _good_walls(runs: list[dict[str, Any]]) -> list[float]:
    """Wall times of the launch runs that ended in time with every rank exiting 0."""
    return [
        r["wall_s"]
        for r in runs
        if not r["timed_out"] and r["returncodes"] and all(rc == 0 for rc in r["returncodes"])
    ]


def measure_launch(
    peer: Peer, n: int, args: argparse.Namespace, tmp: Path, runs_wanted: int | None = None
) -> dict[str, Any]:
    """Launch-to-exit of the trivial rank (init, one 8-byte all_sum, exit), median of runs."""
    runs = []
    for _ in range(runs_wanted or args.launch_runs):
        env = {**_base_env(), "BENCH_CONFIG": '{"trivial": true}'}
        before = background_now(0.3)
        job = Job(peer.name, peer.commands(n, args.venv, env, tmp), args.launch_timeout)
        job.run()
        assert job.sampler is not None
        bg = job.sampler.samples
        runs.append(
            {
                "wall_s": job.wall_s,
                "returncodes": job.returncodes,
                "timed_out": job.timed_out,
                "background_before_cores": before,
                "background_cores": round(statistics.fmean(s[1] for s in bg), 3) if bg else None,
                "output_tail": "" if job.ok else job.tail(),
            }
        )
    good = _good_walls(runs)
    median = statistics.median(good) if good else None
    shown = f"{median:.2f} s" if median is not None else "FAILED"
    log(f"  launch {peer.name:24s} n={n}: {shown} ({len(good)}/{len(runs)} ok)")
    if not good:
        log("    " + (runs[-1]["output_tail"] or "").replace("\n", "\n    "))
    return {"peer": peer.name, "launcher": peer.launcher, "n": n, "median_s": median, "runs": runs}


def merge_launches(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """One launcher's runs of every round, with the median over all good runs."""
    out = dict(per_round[0])
    out["runs"] = [run for got in per_round for run in got["runs"]]
    good = _good_walls(out["runs"])
    out["median_s"] = statistics.median(good) if good else None
    return out


# --------------------------------------------------------------------------- reporting


def _run_text(argv: list[str], **kw: Any) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return (out.stdout or out.stderr).strip()


def versions(venv: Path) -> dict[str, Any]:
    """The exact versions behind the numbers."""
    probe = (
        "import json, sys, platform, numpy, chorus, torch, mlx.core, mpi4py; "
        "from mpi4py import MPI; "
        "print(json.dumps({'python': platform.python_version(), 'numpy': numpy.__version__, "
        "'chorus': chorus.__version__, 'torch': torch.__version__, "
        "'mlx': mlx.core.__version__, 'mpi4py': mpi4py.__version__, "
        "'mpi_library': MPI.Get_library_version().strip().splitlines()[0]}))"
    )
    found: dict[str, Any] = {}
    try:
        found.update(json.loads(_run_text([str(venv / "bin" / "python"), "-c", probe])))
    except json.JSONDecodeError as e:
        found["probe_error"] = str(e)
    sha = _run_text(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    # The results folder is this run's output: only code changes make it dirty.
    dirty = _run_text(
        [
            "git",
            "-C",
            str(REPO),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!benchmarks/results",
        ]
    )
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    found.update(
        {
            "chorus_git_sha": sha,
            "chorus_git_dirty": bool(dirty),
            "mpirun": _run_text(["mpirun", "--version"]).splitlines()[0],
            "kernel": platform.release(),
            "os": platform.platform(),
            "cpu_model": cpu,
            "cpu_count": NCPU,
        }
    )
    return found


def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def _us(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _cell(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "—"
    mark = "" if rec["check"] in ("ok", "reference") else " ✗"
    mark += "~" if rec.get("noisy") else ""
    return f"{_us(rec['median_us'])} us · {rec['busbw_gbs']:.2f}{mark}"


def table(n: int, peers: list[str], cases: list[dict[str, Any]], ops: list[tuple[str, int]]) -> str:
    """One markdown table for one N."""
    by = {(c["peer"], c["op"], c["bytes"]): c for c in cases if c["n"] == n}
    with_floor = "tcp floor" in peers and "chorus ring" in peers
    with_recorder = "chorus shm (no recorder)" in peers and "chorus shm" in peers
    with_fresh = "chorus shm (y = all_sum(x))" in peers and "chorus shm" in peers
    head = ["op", "bytes/rank", *peers, "chorus / best peer"]
    if with_floor:
        head.append("chorus ring / tcp floor")
    if with_recorder:
        head.append("shm with / without flight recorder")
    if with_fresh:
        head.append("shm y = op(x) / out=")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op, nbytes in ops:
        row = [op, _size(nbytes)] + [_cell(by.get((p, op, nbytes))) for p in peers]
        mine = [by[(p, op, nbytes)] for p in peers if p in CHORUS_PEERS and (p, op, nbytes) in by]
        theirs = [
            by[(p, op, nbytes)]
            for p in peers
            if p not in CHORUS_PEERS and p not in REFERENCE_PEERS and (p, op, nbytes) in by
        ]
        if mine and theirs:
            a = min(mine, key=lambda r: r["median_us"])
            b = min(theirs, key=lambda r: r["median_us"])
            ratio = a["median_us"] / b["median_us"]
            row.append(f"{ratio:.2f} ({a['peer'].split()[1]} / {b['peer']})")
        else:
            row.append("—")
        for wanted, mine_peer, ref_peer in (
            (with_floor, "chorus ring", "tcp floor"),
            (with_recorder, "chorus shm", "chorus shm (no recorder)"),
            (with_fresh, "chorus shm (y = all_sum(x))", "chorus shm"),
        ):
            if wanted:
                a, b = by.get((mine_peer, op, nbytes)), by.get((ref_peer, op, nbytes))
                row.append(f"{a['median_us'] / b['median_us']:.2f}" if a and b else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def launch_table(launches: list[dict[str, Any]], ns: list[int]) -> str:
    head = ["peer", "launcher", *[f"N={n} (s)" for n in ns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer in PEERS:
        cells = []
        for n in ns:
            hit = [r for r in launches if r["peer"] == peer.name and r["n"] == n]
            if not hit:
                cells.append("—")
            else:
                med = hit[0]["median_s"]
                cells.append("failed" if med is None else f"{med:.2f}")
        if any(c != "—" for c in cells):
            lines.append(f"| {peer.name} | {peer.launcher} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: dict[str, Any], ops: list[tuple[str, int]]) -> str:
    meta = result["meta"]
    v = meta["versions"]
    peers = list(meta["peers"])
    setup = (
        f"{meta['started']}; {v.get('cpu_model')} ({v.get('cpu_count')} cores), "
        f"Linux {v.get('kernel')}; chorus {v.get('chorus_git_sha', '')[:12]}"
        f"{' (dirty)' if v.get('chorus_git_dirty') else ''}, torch {v.get('torch')}, "
        f"mlx {v.get('mlx')}, mpi4py {v.get('mpi4py')} on {v.get('mpirun')}; "
        f"python {v.get('python')}, numpy {v.get('numpy')}."
    )
    how = (
        f"Mode: {'quick' if meta['quick'] else 'full'}; {meta.get('rounds', 1)} round(s) "
        f"(every peer once per round, rounds one after the other, so a slow phase of the "
        f"machine falls on every column) of {meta['trials']} trials of "
        f"~{meta['target_s']} s each per case. Each cell: median over the pooled trials of "
        "the time per op (slowest rank per trial), then busbw in GB/s (1e9 B/s). `~`: measured "
        f"with more than {meta['noise_cores']} background cores busy even after a retry; "
        "`✗`: the result did not match numpy. Last column: chorus's best backend time / "
        "the best peer's time (below 1: chorus is faster). `tcp floor` is not a library: "
        "N processes in a bare TCP ring that send and receive the bytes a ring algorithm "
        "moves per rank and compute nothing (`workers/tcp_floor_worker.py`); "
        "`chorus ring / tcp floor` is how close the TCP backend is to what loopback TCP "
        "itself costs here. The floor sends its bytes in one go, not in the N-1 dependent "
        "steps of a ring, so below 1 MiB that ratio counts hops more than bandwidth. "
        "`chorus shm (no recorder)` is chorus shm with `CHORUS_FLIGHT_RECORDS=0`: "
        "`shm with / without flight recorder` is what recording every call costs."
    )
    launch = (
        "Trivial rank (init, one 8-byte all_sum, exit); median wall seconds from "
        "starting the launcher to its exit."
    )
    out = ["# chorus collectives benchmark", "", setup, "", how]
    for n in meta["ns"]:
        out += ["", f"## N = {n}", "", table(n, peers, result["cases"], ops)]
    out += ["", "## Launch to exit", "", launch, "", launch_table(result["launch"], meta["ns"])]
    failed = [
        j for j in result["jobs"] if j["timed_out"] or any(rc != 0 for rc in j["returncodes"])
    ]
    if failed:
        out += ["", "## Failed jobs", ""]
        for j in failed:
            why = "timeout" if j["timed_out"] else f"exit {j['returncodes']}"
            last = (j["output_tail"] or "").strip().splitlines()[-1:] or [""]
            out.append(f"- {j['peer']} N={j['n']} attempt {j['attempt']}: {why}: `{last[0]}`")
    return "\n".join(out) + "\n"


def plot(result: dict[str, Any], path: Path) -> str | None:
    """all_sum busbw against message size, one line per peer, one subplot per N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no plot: {e}"
    ns = result["meta"]["ns"]
    fig, axes = plt.subplots(1, len(ns), figsize=(6.5 * len(ns), 4.5), squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        for peer in result["meta"]["peers"]:
            points = sorted(
                (c["bytes"], c["busbw_gbs"])
                for c in result["cases"]
                if c["n"] == n and c["peer"] == peer and c["op"] == "all_sum"
            )
            if points:
                if peer in REFERENCE_PEERS:
                    style, kw = ":", {"color": "black", "linewidth": 1.5}
                else:
                    style, kw = ("-o" if peer in CHORUS_PEERS else "--s"), {"markersize": 4}
                ax.plot(*zip(*points, strict=True), style, label=peer, **kw)
        sizes = sorted({c["bytes"] for c in result["cases"] if c["op"] == "all_sum"})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [_size(b) for b in sizes], rotation=30, fontsize=8)
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("bytes per rank")
        ax.set_ylabel("all_sum busbw (GB/s)")
        ax.set_title(f"all_sum float32, N = {n}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def ensure_venv(args: argparse.Namespace, argv: list[str], script: str, name: str) -> None:
    """Create the benchmark venv when missing and re-run script with its Python."""
    py = args.venv / "bin" / "python"
    if Path(sys.prefix).resolve() == args.venv.resolve():
        return
    if args.setup or not py.exists():
        log(f"{name}: setting up {args.venv} (benchmarks/setup_peers.sh)")
        env = {**os.environ, "BENCH_VENV": str(args.venv)}
        subprocess.run(["bash", str(HERE / "setup_peers.sh")], check=True, env=env)
    argv = [a for a in argv if a != "--setup"]
    os.execv(str(py), [str(py), str(Path(script).resolve()), *argv])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N=2 only, 8 B / 1 MiB / 16 MiB all_sum, 2 short trials",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the peers' venv")
    parser.add_argument("--setup", action="store_true", help="(re)run setup_peers.sh first")
    parser.add_argument("-n", "--ns", type=int, nargs="+", help="rank counts (default 2 4)")
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=[p.name for p in PEERS],
        metavar="PEER",
        help="subset of: " + ", ".join(p.name for p in PEERS),
    )
    parser.add_argument("--trials", type=int, help="timed trials per case (default 5)")
    parser.add_argument("--target", type=float, help="seconds per trial (default 0.2)")
    parser.add_argument("--timeout", type=float, help="hard limit per job in s (default 240)")
    parser.add_argument("--launch-runs", type=int, help="runs per launcher (default 5)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="sweeps over every peer per N, interleaved in time; trials pooled (default 5)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.3,
        help="background cores above which a case is retried (default 0.3)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild collectives.md and busbw.png from the JSON in --out",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before a job, wait up to this many s (twice as long before a "
        "retry) for the background load to fall under --noise (default 5)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.ns = args.ns or ([2] if quick else [2, 4])
    args.target = args.target or (0.05 if quick else 0.2)
    args.timeout = args.timeout or (90 if quick else 240)
    args.rounds = args.rounds or (1 if quick else 5)
    args.trials = args.trials or (2 if quick else 3)
    args.launch_runs = args.launch_runs or (2 if quick else 5)
    args.launch_timeout = 60.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ensure_venv(args, argv, __file__, "collectives")
    if args.report_only:
        result = json.loads((args.out / "collectives.json").read_text())
        text = report(result, [(op, nbytes) for op, nbytes in result["meta"]["cases"]])
        (args.out / "collectives.md").write_text(text)
        problem = plot(result, args.out / "busbw.png")
        print(text)
        if problem:
            log(f"collectives: {problem}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ops = QUICK_CASES if args.quick else FULL_CASES
    peers = [p for p in PEERS if args.peers is None or p.name in args.peers]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.perf_counter()
    log(
        f"collectives: {len(peers)} peers x N={args.ns} x {len(ops)} cases "
        f"({'quick' if args.quick else 'full'}), results in {args.out}"
    )
    result: dict[str, Any] = {
        "meta": {
            "started": started,
            "argv": argv,
            "quick": args.quick,
            "ns": args.ns,
            "peers": [p.name for p in peers],
            "launchers": {p.name: p.launcher for p in peers},
            "trials": args.trials,
            "rounds": args.rounds,
            "target_s": args.target,
            "noise_cores": args.noise,
            "timeout_s": args.timeout,
            "cases": ops,
            "versions": versions(args.venv),
            "loadavg_start": _loadavg(),
            "units": "time per op in us (max over ranks per trial); bandwidths in GB/s = 1e9 B/s",
        },
        "jobs": [],
        "cases": [],
        "launch": [],
        "errors": [],
    }
    per_round_launch = max(1, -(-args.launch_runs // args.rounds))
    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as tmp:
        for n in args.ns:
            measured: list[dict[str, Any]] = []
            launches: dict[str, list[dict[str, Any]]] = {}
            for rnd in range(args.rounds):
                log(f"N = {n}, round {rnd + 1}/{args.rounds}")
                for peer in peers:
                    try:
                        jobs, cases = measure_peer(peer, n, ops, args, Path(tmp))
                    except (OSError, RuntimeError) as e:  # a launcher missing, no free ports
                        log(f"  {peer.name} n={n}: could not run: {e}")
                        result["errors"].append(f"{peer.name} n={n}: {e}")
                        continue
                    for job in jobs:
                        job["round"] = rnd
                    for case in cases:
                        case["round"] = rnd
                    result["jobs"] += jobs
                    measured += cases
                for peer in peers:
                    if peer.name in REFERENCE_PEERS:
                        continue  # not a launcher
                    try:
                        got = measure_launch(peer, n, args, Path(tmp), per_round_launch)
                    except (OSError, RuntimeError) as e:
                        log(f"  launch {peer.name} n={n}: could not run: {e}")
                        result["errors"].append(f"launch {peer.name} n={n}: {e}")
                        continue
                    launches.setdefault(peer.name, []).append(got)
            result["cases"] += merge_rounds(measured)
            result["launch"] += [merge_launches(got) for got in launches.values()]
    result["meta"]["loadavg_end"] = _loadavg()
    result["meta"]["duration_s"] = round(time.perf_counter() - t0, 1)
    text = report(result, ops)
    (args.out / "collectives.md").write_text(text)
    (args.out / "collectives.json").write_text(json.dumps(result, indent=1) + "\n")
    problem = plot(result, args.out / "busbw.png")
    print(text)
    log(
        f"collectives: wrote {args.out}/collectives.md, collectives.json"
        f"{'' if problem else ', busbw.png'} in {result['meta']['duration_s']} s"
    )
    if problem:
        log(f"collectives: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
