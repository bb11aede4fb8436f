"""``chorus launch --hosts/--hostfile`` against real sshd servers in network namespaces.

Every test drives the launcher as a user would (a subprocess with HOME set to
the emulated hosts' ssh configuration) and then looks at each host's process
table: nothing the job started may survive it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chorus.launch.threads import usable_cores
from testbed.emulated_hosts import EmulatedHosts
from tests.hosts.fixtures import EmulatedHostsFactory

ALLSUM = """\
import socket
import numpy as np
import chorus
group = chorus.init()
total = chorus.all_sum(np.arange(4.0) * (group.rank() + 1))
print(socket.gethostname(), group.rank(), group.size(), group.backend, total.tolist())
"""


def launch(
    hosts: EmulatedHosts,
    *args: str,
    input: str | None = None,
    timeout: float = 90,
    home: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = hosts.env()
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "chorus", "launch", *args],
        env=env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_launcher(hosts: EmulatedHosts, names: str, script: str) -> subprocess.Popen[str]:
    """chorus launch --hosts names -c script, running on, with its output piped."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "chorus", "launch", "--hosts", names, "-c", script],
        env=hosts.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    return launcher


def job_processes(hosts: EmulatedHosts) -> dict[str, list[str]]:
    """Every process on each host other than its sshd listener: what a job left behind."""
    left: dict[str, list[str]] = {}
    for host in hosts.hosts:
        for pid in host.pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "sshd" in cmdline and "-D" in cmdline:
                continue  # the host's own ssh server
            left.setdefault(host.name, []).append(f"{pid}: {cmdline[:120]}")
    return left


def assert_no_orphans(
    hosts: EmulatedHosts, within: float = 5.0, only: set[str] | None = None
) -> None:
    """Nothing of a job is left on the hosts (or on the hosts named in ``only``)."""
    deadline = time.monotonic() + within
    while True:
        left = {
            name: procs
            for name, procs in job_processes(hosts).items()
            if only is None or name in only
        }
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left on the hosts: {left}"


def test_four_hosts_all_sum_over_ring(switch_hosts: EmulatedHosts) -> None:
    result = launch(switch_hosts, "--hosts", "h0,h1,h2,h3", "-c", ALLSUM)
    assert result.returncode == 0, result.stderr
    # No warning of a dependency (asyncssh's import under cryptography >= 51) reaches users.
    assert "Warning" not in result.stderr, result.stderr
    lines = sorted(result.stdout.splitlines())
    expected = [float(v * 10) for v in range(4)]  # (1 + 2 + 3 + 4) * arange(4)
    for rank, line in enumerate(lines):
        label, host, rank_text, size, backend, total = line.split(" ", 5)
        assert label == f"[{rank}]"
        assert host == f"h{rank}", "rank i runs on host i"
        assert (int(rank_text), int(size), backend) == (rank, 4, "ring")
        assert json.loads(total) == expected
    assert_no_orphans(switch_hosts)


