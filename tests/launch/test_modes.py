"""What a rank runs (script, -m, -c, executables), its environment and errors."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.launch.helpers import REPO, SCRIPTS, launch, script

pytestmark = pytest.mark.timeout(60)


def probe(*args: str) -> list[dict[str, object]]:
    """Run probe_env.py under the launcher; one report per rank, in rank order."""
    done = launch(*args)
    assert done.returncode == 0, done.stderr
    reports = {}
    for line in done.stdout.splitlines():
        label, _, payload = line.partition(" ")
        reports[int(label.strip("[]"))] = json.loads(payload)
    return [reports[rank] for rank in sorted(reports)]


def test_script_arguments_and_interpreter(marker: str) -> None:
    code_path = SCRIPTS / "probe_module.py"
    done = launch("-n", "2", str(code_path), "--verbose", "-n", "7", marker)
    assert done.returncode == 0, done.stderr
    # Options after the script belong to the script, not to the launcher.
    assert sorted(done.stdout.splitlines()) == [
        f"[0] module __main__ None rank 0 args ['--verbose', '-n', '7', '{marker}']",
        f"[1] module __main__ None rank 1 args ['--verbose', '-n', '7', '{marker}']",
    ]
    assert done.stderr == ""


def test_module_mode(marker: str) -> None:
    done = launch(
        "-n", "2", "--env", f"PYTHONPATH={SCRIPTS}", "-m", "probe_module", "-n", "5", marker
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        f"[0] module __main__ probe_module rank 0 args ['-n', '5', '{marker}']",
        f"[1] module __main__ probe_module rank 1 args ['-n', '5', '{marker}']",
    ]


def test_code_mode(marker: str) -> None:
    code = "import os, sys; print(os.environ['CHORUS_RANK'], sys.executable, sys.argv[1:])"
    done = launch("-n", "3", "-c", code, "a", marker)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        f"[{rank}] {rank} {sys.executable} ['a', '{marker}']" for rank in range(3)
    ]


def test_executable_program(tmp_path: Path, marker: str) -> None:
    program = tmp_path / "hello.sh"
    program.write_text('#!/bin/sh\necho "sh rank $CHORUS_RANK of $CHORUS_WORLD_SIZE $1"\n')
    program.chmod(0o755)
    done = launch("-n", "2", str(program), marker)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        f"[0] sh rank 0 of 2 {marker}",
        f"[1] sh rank 1 of 2 {marker}",
    ]


def test_single_rank(marker: str) -> None:
    done = launch("-c", "import os; print(os.environ['CHORUS_WORLD_SIZE'])", marker)
    assert (done.returncode, done.stdout) == (0, "[0] 1\n")


def test_env_and_cwd(tmp_path: Path, marker: str) -> None:
    reports = probe(
        "-n", "2",
        "--env", "GREETING=hello=world",
        "--env", "CHORUS_TIMEOUT=7",
        "--cwd", str(tmp_path),
        script("probe_env.py"), marker,
    )  # fmt: skip
    for report in reports:
        assert report["cwd"] == str(tmp_path)
        assert isinstance(report["env"], dict)
    done = launch(
        "-n", "2", "--env", "GREETING=hello=world", "--cwd", str(tmp_path),
        "-c", "import os; print(os.environ['GREETING'], os.getcwd())", marker,
    )  # fmt: skip
    assert sorted(done.stdout.splitlines()) == [
        f"[0] hello=world {tmp_path}",
        f"[1] hello=world {tmp_path}",
    ]
    # --env wins over the launcher's own variables.
    assert {r["env"]["CHORUS_TIMEOUT"] for r in reports} == {"7"}  # type: ignore[index]


def test_script_relative_to_cwd(tmp_path: Path, marker: str) -> None:
    (tmp_path / "local.py").write_text("import os; print('local', os.environ['CHORUS_RANK'])\n")
    done = launch("-n", "2", "--cwd", str(tmp_path), "local.py", marker)
    assert sorted(done.stdout.splitlines()) == ["[0] local 0", "[1] local 1"]


def test_environment_of_each_rank(marker: str) -> None:
    reports = probe("-n", "4", script("probe_env.py"), marker)
    envs = [report["env"] for report in reports]
    assert all(isinstance(env, dict) for env in envs)
    hostfile = json.loads(envs[0]["CHORUS_HOSTFILE"])  # type: ignore[index]
    assert len(hostfile) == 4
    assert all(len(entry) == 1 and entry[0].startswith("127.0.0.1:") for entry in hostfile)
    assert len({entry[0] for entry in hostfile}) == 4
    token = envs[0]["CHORUS_TOKEN"]  # type: ignore[index]
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    job_id = envs[0]["CHORUS_JOB_ID"]  # type: ignore[index]
    # Random, and nothing of the token: the job id is visible in /dev/shm names.
    assert re.fullmatch(r"\d+-[0-9a-f]{8}", job_id), job_id
    assert not any(token[i : i + 8] in job_id for i in range(25)), (job_id, token)
    mlx_hostfile = reports[0]["mlx_hostfile"]
    assert isinstance(mlx_hostfile, list)
    assert len(mlx_hostfile) == 4
    mlx_addresses = {entry[0] for entry in mlx_hostfile}
    assert len(mlx_addresses) == 4
    assert not mlx_addresses & {entry[0] for entry in hostfile}

    for rank, (report, env) in enumerate(zip(reports, envs, strict=True)):
        assert isinstance(env, dict)
        assert env["CHORUS_RANK"] == env["MLX_RANK"] == str(rank)
        assert env["CHORUS_WORLD_SIZE"] == env["MLX_WORLD_SIZE"] == "4"
        assert json.loads(env["CHORUS_HOSTFILE"]) == hostfile
        assert env["CHORUS_BACKEND"] == "shm"
        assert env["CHORUS_TOKEN"] == token
        assert env["CHORUS_JOB_ID"] == job_id
        assert env["CHORUS_TIMEOUT"] == "60"
        assert env["CHORUS_COORDINATOR"] == hostfile[0][0]
        assert env["PYTHONUNBUFFERED"] == "1"
        assert "CHORUS_VERBOSE" not in env or os.environ.get("CHORUS_VERBOSE")
        assert report["mlx_hostfile"] == mlx_hostfile
        assert re.fullmatch(r"/proc/self/fd/\d+", env["MLX_HOSTFILE"])
        # Its own listening socket, bound to its own hostfile address...
        listen = report["listen"]
        assert isinstance(listen, list)
        assert len(listen) == 1
        assert env["CHORUS_LISTEN_FDS"] == str(listen[0]["fd"])
        assert listen[0]["listening"] == 1
        assert listen[0]["address"] == hostfile[rank][0]
        # ... and no other rank's socket (only stdio, its socket, the MLX
        # hostfile and the fd that listed the directory).
        fds = report["fds"]
        assert isinstance(fds, list)
        hostfile_fd = int(env["MLX_HOSTFILE"].rsplit("/", 1)[1])
        assert {0, 1, 2, listen[0]["fd"], hostfile_fd} <= set(fds)
        assert len(set(fds) - {0, 1, 2, listen[0]["fd"], hostfile_fd}) == 1
        others = {other["listen"][0]["fd"] for other in reports if other is not report}  # type: ignore[index]
        assert not others & set(fds)

    second = probe("-n", "2", "--backend", "any", "--timeout", "5", "--verbose",
                   script("probe_env.py"), marker)  # fmt: skip
    env = second[0]["env"]
    assert isinstance(env, dict)
    assert env["CHORUS_BACKEND"] == "any"
    assert env["CHORUS_TIMEOUT"] == "5"
    assert env["CHORUS_VERBOSE"] == "1"
    assert env["CHORUS_TOKEN"] != token
    assert env["CHORUS_JOB_ID"] != job_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "2", "no_such_script.py"], "no such script: no_such_script.py"),
        (["-n", "0", "x.py"], "argument -n/--nprocs: must be at least 1"),
        (["-n", "two", "x.py"], "argument -n/--nprocs: expected a whole number"),
        (["--env", "NOVALUE", "x.py"], "argument --env: expected NAME=VALUE"),
        (["--env", "1BAD=x", "x.py"], "not a valid environment variable name"),
        (["--cwd", "/no/such/dir", "-c", "pass"], "--cwd /no/such/dir: no such directory"),
        (["--backend", "carrier-pigeon", "-c", "pass"], "argument --backend: invalid choice"),
        (["--timeout", "soon", "-c", "pass"], "argument --timeout: expected a number"),
        (["-n", "2"], "nothing to run"),
        (["-m"], "expected a module name"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    done = launch(*args, cwd=REPO)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
