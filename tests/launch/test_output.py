"""Output gathering: labels, whole lines, stdout and stderr kept apart."""

from __future__ import annotations

import os
import re
import select
import time

import pytest

from tests.launch.helpers import launch, script, start_launcher

pytestmark = pytest.mark.timeout(60)


def test_lines_are_labelled_whole_and_in_order(marker: str) -> None:
    count, width = 400, 3000
    done = launch("-n", "4", script("lines.py"), str(count), str(width), marker)
    assert done.returncode == 0, done.stderr[-2000:]

    out_line = re.compile(rf"\[(\d)\] (\d):(\d+):x{{{width}}}")
    seen: dict[int, list[int]] = {rank: [] for rank in range(4)}
    for line in done.stdout.splitlines():
        match = out_line.fullmatch(line)
        assert match, f"mangled stdout line: {line[:120]!r}... ({len(line)} chars)"
        assert match[1] == match[2], f"line of rank {match[2]} labelled [{match[1]}]"
        seen[int(match[1])].append(int(match[3]))
    for rank, indices in seen.items():
        assert indices == list(range(count)), f"rank {rank}: lines lost or reordered"

    err_line = re.compile(rf"\[(\d)\] E(\d):(\d+):y{{{width}}}")
    err_lines = done.stderr.splitlines()
    assert len(err_lines) == 4 * count
    for line in err_lines:
        match = err_line.fullmatch(line)
        assert match, f"mangled stderr line: {line[:120]!r}"
        assert match[1] == match[2]


def test_no_prefix(marker: str) -> None:
    done = launch("-n", "3", "--no-prefix", script("lines.py"), "5", "10", marker)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 15
    assert all(re.fullmatch(r"\d:\d:x{10}", line) for line in lines), lines
    assert sorted(line[0] for line in lines) == sorted("000001111122222")


def test_partial_line_is_flushed_without_newline(marker: str) -> None:
    # A prompt without a newline appears while the rank still waits for more.
    # The ranks wait 5 s, the test up to 4 s for both prompts: starting two
    # interpreters on a loaded 2-core machine can take more than a second.
    code = "import sys, time; sys.stdout.write('prompt> '); time.sleep(5); print('after')"
    launcher = start_launcher("-n", "2", "-c", code, marker)
    assert launcher.stdout is not None
    fd = launcher.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + 4
    while seen.count(b"prompt> ") < 2 and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, 4096)
    still_running = launcher.poll() is None
    rest, _ = launcher.communicate(timeout=10)
    assert still_running, "the launcher finished before the prompts were seen"
    assert sorted(seen.split(b"\n")) == [b"[0] prompt> ", b"[1] prompt> "]
    assert launcher.returncode == 0
    output = seen.decode() + rest
    # Each rank's text arrives whole and labelled. Whether "after" continues
    # its own open prompt line or starts a new one depends on which rank
    # wrote last (the sink ends an open line only when another rank writes),
    # so compare what each rank said, not how the lines fell.
    said: dict[str, str] = {"0": "", "1": ""}
    for line in output.split("\n")[:-1]:
        match = re.fullmatch(r"\[(\d)\] (.*)", line)
        assert match, f"unlabelled line {line!r} in {output!r}"
        said[match[1]] += match[2]
    assert output.endswith("\n"), output
    assert said == {"0": "prompt> after", "1": "prompt> after"}, output
    # Only the rank that wrote the last prompt may continue its line.
    assert output.count("prompt> after") <= 1, output


def test_verbose_prints_set_up_steps(marker: str) -> None:
    done = launch("-n", "2", "--verbose", "-c", "pass", marker)
    assert done.returncode == 0, done.stderr
    steps = done.stderr.splitlines()
    assert steps[0].startswith("chorus: job ")
    assert steps[0].endswith(": 2 rank(s), backend shm")
    assert any(step.startswith("chorus: listening for the ranks on [[") for step in steps)
    assert any(step.startswith("chorus: MLX hostfile at /proc/self/fd/") for step in steps)
    assert any(re.fullmatch(r"chorus: started in [\d.]+ s \(rank 0: pid \d+, rank 1: pid \d+\)", step)
               for step in steps)  # fmt: skip
    assert "chorus: rank 0 exited with code 0" in steps
    assert "chorus: rank 1 exited with code 0" in steps
    assert done.stdout == ""


def test_steady_partial_output_is_not_held_back(marker: str) -> None:
    # Progress dots without a newline, every 20 ms: they show up while the
    # rank runs, not only at its end.
    code = (
        "import sys, time\n"
        "for _ in range(75):\n"
        "    sys.stdout.write('.'); time.sleep(0.02)\n"
        "print()"
    )
    launcher = start_launcher("-n", "1", "-c", code, marker)
    assert launcher.stdout is not None
    fd = launcher.stdout.fileno()
    seen = b""
    # Generous for a slow start under load: held-back output would only come
    # at the end, after the launcher exited, which `running` catches.
    deadline = time.monotonic() + 10.0
    while not seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            seen += os.read(fd, 4096)
    running = launcher.poll() is None
    rest, _ = launcher.communicate(timeout=10)
    assert seen.startswith(b"[0] ."), seen
    assert running, "the dots only came at the end"
    assert (seen.decode() + rest).replace("[0] ", "") == "." * 75 + "\n"
