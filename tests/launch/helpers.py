"""Helpers for launcher tests: run ``chorus launch`` as a real process, find processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).resolve().parents[2]
CHORUS = (sys.executable, "-m", "chorus")


def script(name: str) -> str:
    """The path of a helper script under tests/launch/scripts."""
    return str(SCRIPTS / name)


def launch(
    *args: str,
    input: str | None = None,
    timeout: float = 30.0,
    stdin: int | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m chorus launch ARGS`` to completion and capture output."""
    return subprocess.run(
        [*CHORUS, "launch", *args],
        input=input,
        stdin=subprocess.DEVNULL if input is None and stdin is None else stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def start_launcher(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m chorus launch ARGS`` in its own session, with pipes.

    Its own session makes ``os.killpg(proc.pid, SIGINT)`` what a terminal's
    Ctrl-C does: the signal reaches the launcher's whole foreground group.
    """
    return subprocess.Popen(
        [*CHORUS, "launch", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def read_until(stream: object, needles: Sequence[str], timeout: float = 20.0) -> list[str]:
    """Read lines from ``stream`` until each of ``needles`` was seen in one."""
    assert hasattr(stream, "readline")
    deadline = time.monotonic() + timeout
    missing = list(needles)
    lines: list[str] = []
    while missing:
        assert time.monotonic() < deadline, f"still waiting for {missing}; got {lines}"
        line = stream.readline()
        assert line, f"EOF while waiting for {missing}; got {lines}"
        lines.append(line)
        missing = [needle for needle in missing if needle not in line]
    return lines


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        if any(marker in arg for arg in cmdline):
            found.append(proc)
    return found


def wait_gone(marker: str, timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for processes mentioning ``marker`` to vanish."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def chorus_temp_files() -> set[str]:
    """Entries of /tmp and /dev/shm whose names mention chorus or mlx."""
    names: set[str] = set()
    for folder in (Path("/tmp"), Path("/dev/shm")):
        for entry in folder.iterdir():
            lowered = entry.name.lower()
            if "chorus" in lowered or "mlx" in lowered:
                names.add(str(entry))
    return names
