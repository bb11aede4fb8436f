"""``chorus launch --backend mpi``: the job handed to Open MPI's mpirun, chorus-style output."""

from __future__ import annotations

import subprocess
import sys

from chorus.launch.mpi_output import TagRelabeler

SCRIPT = """\
import sys
import numpy as np
import chorus
group = chorus.init()
print("partial", end="")
print(" line", group.rank(), group.backend, chorus.all_sum(np.ones(2) * group.rank()).tolist())
if group.rank() == 1 and len(sys.argv) > 1:
    sys.exit(int(sys.argv[1]))
"""


def launch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chorus", "launch", "--backend", "mpi", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_mpi_job_output_is_labelled_per_rank() -> None:
    result = launch("-n", "3", "-c", SCRIPT)
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert lines == [f"[{r}] partial line {r} mpi [3.0, 3.0]" for r in range(3)], result.stdout


def test_mpi_job_exit_status_is_the_failing_ranks() -> None:
    # An uncaught exception aborts every rank (MPI_Abort) and mpirun fails.
    script = "import chorus\ng = chorus.init()\nif g.rank() == 1:\n    raise SystemExit(3)\n"
    result = launch("-n", "2", "-c", script)
    assert result.returncode == 3, (result.returncode, result.stderr)


def test_missing_mpirun_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chorus", "launch", "--backend", "mpi", "-n", "2", "-c", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/nonexistent", "HOME": "/tmp"},
    )
    assert result.returncode == 2
    assert "openmpi-bin" in result.stderr


def test_stall_watching_under_mpirun_is_refused_not_ignored() -> None:
    result = launch("-n", "2", "--stall-timeout", "5", "-c", "print(1)")
    assert result.returncode == 2, result.stderr
    assert "--stall-report and --stall-timeout watch chorus's own ranks" in result.stderr
    assert result.stdout == ""


def test_ctrl_c_reaches_the_mpi_ranks() -> None:
    # SIGINT to the launcher goes on to mpirun, which stops every rank.
    import signal
    import time

    code = "import chorus, time\nchorus.init()\nprint('up', flush=True)\ntime.sleep(60)\n"
    with subprocess.Popen(
        [sys.executable, "-m", "chorus", "launch", "--backend", "mpi", "-n", "2", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            seen = [proc.stdout.readline() for _ in range(2)]
            assert sorted(seen) == ["[0] up\n", "[1] up\n"], seen
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
            assert time.monotonic() - started < 20
            assert proc.returncode != 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_relabeler_joins_pieces_of_a_line_per_rank() -> None:
    out: list[bytes] = []
    relabel = TagRelabeler(out.append)
    # Pieces of two ranks' lines interleaved, a tag split across chunks.
    relabel.feed(b"[1,0]<stdout>:ab[1,1]<stdout>:x[1,0]<stdout>:c\n[1,")
    relabel.feed(b"1]<stdout>:y\n[1,2]<stdout>:no newline")
    relabel.close()
    assert b"".join(out) == b"[0] abc\n[1] xy\n[2] no newline\n"


def test_relabeler_without_prefix_strips_tags() -> None:
    out: list[bytes] = []
    relabel = TagRelabeler(out.append, prefix=False)
    relabel.feed(b"[1,3]<stderr>: indented\n")
    relabel.close()
    assert b"".join(out) == b" indented\n"
