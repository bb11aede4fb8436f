"""Stdin broadcast: piped input, no input, and pdb in every rank from one terminal."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from tests.launch.helpers import CHORUS, launch, script

pytestmark = pytest.mark.timeout(60)


def test_piped_lines_reach_every_rank(marker: str) -> None:
    done = launch("-n", "3", script("stdin_echo.py"), marker, input="alpha\nbeta\n")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        f"[{rank}] rank {rank} read 2 lines: ['alpha', 'beta']" for rank in range(3)
    ]


def test_stdin_from_a_file(tmp_path: Path, marker: str) -> None:
    # A regular file cannot be polled; it is read directly.
    source = tmp_path / "input.txt"
    source.write_text("".join(f"line {i}\n" for i in range(5000)))
    with source.open("rb") as handle:
        done = launch("-n", "2", script("stdin_echo.py"), marker, stdin=handle.fileno())
    assert done.returncode == 0, done.stderr
    expected = [f"line {i}" for i in range(5000)]
    assert sorted(done.stdout.splitlines()) == [
        f"[{rank}] rank {rank} read 5000 lines: {expected}" for rank in range(2)
    ]


def test_stdin_devnull_gives_eof(marker: str) -> None:
    done = launch("-n", "2", script("stdin_echo.py"), marker, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[0] rank 0 read 0 lines: []",
        "[1] rank 1 read 0 lines: []",
    ]


def test_stdin_closed_gives_eof(marker: str) -> None:
    # CI may run with fd 0 closed altogether; "<&-" closes it for the launcher.
    command = " ".join([*CHORUS, "launch", "-n", "2", script("stdin_echo.py"), marker])
    done = subprocess.run(
        ["/bin/sh", "-c", f"exec {command} <&-"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[0] rank 0 read 0 lines: []",
        "[1] rank 1 read 0 lines: []",
    ]


def expect_ranks(child: pexpect.spawn, pattern: str, transcript: io.StringIO) -> set[str]:
    """Expect ``pattern`` once per rank; return the labels (its first group).

    A second group, if any, must equal the label (the rank's own answer).
    """
    labels: set[str] = set()
    while len(labels) < 4:
        try:
            child.expect(pattern)
        except (pexpect.EOF, pexpect.TIMEOUT) as exc:
            msg = f"waiting for {pattern!r} (have {sorted(labels)}); terminal so far:\n"
            raise AssertionError(msg + transcript.getvalue()) from exc
        label = child.match.group(1)
        value = child.match.group(2) if child.match.lastindex == 2 else label
        assert label == value, f"rank {label} printed {value}:\n{transcript.getvalue()}"
        labels.add(label)
    return labels


def test_breakpoint_in_every_rank_from_one_terminal(marker: str) -> None:
    transcript = io.StringIO()
    child = pexpect.spawn(
        sys.executable,
        [*CHORUS[1:], "launch", "-n", "4", script("pdb_ranks.py"), marker],
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.logfile_read = transcript
    try:
        expect_ranks(child, r"\[(\d)\] \(Pdb\) ", transcript)
        child.sendline("p rank")
        assert expect_ranks(child, r"\[(\d)\] (\d)\r\n", transcript) == {"0", "1", "2", "3"}
        # Every rank shows its prompt again before the next command is typed.
        expect_ranks(child, r"\[(\d)\] \(Pdb\) ", transcript)
        child.sendline("c")
        expect_ranks(child, r"\[(\d)\] rank (\d) done", transcript)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, transcript.getvalue()
    assert not re.search(r"Traceback|Error", transcript.getvalue()), transcript.getvalue()
