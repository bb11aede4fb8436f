"""Exit codes, failing ranks, signals, and cleanup (no orphans, no temp files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from chorus.launch.process import PDEATHSIG_BOOTSTRAP, LocalRank, rank_exec_helper
from tests.launch.helpers import (
    chorus_temp_files,
    launch,
    processes_with,
    read_until,
    script,
    start_launcher,
    wait_gone,
)

pytestmark = pytest.mark.timeout(60)


def test_failing_rank_sets_exit_code_and_others_are_stopped(marker: str) -> None:
    started = time.monotonic()
    done = launch("-n", "3", "--grace", "0.5", script("fail.py"), "1", "3", "sleep", marker)
    elapsed = time.monotonic() - started
    assert done.returncode == 3
    assert "chorus: rank 1 exited with code 3" in done.stderr
    # The sleeping ranks were stopped after the grace period, not after 60 s.
    assert "chorus: stopping rank(s) 0, 2 with SIGTERM after a grace of 0.5 s" in done.stderr
    assert elapsed < 10
    assert "[1] rank 1 failing with 3" in done.stdout
    # The failure message comes after the failing rank's own output.
    assert done.stderr.count("chorus: rank") == 1


def test_rank_killed_by_signal(marker: str) -> None:
    done = launch("-n", "2", "--grace", "0.2", script("fail.py"), "1", "SIGKILL", "sleep", marker)
    assert done.returncode == 128 + signal.SIGKILL
    assert "chorus: rank 1 was killed by SIGKILL" in done.stderr


def test_grace_lets_other_ranks_finish(marker: str) -> None:
    done = launch("-n", "3", "--grace", "5", script("fail.py"), "0", "4", "finish", marker)
    assert done.returncode == 4
    assert "[1] rank 1 finished" in done.stdout
    assert "[2] rank 2 finished" in done.stdout
    assert "SIGTERM" not in done.stderr


def test_rank_ignoring_sigterm_is_killed(marker: str) -> None:
    started = time.monotonic()
    done = launch("-n", "2", "--grace", "0.2", script("fail.py"), "0", "5", "ignore-term", marker)
    assert done.returncode == 5
    assert "chorus: stopping rank(s) 1 with SIGTERM" in done.stderr
    assert "chorus: killing rank(s) 1 with SIGKILL" in done.stderr
    assert time.monotonic() - started < 10


def test_all_zero_exit_is_success(marker: str) -> None:
    done = launch("-n", "4", "-c", "pass", marker)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_ctrl_c_reaches_every_rank_once(marker: str) -> None:
    launcher = start_launcher("-n", "3", script("signals.py"), "exit", marker)
    read_until(launcher.stdout, [f"rank {rank} ready" for rank in range(3)])
    # What a terminal does on Ctrl-C: SIGINT to the foreground process group
    # (the launcher's). The ranks have their own groups; the launcher
    # forwards it, so each rank gets it exactly once.
    os.killpg(launcher.pid, signal.SIGINT)
    out, _ = launcher.communicate(timeout=20)
    lines = out.splitlines()
    for rank in range(3):
        assert f"[{rank}] rank {rank} got SIGINT" in lines
        assert f"[{rank}] rank {rank} count 1" in lines
    # Every rank exited 0, but the job was interrupted: not a success.
    assert launcher.returncode == 128 + signal.SIGINT


def test_ctrl_c_default_handler_fails_job(marker: str) -> None:
    launcher = start_launcher("-n", "2", script("signals.py"), "sleep", marker)
    read_until(launcher.stdout, ["rank 0 ready", "rank 1 ready"])
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=20)
    assert launcher.returncode != 0
    assert "KeyboardInterrupt" in err
    assert "was killed by SIGINT" in err


def test_second_ctrl_c_kills(marker: str) -> None:
    launcher = start_launcher("-n", "2", script("signals.py"), "ignore", marker)
    read_until(launcher.stdout, ["rank 0 ready", "rank 1 ready"])
    launcher.send_signal(signal.SIGINT)
    read_until(launcher.stdout, ["rank 0 got SIGINT", "rank 1 got SIGINT"])
    assert launcher.poll() is None, "ranks that handle SIGINT keep running"
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=20)
    assert launcher.returncode == 128 + signal.SIGKILL
    assert "was killed by SIGKILL" in err


def test_sigterm_reaches_every_rank(marker: str) -> None:
    launcher = start_launcher("-n", "3", script("signals.py"), "exit", marker)
    read_until(launcher.stdout, [f"rank {rank} ready" for rank in range(3)])
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=20)
    for rank in range(3):
        assert f"[{rank}] rank {rank} got SIGTERM" in out
    assert launcher.returncode == 128 + signal.SIGTERM


def test_sigterm_stops_ranks_that_ignore_it(marker: str) -> None:
    launcher = start_launcher("-n", "2", "--grace", "0.3", script("signals.py"), "ignore", marker)
    read_until(launcher.stdout, ["rank 0 ready", "rank 1 ready"])
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=20)
    assert launcher.returncode == 128 + signal.SIGKILL
    assert "killing rank(s) 0, 1 with SIGKILL" in err


def test_launcher_killed_leaves_no_orphans_and_no_files(marker: str) -> None:
    before = chorus_temp_files()
    launcher = start_launcher("-n", "4", script("signals.py"), "sleep", marker)
    read_until(launcher.stdout, [f"rank {rank} ready" for rank in range(4)])
    assert len(processes_with(marker)) == 5  # the launcher and 4 ranks
    launcher.kill()
    launcher.communicate(timeout=10)
    left = wait_gone(marker, timeout=2.0)
    assert not left, f"orphans: {[p.info['cmdline'] for p in left]}"
    assert chorus_temp_files() <= before


def test_no_temp_files_after_a_job(marker: str) -> None:
    before = chorus_temp_files()
    done = launch("-n", "3", script("probe_env.py"), marker)
    assert done.returncode == 0
    assert chorus_temp_files() <= before


def test_processes_left_by_a_rank_are_killed(marker: str) -> None:
    # A rank that starts a background process and exits: the launcher kills
    # what is left in the rank's process group.
    code = (
        "import subprocess, sys; "
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print('spawned')"
    )
    done = launch("-n", "2", "-c", code, marker)
    assert done.returncode == 0
    assert not wait_gone(marker, timeout=2.0)


def _bootstraps() -> dict[str, list[str]]:
    helper = rank_exec_helper()
    assert helper is not None, "chorus-rank-exec is not installed next to chorus._core"
    return {
        "chorus-rank-exec": [helper],
        "python": [sys.executable, "-I", "-S", "-c", PDEATHSIG_BOOTSTRAP],
    }


@pytest.mark.parametrize("bootstrap", ["chorus-rank-exec", "python"])
def test_bootstrap_dies_if_the_launcher_is_already_gone(bootstrap: str) -> None:
    # The race PR_SET_PDEATHSIG alone leaves open: the launcher died before
    # the rank called prctl. The bootstrap then finds another parent and dies.
    prefix = _bootstraps()[bootstrap]
    not_our_parent = "1"
    done = subprocess.run(
        [*prefix, not_our_parent, "/bin/echo", "echo", "must not run"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == ""
    done = subprocess.run(
        [*prefix, str(os.getpid()), "/bin/echo", "echo", "runs"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "runs\n")
    done = subprocess.run(
        [*prefix, str(os.getpid()), "/nonexistent/program", "program"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 127
    assert "cannot execute /nonexistent/program" in done.stderr


def test_local_ranks_start_through_the_compiled_bootstrap() -> None:
    # The interpreter-free helper is what keeps `chorus launch` start-up
    # short; a broken install would silently fall back to the Python one.
    rank = LocalRank(0, ["/bin/true"], {})
    assert rank.command() == [rank_exec_helper(), str(os.getpid()), "/bin/true", "/bin/true"]
