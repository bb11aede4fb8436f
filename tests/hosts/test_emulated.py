"""Self-test of the emulated hosts: ssh, host keys, hostnames, cables, process tracking, cleanup."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chorus.sshlib import asyncssh
from testbed import emulated_hosts as emulated
from testbed.emulated_hosts import EmulatedHosts, Host
from tests.hosts.fixtures import EmulatedHostsFactory


def ssh(hosts: EmulatedHosts, *args: str) -> list[str]:
    """An OpenSSH command line that uses the emulated hosts' config and never prompts."""
    return ["ssh", "-F", str(hosts.ssh_config), "-o", "BatchMode=yes", *args]


def wait_for(predicate: Callable[[], object], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.02)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def test_ssh_hostname_by_name_and_address(switch_hosts: EmulatedHosts) -> None:
    key = switch_hosts.home / ".ssh" / "id_ed25519"
    commands = {}
    for host in switch_hosts.hosts:
        commands[host.name] = ssh(switch_hosts, host.name, "hostname")
        # By address: the config and known_hosts list every host under its address too.
        commands[host.address] = ssh(
            switch_hosts, "-i", str(key), f"root@{host.address}", "hostname"
        )
    procs = {
        target: subprocess.Popen(argv, stdout=-1, stderr=-1, text=True)
        for target, argv in commands.items()
    }
    try:
        for host in switch_hosts.hosts:
            for target in (host.name, host.address):
                out, err = procs[target].communicate(timeout=30)
                assert procs[target].returncode == 0, err
                assert out.strip() == host.name
    finally:
        for proc in procs.values():
            proc.kill()
            proc.communicate()


def test_asyncssh_uses_home(switch_hosts: EmulatedHosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncssh reads ~/.ssh/config and ~/.ssh/known_hosts from $HOME."""
    monkeypatch.setenv("HOME", str(switch_hosts.home))

    async def hostname(name: str) -> str:
        async with asyncssh.connect(name, connect_timeout=30) as conn:
            result = await conn.run("python3 -c 'import socket; print(socket.gethostname())'")
            return str(result.stdout).strip()

    async def main() -> list[str]:
        return await asyncio.gather(*(hostname(n) for n in switch_hosts.names))

    assert asyncio.run(main()) == switch_hosts.names


def test_ssh_process_shows_in_pids(switch_hosts: EmulatedHosts) -> None:
    host = switch_hosts.hosts[1]
    before = host.pids()
    client = subprocess.Popen(
        ssh(switch_hosts, host.name, "exec sleep 30"), stdout=-1, stderr=-1, text=True
    )
    try:

        def sleeper() -> int | None:
            return next((p for p in host.pids() if cmdline(p) == ["sleep", "30"]), None)

        wait_for(lambda: sleeper() is not None)
        pid = sleeper()
        assert pid is not None
        assert pid not in switch_hosts.hosts[0].pids()
        os.kill(pid, signal.SIGKILL)
        client.communicate(timeout=10)
        # The session's sshd goes with it; only the listening sshd is left.
        wait_for(lambda: host.pids() == before)
    finally:
        client.kill()
        client.communicate()


def test_unknown_host_key_is_refused(switch_hosts: EmulatedHosts, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(switch_hosts.home, home)
    (home / ".ssh" / "known_hosts").write_text("")
    config = home / ".ssh" / "config"
    config.write_text(config.read_text().replace(str(switch_hosts.home), str(home)))
    proc = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "h0", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_ring_neighbours_reachable_over_cables(ring_hosts: EmulatedHosts) -> None:
    # No `ping` on the test machines: a TCP connect to the neighbour's sshd on its cable
    # address proves the cable carries traffic; `ip route get` proves which interface it takes.
    probe = textwrap.dedent(
        """
        import socket, sys
        for addr in sys.argv[1:]:
            with socket.create_connection((addr, 22), timeout=2) as s:
                assert s.recv(4) == b"SSH-", addr
        """
    )
    for host in ring_hosts.hosts:
        assert len(host.links) == 2
        peers = [link.peer(host.name) for link in host.links]
        expected = {f"h{(int(host.name[1:]) + d) % 4}" for d in (1, -1)}
        assert {peer for peer, _, _ in peers} == expected
        for _, ifname, peer_ip in peers:
            route = host.exec(["ip", "route", "get", peer_ip.split("/")[0]]).stdout
            assert f"dev {ifname} " in route
        host.exec([sys.executable, "-c", probe, *(ip.split("/")[0] for _, _, ip in peers)])


def check_gone(hosts: EmulatedHosts) -> None:
    netns = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    for host in hosts.hosts:
        assert host.netns not in netns
        assert host.pids() == set()
    assert hosts.tag not in links  # the bridge and every root-side veth
    assert not hosts.home.exists()


def test_close_removes_everything(emulated_hosts: EmulatedHostsFactory) -> None:
    # A miswired, unaddressed, shaped ring also exercises pairs, address_links and rate_mbit.
    hosts = emulated_hosts(3, "ring", pairs=[(0, 2)], address_links=False, rate_mbit=100)
    h0, h1, h2 = hosts.hosts
    assert h1.links == []
    assert h0.links == h2.links
    link = h0.links[0]
    assert (link.a_ip, link.b_ip) == ("", "")
    assert "inet " not in h0.exec(["ip", "-4", "-o", "addr", "show", link.a_if]).stdout
    assert "tbf" in h2.exec(["tc", "qdisc", "show", "dev", link.b_if]).stdout
    # A stray process that nothing waits for must not survive close().
    stray = subprocess.Popen(
        ssh(hosts, "h2", "nohup sleep 60 >/dev/null 2>&1 & echo started"), stdout=-1, text=True
    )
    assert stray.communicate(timeout=30)[0].strip() == "started"
    wait_for(lambda: any(cmdline(p) == ["sleep", "60"] for p in h2.pids()))
    hosts.close()
    check_gone(hosts)
    hosts.close()  # a second close is a no-op


def test_failed_start_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulated, "SSHD", "/bin/false")
    hosts = EmulatedHosts(2, "ring")
    with pytest.raises(RuntimeError, match=r"sshd for h[01] exited"), hosts:
        pass
    check_gone(hosts)
    hosts.close()


def test_host_exec_and_pids_before_start() -> None:
    host = Host(name="hx", netns="chorus-none", address="10.0.0.1")
    assert host.pids() == set()
    assert host.exec(["true"], check=False).returncode != 0


def test_killed_run_is_reclaimed() -> None:
    """A run killed before close(): its sshds die with it; the next start() removes the rest."""
    script = textwrap.dedent(
        """
        import time
        from testbed.emulated_hosts import EmulatedHosts
        hosts = EmulatedHosts(2, "ring").start()
        print(hosts.tag, *(h.netns for h in hosts.hosts), flush=True)
        time.sleep(60)
        """
    )
    root = Path(__file__).parents[2]
    child = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=-1, text=True)
    try:
        assert child.stdout is not None
        tag, *netns = child.stdout.readline().split()
        st = Path(f"/run/netns/{netns[0]}").stat()
        h0 = Host(name="h0", netns=netns[0], address="", _ns_id=(st.st_dev, st.st_ino))
        assert h0.pids()
    finally:
        child.kill()
        child.communicate()
    wait_for(lambda: h0.pids() == set())  # the sshd had a parent-death signal
    emulated.reclaim_stale()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert tag not in listed.stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
    assert f"c{tag}" not in links.stdout
    assert not list(Path(tempfile.gettempdir()).glob(f"{emulated.TMP_PREFIX}{tag}-*"))