def test_hostfile_in_mlx_shape_with_two_ranks_per_host(
    switch_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    hostfile = tmp_path / "hosts.json"
    entries = [
        {"ssh": host.name, "ips": [host.address], "rdma": []}
        for host in switch_hosts.hosts[:2]
        for _ in range(2)
    ]
    hostfile.write_text(json.dumps({"backend": "ring", "envs": ["GREETING=hi"], "hosts": entries}))
    script = ALLSUM + (
        "import os\nprint('env', os.environ['GREETING'])\n"
        "print('threads', os.environ.get('OPENBLAS_NUM_THREADS'))\n"
        "print('machine', os.environ.get('CHORUS_MACHINE_RANKS'))\n"
    )
    result = launch(switch_hosts, "--hostfile", str(hostfile), "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("env hi") == 4
    # The emulated hosts are one machine (one kernel boot id): its 4 ranks
    # share its cores, for BLAS and for whether their waits may spin.
    assert result.stdout.count("machine 4\n") == 4, result.stdout
    share = max(1, usable_cores() // 4)
    assert result.stdout.count(f"threads {share}\n") == 4, result.stdout
    hosts_seen = sorted(line.split()[1] for line in result.stdout.splitlines() if "ring" in line)
    assert hosts_seen == ["h0", "h0", "h1", "h1"]
    assert_no_orphans(switch_hosts)


HIER_JOB = """\
import os, socket, sys, time
import numpy as np
import chorus
g = chorus.init()
r, n = g.rank(), g.size()
big = chorus.all_sum(np.full(1 << 20, r, np.float32))
assert np.all(big == n * (n - 1) / 2), big[:4]
names = chorus.all_gather(np.array([r]))
assert names.tolist() == list(range(n)), names
print(socket.gethostname(), r, n, g.backend, "OK", flush=True)
if os.environ.get("KILL"):
    try:
        while True:
            chorus.all_sum(np.ones(1000))
            if r == 3:
                os._exit(9)
    except chorus.PeerError as err:
        print("RAISED", r, err.reason, err.rank, flush=True)
        time.sleep(2)  # stay until every survivor heard it
"""


def _hier_hostfile(hosts: EmulatedHosts, tmp_path: Path) -> Path:
    # h0 runs ranks 0 and 1, h1 ranks 2, 3 and 4; no backend named.
    hostfile = tmp_path / "hosts.json"
    entries = [
        {"ssh": host.name, "ips": [host.address], "rdma": []}
        for host, count in zip(hosts.hosts[:2], (2, 3), strict=True)
        for _ in range(count)
    ]
    hostfile.write_text(json.dumps({"hosts": entries}))
    return hostfile


def test_several_ranks_per_host_take_the_hierarchical_backend(
    switch_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    hostfile = _hier_hostfile(switch_hosts, tmp_path)
    result = launch(switch_hosts, "--hostfile", str(hostfile), "-c", HIER_JOB)
    assert result.returncode == 0, result.stderr
    seen = sorted(line.split()[1:5] for line in result.stdout.splitlines() if "OK" in line)
    assert seen == [
        ["h0", "0", "5", "hier"],
        ["h0", "1", "5", "hier"],
        ["h1", "2", "5", "hier"],
        ["h1", "3", "5", "hier"],
        ["h1", "4", "5", "hier"],
    ], result.stdout
    assert_no_orphans(switch_hosts)


def test_a_rank_killed_on_one_host_fails_the_call_on_both_hosts(
    switch_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    hostfile = _hier_hostfile(switch_hosts, tmp_path)
    result = launch(
        switch_hosts, "--hostfile", str(hostfile), "--env", "KILL=1", "-c", HIER_JOB, timeout=120
    )
    # "[0] RAISED 0 died 3": label, word, rank, reason, culprit.
    raised = sorted(line.split()[2:] for line in result.stdout.splitlines() if "RAISED" in line)
    # Every survivor, on h0 and h1, names rank 3 (died, or late for the call it failed).
    assert [r[0] for r in raised] == ["0", "1", "2", "4"], result.stdout + result.stderr
    for _, reason, culprit in raised:
        assert (reason in ("died", "late"), culprit) == (True, "3"), result.stdout
    assert "rank 3 on h1" in result.stderr, result.stderr
    assert_no_orphans(switch_hosts)


def test_stdin_reaches_every_remote_rank(switch_hosts: EmulatedHosts) -> None:
    script = "import sys, chorus\nline = sys.stdin.readline().strip()\nprint('hello', line, chorus.init().rank())\n"
    result = launch(switch_hosts, "--hosts", "h0,h1", "-c", script, input="world\n")
    assert result.returncode == 0, result.stderr
    assert "[0] hello world 0" in result.stdout
    assert "[1] hello world 1" in result.stdout


def test_failing_rank_names_host_and_stops_the_others(switch_hosts: EmulatedHosts) -> None:
    script = (
        "import sys, time, chorus\n"
        "g = chorus.init()\n"
        "if g.rank() == 2:\n"
        "    sys.exit(7)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = launch(switch_hosts, "--hosts", "h0,h1,h2,h3", "--grace", "1", "-c", script)
    assert result.returncode == 7
    assert "rank 2 on h2 exited with code 7" in result.stderr
    assert time.monotonic() - started < 30, "the sleeping ranks were stopped"
    assert_no_orphans(switch_hosts)


def test_ctrl_c_reaches_remote_ranks(switch_hosts: EmulatedHosts) -> None:
    script = (
        "import time, chorus\n"
        "chorus.init()\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    raise SystemExit(5)\n"
    )
    launcher = start_launcher(switch_hosts, "h0,h1", script)
    ready = 0
    while ready < 2:
        line = launcher.stdout.readline()
        assert line, "the launcher ended before both ranks were ready"
        ready += "ready" in line
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=30)
    assert out.count("interrupted") == 2, (out, err)
    assert launcher.returncode == 5
    assert_no_orphans(switch_hosts)


def test_killed_launcher_leaves_nothing_on_any_host(switch_hosts: EmulatedHosts) -> None:
    # The ranks start children of their own: the whole process group must go.
    script = (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '300'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    launcher = start_launcher(switch_hosts, "h0,h1,h2", script)
    for _ in range(3):
        assert "ready" in launcher.stdout.readline()
    assert job_processes(switch_hosts), "the ranks run on the hosts"
    launcher.kill()
    launcher.communicate(timeout=10)
    assert_no_orphans(switch_hosts, within=10)


def test_no_files_left_on_the_hosts(switch_hosts: EmulatedHosts) -> None:
    # The hosts share this file system: the agent must write nothing anywhere.
    watched = [Path("/tmp"), Path("/dev/shm"), Path(switch_hosts.home)]
    before = {path: set(path.iterdir()) for path in watched}
    script = "import chorus, numpy as np\nchorus.all_sum(np.ones(2))\n"
    result = launch(switch_hosts, "--hosts", "h0,h1", "-c", script)
    assert result.returncode == 0, result.stderr
    for path in watched:
        assert set(path.iterdir()) - before[path] == set(), f"new files in {path}"


# -- errors name the host and say what to do ---------------------------------------


def test_unknown_host_key_is_refused_then_accepted_on_request(
    switch_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    ssh_dir = Path(switch_hosts.home) / ".ssh"
    config = (ssh_dir / "config").read_text().replace(str(ssh_dir / "known_hosts"), "")
    config = "\n".join(
        line for line in config.splitlines() if "UserKnownHostsFile" not in line
    ).replace("StrictHostKeyChecking yes", "")
    (home / ".ssh" / "config").write_text(config)
    refused = launch(switch_hosts, "--hosts", "h1", "-c", "print('ran')", home=home)
    assert refused.returncode == 2
    assert "h1: the host key is unknown" in refused.stderr
    assert "--accept-new-host-keys" in refused.stderr
    assert "ran" not in refused.stdout

    accepted = launch(
        switch_hosts, "--hosts", "h1", "--accept-new-host-keys", "-c", "print('ran')", home=home
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "[0] ran" in accepted.stdout
    # Recorded under the HostName ssh resolved, as OpenSSH does.
    recorded = (home / ".ssh" / "known_hosts").read_text()
    assert recorded.startswith(switch_hosts.hosts[1].address + " ssh-ed25519 ")


def test_changed_host_key_is_refused(switch_hosts: EmulatedHosts, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    original = Path(switch_hosts.home) / ".ssh"
    ssh_dir.mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    other_key = (tmp_path / "other.pub").read_text().split()[:2]
    h2 = switch_hosts.hosts[2]
    (ssh_dir / "known_hosts").write_text(f"h2,{h2.address} {' '.join(other_key)}\n")
    config = (original / "config").read_text().replace(str(original / "known_hosts"), "")
    config = "\n".join(line for line in config.splitlines() if "UserKnownHostsFile" not in line)
    (ssh_dir / "config").write_text(config)
    result = launch(
        switch_hosts, "--hosts", "h2", "--accept-new-host-keys", "-c", "print(1)", home=home
    )
    assert result.returncode == 2
    assert "h2: the host key has CHANGED" in result.stderr
    assert "ssh-keygen -R h2" in result.stderr


def test_refused_authentication_says_how_to_fix_it(
    switch_hosts: EmulatedHosts, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True)
    original = Path(switch_hosts.home) / ".ssh"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "stranger")], check=True
    )
    config = (original / "config").read_text()
    config = config.replace(str(original / "id_ed25519"), str(ssh_dir / "stranger"))
    (ssh_dir / "config").write_text(config)
    result = launch(switch_hosts, "--hosts", "h0", "-c", "print(1)", home=home)
    assert result.returncode == 2
    assert "h0: authentication refused" in result.stderr
    assert "ssh-copy-id h0" in result.stderr


def test_unreachable_host(emulated_hosts: EmulatedHostsFactory) -> None:
    hosts = emulated_hosts(2, "switch")
    # Stop the second host's ssh server: its address answers, sshd does not.
    for pid in hosts.hosts[1].pids():
        os.kill(pid, signal.SIGKILL)
    result = launch(hosts, "--hosts", "h0,h1", "-c", "print(1)")
    assert result.returncode == 2
    assert "h1: unreachable: connection refused" in result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert_no_orphans(hosts)


def test_missing_remote_python_and_missing_chorus(switch_hosts: EmulatedHosts) -> None:
    missing = launch(switch_hosts, "--hosts", "h0", "--python", "/opt/no/python3", "-c", "1")
    assert missing.returncode == 2
    assert "h0: /opt/no/python3 is not there" in missing.stderr
    assert "--python" in missing.stderr

    # Debian's own interpreter exists on every host but has no chorus.
    bare = launch(switch_hosts, "--hosts", "h0", "--python", "/usr/bin/python3", "-c", "1")
    assert bare.returncode == 2
    assert "h0: chorus is not installed for /usr/bin/python3" in bare.stderr
    assert_no_orphans(switch_hosts)


def test_address_the_host_does_not_have(switch_hosts: EmulatedHosts, tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    # h1 is told to listen on h0's address: the agent cannot bind it.
    wrong = [{"ssh": "h0", "ips": [switch_hosts.hosts[0].address]}]
    wrong.append({"ssh": "h1", "ips": [switch_hosts.hosts[0].address]})
    hostfile.write_text(json.dumps(wrong))
    result = launch(switch_hosts, "--hostfile", str(hostfile), "-c", "print(1)")
    assert result.returncode == 2
    assert f"cannot listen on {switch_hosts.hosts[0].address} on h1" in result.stderr
    assert_no_orphans(switch_hosts)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", "not valid JSON"),
        ("[]", "non-empty list of hosts"),
        ('[{"ips": ["10.0.0.1"]}]', 'host 0: "ssh" must be a non-empty host name'),
        ('[{"ssh": "h0", "ips": ["not-an-ip"]}]', "'not-an-ip' is not an IP address"),
        ('{"backend": "nccl", "hosts": [{"ssh": "h0"}]}', 'backend "nccl" cannot run here'),
    ],
)
def test_malformed_hostfile(tmp_path: Path, content: str, message: str) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "chorus", "launch", "--hostfile", str(hostfile), "-c", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert str(hostfile) in result.stderr or "hostfile" in result.stderr


STALL = """\
import time
import numpy as np
import chorus
group = chorus.init()
chorus.all_sum(np.ones(2))
if group.rank() == 2:
    chorus.barrier()
else:
    time.sleep(120)
"""


def test_a_stall_across_hosts_is_reported_with_each_rank_and_host(
    switch_hosts: EmulatedHosts,
) -> None:
    # The ranks answer "where are you" through their agents and ssh sessions.
    result = launch(switch_hosts, "--hosts", "h0,h1,h2,h3", "--stall-timeout", "4", "-c", STALL)
    assert result.returncode == 124, result.stderr
    err = result.stderr
    assert "verdict: rank 2 waits in barrier #2, which ranks 0,1,3 never made" in err, err
    assert "[0,1,3]  not in a chorus call: runs <module> at <string>:9" in err, err
    assert "chorus-snapshot" not in err + result.stdout
    assert_no_orphans(switch_hosts)


ASKS = """\
import time
import chorus
group = chorus.init()
chorus.barrier()
if group.rank() == 3:
    for _ in range(100):  # until the others are in the barrier
        report = chorus.debug.where()
        if report.verdict.waiting == [0, 1, 2]:
            break
        time.sleep(0.1)
    hosts = [(s.rank, s.host) for s in report.states]
    print("KIND", report.verdict.kind, report.verdict.waiting, hosts, flush=True)
chorus.barrier()
"""


def test_a_remote_rank_asks_where_every_rank_is(switch_hosts: EmulatedHosts) -> None:
    # Rank 3 on h3 asks the launcher through the port its ssh connection forwards back.
    result = launch(switch_hosts, "--hosts", "h0,h1,h2,h3", "-c", ASKS)
    assert result.returncode == 0, result.stderr
    hosts = [(r, f"h{r}") for r in range(4)]
    assert f"[3] KIND missing-call [0, 1, 2] {hosts}" in result.stdout, result
    assert_no_orphans(switch_hosts)


NO_FORWARD = """\
import chorus
group = chorus.init()
try:
    report = chorus.debug.where()
except chorus.debug.WhereUnavailableError as err:
    print("UNAVAILABLE", err.reason, "|", err, flush=True)
else:
    print("ANSWERED", report.verdict.kind, len(report.states), flush=True)
chorus.barrier()
"""


def test_where_names_a_host_whose_sshd_does_not_forward(
    emulated_hosts: EmulatedHostsFactory,
) -> None:
    # h1's sshd refuses port forwarding: its rank cannot reach the launcher's
    # question port, and says why; the job itself runs as ever.
    hosts = emulated_hosts(2, sshd_options={"h1": {"AllowTcpForwarding": "no"}})
    result = launch(hosts, "--hosts", "h0,h1", "-c", NO_FORWARD)
    assert result.returncode == 0, result.stderr
    assert "[0] ANSWERED" in result.stdout, result.stdout
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("[1] ")]
    assert line.startswith("[1] UNAVAILABLE no-forward | "), line
    assert "the ssh server of h1 does not forward a port back" in line, line
    assert "AllowTcpForwarding yes" in line, line
    assert_no_orphans(hosts)
