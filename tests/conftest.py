"""Shared fixtures: start N real rank processes without the launcher.

Core and backend tests set the CHORUS_* environment themselves, so they do
not depend on ``chorus launch`` (which has tests of its own).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest_plugins = ["tests.hosts.fixtures"]
BACKENDS = ("shm", "ring")


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (tests only; the launcher passes bound fds)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class RankResult:
    rank: int
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Job:
    """N rank processes of one test job."""

    procs: list[subprocess.Popen[str]]
    hosts: list[list[str]]
    env: dict[str, str]
    results: list[RankResult] = field(default_factory=list)

    def wait(self, timeout: float = 60.0) -> list[RankResult]:
        deadline = time.monotonic() + timeout
        results = []
        for rank, proc in enumerate(self.procs):
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                out, err = proc.communicate()
                pytest.fail(
                    f"rank {rank} did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err}"
                )
            results.append(RankResult(rank, proc.returncode, out, err))
        self.results = results
        return results

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()

    def signal_all(self, signum: int = signal.SIGINT) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)


class RankRunner:
    """Starts jobs of rank processes running a code snippet; kills leftovers."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.jobs: list[Job] = []

    def start(
        self,
        code: str,
        size: int,
        backend: str = "shm",
        env: dict[str, str] | None = None,
        ranks: Sequence[int] | None = None,
        addresses_per_rank: int = 1,
        hosts_of: Sequence[int] | None = None,
    ) -> Job:
        """Start `size` ranks. hosts_of[r] = n lists rank r at 127.0.0.(1 + n): a
        hierarchical group (backend "hier") takes each such address for a host
        of its own, and puts the first half of the ranks on one, the rest on
        another, unless told."""
        if backend == "hier" and hosts_of is None:
            hosts_of = [r * 2 // size for r in range(size)]  # two hosts
        script = self.tmp_path / f"rank_{len(self.jobs)}.py"
        script.write_text(textwrap.dedent(code))
        ports = free_ports(size * addresses_per_rank)
        hosts = [
            [
                f"127.0.0.{1 + (hosts_of[r] if hosts_of else 0)}:{ports[r * addresses_per_rank + i]}"
                for i in range(addresses_per_rank)
            ]
            for r in range(size)
        ]
        base = {
            **os.environ,
            "CHORUS_WORLD_SIZE": str(size),
            "CHORUS_HOSTFILE": json.dumps(hosts),
            "CHORUS_BACKEND": backend,
            "CHORUS_TOKEN": secrets.token_hex(16),
            "CHORUS_JOB_ID": f"test-{os.getpid()}-{secrets.token_hex(4)}",
            "CHORUS_TIMEOUT": "20",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        procs = []
        for rank in range(size) if ranks is None else ranks:
            proc_env = {**base, "CHORUS_RANK": str(rank)}
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script)],
                    env=proc_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    cwd=self.tmp_path,
                )
            )
        job = Job(procs, hosts, base)
        self.jobs.append(job)
        return job

    def run(
        self, code: str, size: int, timeout: float = 60.0, **kwargs: object
    ) -> list[RankResult]:
        """Start a job, wait for it, and fail the test if any rank failed."""
        job = self.start(code, size, **kwargs)  # type: ignore[arg-type]
        results = job.wait(timeout)
        for result in results:
            if result.returncode != 0:
                pytest.fail(
                    f"rank {result.rank} exited with {result.returncode}\n"
                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
                )
        return results

    def close(self) -> None:
        for job in self.jobs:
            job.kill()
            for proc in job.procs:
                try:
                    proc.communicate(timeout=5)
                except (subprocess.TimeoutExpired, ValueError):
                    pass


@pytest.fixture
def ranks(tmp_path: Path) -> Iterator[RankRunner]:
    runner = RankRunner(tmp_path)
    yield runner
    runner.close()
