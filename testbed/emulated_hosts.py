"""Emulated hosts: one network namespace and one real OpenSSH server per host.

Layouts:

* ``"switch"``: each host has one veth (``eth0`` inside) into a Linux bridge in the root
  namespace, which also holds an address on it, so the test process (the "laptop") reaches
  every host by ssh.
* ``"ring"``: the same management bridge (ssh goes over it) plus point-to-point veth
  "cables" between hosts, by default ``(0,1),(1,2),...,(n-1,0)``: an IPv4 /30 each
  (``address_links``), an IPv6 /126 each in a private (ULA) prefix (``ipv6_links``), both,
  or neither (IPv6 link-local only).

Each sshd runs in its host's network namespace and in a fresh UTS namespace whose hostname is
the host's name, so ``socket.gethostname()`` over ssh answers ``"h0"``. ``home`` is a HOME
directory with ``.ssh/config``, a client key and a ``known_hosts`` that pins every host key.
Everything is named from a random tag so parallel runs never collide.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
START_TIMEOUT = 10.0
LAYOUTS = ("switch", "ring")
TMP_PREFIX = "chorus-hosts-"

log = logging.getLogger(__name__)
# Random choices must differ between parallel runs even when a plugin seeds `random`.
_rng = secrets.SystemRandom()


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a setup command; a failure names the command and its stderr."""
    proc = subprocess.run(argv, text=True, capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the root namespace already uses (addresses and routes)."""
    nets: list[ipaddress.IPv4Network] = []
    for entry in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for info in entry.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                nets.append(
                    ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                )
    for route in json.loads(
        _run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"
    ):
        dst = route.get("dst", "default")
        if dst != "default":  # the default route overlaps everything and blocks nothing
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def _pick_subnet(prefix: int, used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random 10.X.Y.0/prefix (prefix 16 or 24) that overlaps nothing in `used`."""
    for _ in range(1000):
        second, third = _rng.randint(1, 254), _rng.randint(0, 255) if prefix > 16 else 0
        net = ipaddress.IPv4Network(f"10.{second}.{third}.0/{prefix}")
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError(f"no free 10.x.x.0/{prefix} subnet in the root namespace")


def _tbf(rate_mbit: int) -> list[str]:
    """`tc qdisc add ... tbf` arguments for a link shaped to rate_mbit."""
    # 10 ms at line rate, and at least 32 KiB so one MTU-sized (or segmented GSO) packet fits.
    burst = max(32 * 1024, rate_mbit * 1_000_000 // 8 // 100)
    return ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "50ms"]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


@dataclass(frozen=True)
class Link:
    """A point-to-point cable between two hosts (ring layout)."""

    a: str
    b: str
    a_if: str
    b_if: str
    a_ip: str  # with prefix, e.g. "10.77.3.1/30"; "" when unaddressed
    b_ip: str
    a_ip6: str = ""  # with prefix, e.g. "fd1a:2b3c:0:3::1/126"; "" when not asked for
    b_ip6: str = ""

    def peer(self, host: str) -> tuple[str, str, str]:
        """(peer name, this host's interface, peer's address) seen from `host`'s end."""
        if host == self.a:
            return self.b, self.a_if, self.b_ip
        if host == self.b:
            return self.a, self.b_if, self.a_ip
        raise ValueError(f"{host} is not on {self}")


@dataclass(eq=False)
class Host:
    """One emulated machine: a network namespace with an sshd in it."""

    name: str
    netns: str
    address: str  # on the management network, no prefix: what ssh connects to
    links: list[Link] = field(default_factory=list)
    mgmt_if: str = "eth0"  # the management interface's name inside the namespace
    _ns_id: tuple[int, int] | None = field(default=None, repr=False)

    def exec(
        self, argv: list[str], *, check: bool = True, timeout: float = 30, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside this host's network namespace (not its UTS namespace)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            text=True,
            capture_output=True,
            check=check,
            timeout=timeout,
            **kwargs,
        )

    def pids(self) -> set[int]:
        """Every live process whose network namespace is this host's."""
        if self._ns_id is None:
            return set()
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                st = (entry / "ns" / "net").stat()
            except OSError:  # gone, or a zombie (its namespaces are already released)
                continue
            if (st.st_dev, st.st_ino) == self._ns_id:
                found.add(int(entry.name))
        return found


class EmulatedHosts:
    """`count` hosts named h0, h1, ... reachable by ssh from the test process.

    Use as a context manager, or call start() and then close() (always safe to call).
    """

    hosts: list[Host]
    names: list[str]
    home: Path

    def __init__(
        self,
        count: int = 4,
        layout: str = "switch",
        *,
        pairs: list[tuple[int, int]] | None = None,
        address_links: bool = True,
        ipv6_links: bool = False,
        rate_mbit: int | None = None,
        sshd_options: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        if not 1 <= count <= 253:
            raise ValueError(f"count must be within 1..253, not {count}")
        if pairs is not None and layout != "ring":
            raise ValueError("pairs only apply to the ring layout")
        if rate_mbit is not None and rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be positive, not {rate_mbit}")
        if layout == "ring" and pairs is None:
            pairs = [(i, (i + 1) % count) for i in range(count)] if count > 1 else []
        for a, b in pairs or []:
            if not (0 <= a < count and 0 <= b < count) or a == b:
                raise ValueError(f"bad cable {(a, b)} for {count} hosts")

        self.count = count
        self.layout = layout
        self.address_links = address_links
        self.rate_mbit = rate_mbit
        # Per host name, sshd_config keywords to set (AllowTcpForwarding: "no").
        self.sshd_options = {name: dict(options) for name, options in (sshd_options or {}).items()}
        self.tag = secrets.token_hex(3)
        self.names = [f"h{i}" for i in range(count)]
        # Interface names in the root namespace must be unique there and <= 15 chars.
        self.bridge = f"c{self.tag}br"
        self._root_veths = [f"c{self.tag}m{i}" for i in range(count)]

        used = _used_networks()
        self.mgmt_net = _pick_subnet(24, used)
        self.cable_net = _pick_subnet(16, [*used, self.mgmt_net])
        self.laptop_address = str(self.mgmt_net.network_address + 254)  # the root side's address

        self.hosts = [
            Host(
                name=name,
                netns=f"chorus-{self.tag}-{name}",
                address=str(self.mgmt_net.network_address + i + 1),
            )
            for i, name in enumerate(self.names)
        ]
        self.links: list[Link] = []
        # A private IPv6 prefix from the tag (fd + 40 bits), a /64 per cable in it.
        cable6 = f"fd{self.tag[:2]}:{self.tag[2:]}:{secrets.token_hex(2)}"
        for k, (a, b) in enumerate(pairs or []):
            base = self.cable_net.network_address + 4 * k
            link = Link(
                a=self.names[a],
                b=self.names[b],
                # Prefixed with the cable's index: unique even when two cables join one pair.
                a_if=f"l{k}-{self.names[b]}",
                b_if=f"l{k}-{self.names[a]}",
                a_ip=f"{base + 1}/30" if address_links else "",
                b_ip=f"{base + 2}/30" if address_links else "",
                a_ip6=f"{cable6}:{k:x}::1/126" if ipv6_links else "",
                b_ip6=f"{cable6}:{k:x}::2/126" if ipv6_links else "",
            )
            self.links.append(link)
            self.hosts[a].links.append(link)
            self.hosts[b].links.append(link)

        self._tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.tag}-"))
        # Lets a later run reclaim what this one leaves behind if it is killed outright.
        (self._tmp / "owner").write_text(_process_id(os.getpid()))
        self.home = self._tmp / "home"
        self.ssh_config = self.home / ".ssh" / "config"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._made_netns: list[str] = []
        self._made_links: list[str] = []  # root-namespace interfaces, the bridge first
        self._started = False
        self._closed = False
        atexit.register(self.close)  # a fallback if close() is never reached

    def __repr__(self) -> str:
        return (
            f"EmulatedHosts({self.count}, {self.layout!r}, tag={self.tag!r}, net={self.mgmt_net})"
        )

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """os.environ (or base) with HOME=self.home, so ssh clients use the emulated config."""
        env = dict(os.environ if base is None else base)
        env["HOME"] = str(self.home)
        return env

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> EmulatedHosts:  # noqa: PYI034 - no Self before Python 3.11
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> EmulatedHosts:
        """Create the network and start every sshd; on failure, undo it all and raise."""
        if self._started or self._closed:
            raise RuntimeError(f"{self!r} was already started")
        self._started = True
        try:
            self._check_prerequisites()
            try:
                reclaim_stale()
            except Exception:  # their leftovers must not stop this run
                log.exception("reclaiming stale emulated hosts")
            self._write_ssh_files()
            self._make_network()
            self._start_sshds()
            self._wait_for_link_local()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every process on the hosts and delete all that start() made. Never raises."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._kill_all()
        except Exception:
            log.exception("killing processes on %r", self)
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.kill()
            try:
                proc.wait(timeout=5)  # reap our own children (no zombies, no ResourceWarning)
            except Exception:
                log.exception("waiting for %s", proc.args)
        # Deleting a root-side veth deletes its peer too; the bridge goes last.
        commands = [["ip", "link", "del", name] for name in reversed(self._made_links)]
        commands += [["ip", "netns", "del", ns] for ns in self._made_netns]
        for argv in commands:
            try:
                _run(argv, check=False)
            except Exception:
                log.exception("%s", argv)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _kill_all(self) -> None:
        # Repeat: a dying sshd may have just forked a session process.
        deadline = time.monotonic() + 5
        while True:
            alive = set().union(*(host.pids() for host in self.hosts))
            alive.discard(os.getpid())
            if not alive:
                return
            if time.monotonic() > deadline:
                log.warning("processes survived SIGKILL on %r: %s", self, sorted(alive))
                return
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    # -- start-up steps ------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        problems = []
        if os.geteuid() != 0:
            problems.append("must run as root (network namespaces, veths, sshd)")
        for tool in ("ip", "ssh-keygen", "unshare", "hostname", "sh"):
            if shutil.which(tool) is None:
                problems.append(f"`{tool}` is not installed")
        if self.rate_mbit is not None and shutil.which("tc") is None:
            problems.append("`tc` is not installed (rate_mbit)")
        if not os.access(SSHD, os.X_OK):
            problems.append(f"{SSHD} is missing (install openssh-server)")
        if problems:
            raise RuntimeError("cannot emulate hosts: " + "; ".join(problems))

    def _host_dir(self, host: Host) -> Path:
        return self._tmp / host.name

    def _write_ssh_files(self) -> None:
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        client_key = ssh_dir / "id_ed25519"
        keygens: list[tuple[list[str], subprocess.Popen[str]]] = []
        key_paths = [(client_key, f"chorus-tests@{self.tag}")]
        for host in self.hosts:
            self._host_dir(host).mkdir()
            key_paths.append((self._host_dir(host) / "ssh_host_ed25519_key", f"root@{host.name}"))
        for path, comment in key_paths:
            argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
            keygens.append(
                (argv, subprocess.Popen(argv, text=True, stdin=subprocess.DEVNULL, stderr=-1))
            )
        for argv, proc in keygens:
            _, err = proc.communicate(timeout=30)
            if proc.returncode != 0:
                raise RuntimeError(f"`{' '.join(argv)}` failed: {err.strip()}")

        (self._tmp / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
        known = []
        config = []
        for host in self.hosts:
            host_pub = (self._host_dir(host) / "ssh_host_ed25519_key.pub").read_text().split()
            # Under the name and the address, so both `ssh h0` and `ssh 10.x.y.1` verify.
            known.append(f"{host.name},{host.address} {host_pub[0]} {host_pub[1]}\n")
            config.append(
                # The address too, so `ssh -F config root@<address>` finds the same settings.
                f"Host {host.name} {host.address}\n"
                f"    HostName {host.address}\n"
                "    User root\n"
                f"    IdentityFile {client_key}\n"
                "    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
                "    StrictHostKeyChecking yes\n"
            )
        (ssh_dir / "known_hosts").write_text("".join(known))
        self.ssh_config.write_text("\n".join(config))

    def _make_network(self) -> None:
        br = self.bridge
        _run(["ip", "link", "add", br, "type", "bridge"])
        self._made_links.append(br)
        _run(["ip", "addr", "add", f"{self.laptop_address}/24", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        # Threads only wait on `ip`/`tc` processes; this overlaps their start-up costs.
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._make_host_net, range(self.count)))
            list(pool.map(self._make_cable, self.links))

    def _make_host_net(self, i: int) -> None:
        host, veth = self.hosts[i], self._root_veths[i]
        ns = host.netns
        _run(["ip", "netns", "add", ns])
        self._made_netns.append(ns)
        st = Path(f"/run/netns/{ns}").stat()
        host._ns_id = (st.st_dev, st.st_ino)
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", host.mgmt_if, "netns", ns])
        self._made_links.append(veth)
        _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        batch = (
            "link set lo up\n"
            f"addr add {host.address}/24 dev {host.mgmt_if}\n"
            f"link set {host.mgmt_if} up\n"
        )
        self._ip_batch(ns, batch)
        if self.rate_mbit is not None and self.layout == "switch":
            _run(["tc", "qdisc", "add", "dev", veth, *_tbf(self.rate_mbit)])
            _run(["tc", "-n", ns, "qdisc", "add", "dev", host.mgmt_if, *_tbf(self.rate_mbit)])

    def _make_cable(self, link: Link) -> None:
        ns = {h.name: h.netns for h in self.hosts}
        ns_a, ns_b = ns[link.a], ns[link.b]
        # Created straight into the two namespaces: no name ever lands in the root namespace.
        add = ["ip", "-n", ns_a, "link", "add", link.a_if, "type", "veth"]
        _run([*add, "peer", "name", link.b_if, "netns", ns_b])
        ends = ((ns_a, link.a_if, link.a_ip, link.a_ip6), (ns_b, link.b_if, link.b_ip, link.b_ip6))
        for netns, ifname, addr, addr6 in ends:
            batch = f"addr add {addr} dev {ifname}\n" if addr else ""
            # nodad: usable at once, as on cables plugged in long ago.
            batch += f"addr add {addr6} dev {ifname} nodad\n" if addr6 else ""
            self._ip_batch(netns, batch + f"link set {ifname} up\n")
            if self.rate_mbit is not None:
                _run(["tc", "-n", netns, "qdisc", "add", "dev", ifname, *_tbf(self.rate_mbit)])

    def _wait_for_link_local(self, timeout: float = 10.0) -> None:
        """Wait until every cable end has a settled IPv6 link-local address.

        The kernel adds it once the link is up and keeps it "tentative" for
        about a second (duplicate address detection); machines whose cables
        were plugged in long ago are past that, and so must the emulation be.
        """
        deadline = time.monotonic() + timeout
        for link in self.links:
            for host_name, ifname in ((link.a, link.a_if), (link.b, link.b_if)):
                netns = next(h.netns for h in self.hosts if h.name == host_name)
                while True:
                    out = _run(
                        [
                            "ip",
                            "-n",
                            netns,
                            "-6",
                            "-o",
                            "addr",
                            "show",
                            "dev",
                            ifname,
                            "scope",
                            "link",
                        ],
                        check=False,
                    ).stdout
                    if "fe80::" in out and "tentative" not in out:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{host_name}:{ifname} has no settled fe80 address: {out!r}"
                        )
                    time.sleep(0.05)

    @staticmethod
    def _ip_batch(ns: str, commands: str) -> None:
        proc = subprocess.run(
            ["ip", "-n", ns, "-batch", "-"],
            input=commands,
            text=True,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ip -n {ns} -batch failed: {proc.stderr.strip()}\n{commands}")

    def _sshd_config(self, host: Host) -> Path:
        d = self._host_dir(host)
        path = d / "sshd_config"
        path.write_text(
            f"HostKey {d / 'ssh_host_ed25519_key'}\n"
            f"ListenAddress 0.0.0.0\nPort {SSH_PORT}\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            f"AuthorizedKeysFile {self._tmp / 'authorized_keys'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            f"PidFile {d / 'sshd.pid'}\n"
            "MaxSessions 64\n"
            "MaxStartups 64\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "X11Forwarding no\n"
            "AcceptEnv LANG LC_*\n"  # as Debian's stock sshd_config
            "Subsystem sftp internal-sftp\n"
            + "".join(f"{k} {v}\n" for k, v in self.sshd_options.get(host.name, {}).items())
        )
        return path

    def _start_sshds(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation
        logs: dict[str, Path] = {}
        # sshd dies with the test process even when that is SIGKILLed. Only from the main
        # thread: the signal fires when the creating *thread* exits.
        pdeathsig: list[str] = []
        if shutil.which("setpriv") and threading.current_thread() is threading.main_thread():
            pdeathsig = ["setpriv", "--pdeathsig", "KILL"]
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for host in self.hosts:
            config = self._sshd_config(host)
            logs[host.name] = self._host_dir(host) / "sshd.log"
            # A fresh UTS namespace so the host's processes see their own hostname.
            script = f"hostname {host.name} && exec {SSHD} -D -e -f {config}"
            argv = ["ip", "netns", "exec", host.netns, "unshare", "--uts", *pdeathsig]
            argv += ["sh", "-c", script]
            with open(logs[host.name], "wb") as out:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # keep terminal signals (Ctrl-C) for the test process
                )
            self._procs.append(proc)
            procs[host.name] = proc

        pending = {host.name: host for host in self.hosts}
        deadline = time.monotonic() + START_TIMEOUT
        while pending:
            for name, host in list(pending.items()):
                if procs[name].poll() is not None:
                    raise RuntimeError(
                        f"sshd for {name} exited ({procs[name].returncode}); "
                        f"log tail:\n{_tail(logs[name])}"
                    )
                if _ssh_banner(host.address):
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                name = next(iter(pending))
                raise RuntimeError(
                    f"sshd for {name} at {pending[name].address}:{SSH_PORT} accepted no "
                    f"connection within {START_TIMEOUT:.0f} s; log tail:\n{_tail(logs[name])}"
                )
            time.sleep(0.02)


def _process_id(pid: int) -> str:
    """pid and start time: still names the same process after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after it.
    return f"{pid} {stat.rpartition(')')[2].split()[19]}"


def reclaim_stale() -> None:
    """Remove what runs killed before their close() left: namespaces, links, sshds, files.

    A run is stale when the process recorded in its temp dir's ``owner`` file is gone.
    """
    for tmp in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        try:
            owner = (tmp / "owner").read_text()
            pid = int(owner.split()[0])
        except (OSError, ValueError, IndexError):
            continue  # being created right now, or not ours
        if _process_id(pid) == owner:
            continue
        tag = tmp.name[len(TMP_PREFIX) :].split("-")[0]
        log.warning("reclaiming emulated hosts %s left by dead process %d", tag, pid)
        netns = [
            line.split()[0]
            for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines()
            if line.startswith(f"chorus-{tag}-")
        ]
        hosts = []
        for ns in netns:
            with contextlib.suppress(OSError):
                st = Path(f"/run/netns/{ns}").stat()
                hosts.append(Host(name=ns, netns=ns, address="", _ns_id=(st.st_dev, st.st_ino)))
        for _ in range(50):
            alive = set().union(*(host.pids() for host in hosts))
            if not alive:
                break
            for victim in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            time.sleep(0.01)
        links = _run(["ip", "-br", "link"], check=False).stdout.splitlines()
        for name in (line.split()[0].split("@")[0] for line in links if line.strip()):
            if name.startswith(f"c{tag}"):
                _run(["ip", "link", "del", name], check=False)
        for ns in netns:
            _run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _ssh_banner(address: str) -> bool:
    """Whether an SSH server answers on address:22 (TCP accepted and a banner sent)."""
    try:
        with socket.create_connection((address, SSH_PORT), timeout=0.5) as sock:
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False
