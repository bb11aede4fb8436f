"""chorus and its peers across emulated hosts: all_sum over links shaped to 1 Gbit/s.

Run ``python benchmarks/multihost.py [--quick] [--out DIR]`` as root (it creates
network namespaces). Like ``collectives.py`` it re-executes itself with the
Python of the benchmark's virtual environment (``build/bench-venv``, made by
``benchmarks/setup_peers.sh`` when missing). For each layout of
``testbed/emulated_hosts.py`` (``switch``: every host on one bridge;
``ring``: point-to-point cables h0-h1, h1-h2, h2-h3, h3-h0 beside an unshaped
management bridge) it starts 4 emulated hosts whose data links are shaped with
``tc tbf`` to ``--rate`` Mbit/s, and runs one rank per host of:

- chorus ring and chorus mesh (mesh when the venv's chorus has it), started by
  ``chorus launch --hostfile``,
- MLX's ring backend, its ranks started by ``chorus launch --hostfile`` (which
  gives every rank ``MLX_RANK`` and an ``MLX_HOSTFILE`` with the host's first ip),
- PyTorch gloo, its ranks started by ``chorus launch --hostfile`` with the
  rendezvous (``MASTER_ADDR``) at h0's management address,
- Open MPI through mpi4py, ``mpirun --host h0,h1,h2,h3`` over ssh, with its
  default algorithm choice and with the ring all-reduce forced.

Several ranks per host (``--layouts switch-2x2 switch-2x4 switch-4x2``, or
``packed`` for all three; not run by default): H hosts on the switch layout
with k ranks each, packed (ranks 0..k-1 on h0), N = H x k, every all_sum size
of ``collectives.py`` (8 B to 64 MiB; ``--quick``: 8 B and 16 MiB), and
sum_scatter (reduce-scatter) of 16 and 64 MiB per rank where the peer has it
(chorus, Open MPI's ``Reduce_scatter_block``). Peers:

- chorus ring and chorus mesh, flat: chorus's hostfile lists each host k
  times in a row (a host named twice runs two ranks, ``chorus/hostfile.py``),
  so every pair of ranks talks TCP, over loopback inside a host,
- chorus hierarchical (``--backend hier``): shared memory among a host's
  ranks, a mesh between hosts (what ``init("any")`` picks for these layouts),
- PyTorch gloo (ranks started as above),
- Open MPI, ``mpirun --host h0:k,h1:k,... --map-by slot`` with
  ``btl vader,tcp,self`` (shared memory inside a host): its default
  algorithms, the ring all-reduce forced, and HAN (``coll_han_priority 100``,
  Open MPI's own hierarchical collectives),
- MLX's ring only when ``--peers`` names it.

Before the measurement each peer's ranks record their host name (each host's
sshd has a UTS namespace of its own), and a peer placed other than asked is
not measured. Unless ``--no-reference``, the same H hosts first run chorus
ring, chorus mesh and Open MPI with one rank per host (layout ``switch-Hx1``):
the network's cost alone, which a hierarchical all_sum should approach. The
table has a row per size and the time ratios chorus / Open MPI (target: <= 1
at every size) and chorus / one rank per host (target: <= 1.1 at 16 MiB).

Before the peers, plain bulk TCP streams between h0 and h1
(``workers/tcp_stream.py``) measure what one shaped hop carries: tbf counts
whole Ethernet frames, so TCP's payload cannot pass ~0.956 of the rate.

The hosts share this machine's filesystem, so the venv and the repository are
at the same paths on every host. On the ring layout each host forwards IP and
routes the cables it is not on through its neighbours, so the peers that talk
to non-neighbours (Open MPI, gloo, chorus mesh) still work; every byte between
neighbours crosses their own cable. Cases, warm-up, trials, the load sampling
and the noisy-case retry are those of ``collectives.py`` (``workers/``).

Results: ``multihost.md`` (a table per layout) and ``multihost.json`` (every
trial, the hostfiles, routes, qdiscs, placements, load samples and versions)
in ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))

import collectives as bench

from testbed.emulated_hosts import EmulatedHosts

KIB = 1024
MIB = 1024 * KIB
NRANKS = 4
LAYOUTS = ("switch", "ring")
# Several ranks per host, packed (h0's ranks first): name -> (hosts, ranks per host). All
# on the switch layout; each is compared with the same hosts at one rank per host.
PACKED_LAYOUTS = {"switch-2x2": (2, 2), "switch-2x4": (2, 4), "switch-4x2": (4, 2)}
FULL_CASES = [("all_sum", 8), ("all_sum", MIB), ("all_sum", 16 * MIB)]
QUICK_CASES = [("all_sum", 8), ("all_sum", 16 * MIB)]
# The packed layouts report every all_sum size of collectives.py (8 B to 64 MiB), and
# sum_scatter where a host's ranks' blocks cross the network once (hier's own phases).
PACKED_FULL_CASES = [c for c in bench.FULL_CASES if c[0] == "all_sum"] + [
    ("sum_scatter", 16 * MIB),
    ("sum_scatter", 64 * MIB),
]
TARGETS = {"switch": 0.97, "ring": 1.8}  # 16 MiB busbw / link rate, from the issue
# Packed layouts (issue 19): chorus's time <= Open MPI's at every size, and at 16 MiB
# within this factor of chorus's own time with one rank per host.
PACKED_REFERENCE_FACTOR = 1.1
# The backend of hierarchical chorus (shared memory inside a host, the network between
# hosts). A venv whose chorus lacks it lists the peer as unavailable rather than
# standing a flat backend in for it.
HIERARCHICAL_BACKEND: str | None = "hier"
CHORUS_PEERS = ("chorus ring", "chorus mesh", "chorus hierarchical")
# What runs at one rank per host as the packed layouts' reference.
REFERENCE_PEERS = ("chorus ring", "chorus mesh", "openmpi")
OMPI_RING = ["--mca", "coll_tuned_use_dynamic_rules", "1"]
OMPI_RING += ["--mca", "coll_tuned_allreduce_algorithm", "4"]
OMPI_HAN = ["--mca", "coll_han_priority", "100"]
TCP_COUNTERS = ("OutSegs", "InSegs", "RetransSegs")
log = bench.log


# --------------------------------------------------------------------------- hosts


@dataclass
class Site:
    """One layout's started hosts and the addresses every peer is given there.

    ``hostfile`` is chorus's (and MLX's) hostfile: one entry per rank, rank i
    on host hi, or with ``ranks_per_host`` k > 1 (see :meth:`packed`) ranks
    ik..ik+k-1 on host hi. ``btl_subnets`` are the subnets Open MPI's TCP
    transport may use, ``gloo_ifnames`` the interface gloo binds, per rank.
    """

    layout: str
    hosts: EmulatedHosts
    hostfile: list[dict[str, Any]]
    btl_subnets: list[str]
    gloo_ifnames: list[str]
    routes: dict[str, list[str]] = field(default_factory=dict)
    qdiscs: dict[str, str] = field(default_factory=dict)
    ranks_per_host: int = 1

    @property
    def topology(self) -> str:
        """``switch`` or ``ring``: how the hosts are wired (a packed layout's name adds HxK)."""
        return self.layout.split("-")[0]

    @property
    def nranks(self) -> int:
        return len(self.hostfile)

    def packed(self, ranks_per_host: int) -> Site:
        """The same hosts with ``ranks_per_host`` ranks on each, h0's first.

        A host listed k times in a row in chorus's hostfile runs k ranks
        (``chorus/hostfile.py``), as ``mpirun --host h0:k,... --map-by slot`` places them.
        """
        name = f"{self.topology}-{len(self.hosts.hosts)}x{ranks_per_host}"
        return replace(
            self,
            layout=name,
            hostfile=[dict(e) for e in self.hostfile for _ in range(ranks_per_host)],
            gloo_ifnames=[n for n in self.gloo_ifnames for _ in range(ranks_per_host)],
            ranks_per_host=ranks_per_host,
        )

    @property
    def mgmt_subnet(self) -> str:
        """The management network: ssh, Open MPI's out-of-band channel, gloo's store."""
        return str(self.hosts.mgmt_net)

    def describe(self) -> dict[str, Any]:
        """What the JSON records about this layout."""
        return {
            "layout": self.layout,
            "rate_mbit": self.hosts.rate_mbit,
            "mgmt_subnet": self.mgmt_subnet,
            "cable_subnet": str(self.hosts.cable_net) if self.topology == "ring" else None,
            "hosts": len(self.hosts.hosts),
            "ranks_per_host": self.ranks_per_host,
            "nranks": self.nranks,
            "host_addresses": {h.name: h.address for h in self.hosts.hosts},
            "links": [vars(link) for link in self.hosts.links],
            "hostfile": self.hostfile,
            "btl_tcp_if_include": self.btl_subnets,
            "gloo_ifnames": self.gloo_ifnames,
            "routes": self.routes,
            "qdiscs": self.qdiscs,
        }

    def job_pids(self) -> set[int]:
        """Every process on the hosts except their sshd listeners: what jobs started there."""
        found = set()
        for host in self.hosts.hosts:
            for pid in host.pids():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                # The listener renames itself ("sshd: /usr/sbin/sshd -D -e -f ... [listener]").
                if b"sshd" in cmdline and b"-D" in cmdline:
                    continue
                found.add(pid)
        return found

    def tcp_counters(self) -> dict[str, dict[str, int]]:
        """Each host's TCP counters (``/proc/net/snmp`` in its namespace): segments, retransmits."""
        found = {}
        for host in self.hosts.hosts:
            lines = [
                ln.split()
                for ln in host.exec(["cat", "/proc/net/snmp"]).stdout.splitlines()
                if ln.startswith("Tcp:")
            ]
            if len(lines) == 2:
                table = dict(zip(lines[0][1:], lines[1][1:], strict=True))
                found[host.name] = {k: int(table[k]) for k in TCP_COUNTERS if k in table}
        return found

    def clean(self) -> int:
        """Kill what a job left on the hosts (only processes inside our namespaces)."""
        left = self.job_pids()
        for sig, pause in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 0.2)):
            pids = self.job_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids:
                time.sleep(pause)
        return len(left)


def _tcp_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Counter increments per host over a job."""
    return {
        host: {k: v - before.get(host, {}).get(k, 0) for k, v in counters.items()}
        for host, counters in after.items()
    }


def _own_end(link: Any, host: str) -> tuple[str, str]:
    """(interface, address without prefix) of ``host``'s end of a cable."""
    if link.a == host:
        return link.a_if, link.a_ip.split("/")[0]
    return link.b_if, link.b_ip.split("/")[0]


def _route_cables(hosts: EmulatedHosts) -> dict[str, list[str]]:
    """Turn on forwarding and route every cable a host is not on through a neighbour.

    The next hop is the first step of a shortest path (breadth-first over the
    cables) to the nearer end of the cable. Returns the routes added per host.
    """
    names = hosts.names
    neighbours: dict[str, list[tuple[str, Any]]] = {n: [] for n in names}
    for link in hosts.links:
        neighbours[link.a].append((link.b, link))
        neighbours[link.b].append((link.a, link))
    routes: dict[str, list[str]] = {}
    for host in hosts.hosts:
        host.exec(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        # first hop (neighbour name, cable to it) and distance to every host
        first: dict[str, tuple[str, Any] | None] = {host.name: None}
        dist = {host.name: 0}
        queue = collections.deque([host.name])
        while queue:
            at = queue.popleft()
            for nxt, link in neighbours[at]:
                if nxt not in dist:
                    dist[nxt] = dist[at] + 1
                    first[nxt] = first[at] or (nxt, link)
                    queue.append(nxt)
        added = []
        for link in hosts.links:
            if host.name in (link.a, link.b):
                continue
            end = min((link.a, link.b), key=lambda n: dist.get(n, 1 << 30))
            hop = first.get(end)
            if hop is None:
                continue
            via = _own_end(hop[1], hop[0])[1]
            subnet = str(ipaddress.ip_interface(link.a_ip).network)
            host.exec(["ip", "route", "add", subnet, "via", via])
            added.append(f"{subnet} via {via} ({hop[0]})")
        routes[host.name] = added
    return routes


def make_site(layout: str, rate_mbit: int, count: int = NRANKS) -> Site:
    """Start ``count`` emulated hosts in ``layout`` with shaped links; pick every peer's addresses.

    switch: each rank's ip is its host's management address (the shaped veth).
    ring: rank i's ip is its own end of the cable from rank i-1, the address
    rank i-1 dials (chorus ring and MLX connect to the right neighbour), so
    the ring's sockets each sit on one cable and carry both directions.
    """
    hosts = EmulatedHosts(count, layout, rate_mbit=rate_mbit).start()
    try:
        if layout == "switch":
            hostfile = [{"ssh": h.name, "ips": [h.address]} for h in hosts.hosts]
            site = Site(layout, hosts, hostfile, [str(hosts.mgmt_net)], ["eth0"] * count)
        else:
            hostfile, ifnames = [], []
            for i, host in enumerate(hosts.hosts):
                left = hosts.names[(i - 1) % count]
                link = next(c for c in host.links if left in (c.a, c.b) and host.name in (c.a, c.b))
                ifname, ip = _own_end(link, host.name)
                hostfile.append({"ssh": host.name, "ips": [ip]})
                ifnames.append(ifname)
            site = Site(layout, hosts, hostfile, [str(hosts.cable_net)], ifnames)
            site.routes = _route_cables(hosts)
        for host in hosts.hosts:
            site.qdiscs[host.name] = host.exec(["tc", "qdisc", "show"]).stdout.strip()
        return site
    except BaseException:
        hosts.close()
        raise


def _stream_ends(site: Site) -> tuple[str, str]:
    """The addresses of h0 and h1 that a stream between them uses (the shaped path)."""
    h0, h1 = site.hosts.hosts[0], site.hosts.hosts[1]
    if site.topology == "switch":
        return h0.address, h1.address
    link = next(c for c in h0.links if "h1" in (c.a, c.b))
    return _own_end(link, "h0")[1], _own_end(link, "h1")[1]


def tcp_ceiling(site: Site, seconds: float, timeout: float) -> dict[str, Any]:
    """Goodput of plain bulk TCP streams between h0 and h1, as fractions of the link rate.

    ``one_way``: h0 to h1 alone; ``both_ways``: h0 to h1 and h1 to h0 at once
    (per direction). Ethernet, IP and TCP headers take 66 of every 1514 bytes
    tbf counts, so a stream cannot pass ~0.956 of the rate.
    """
    worker = str(bench.WORKERS / "tcp_stream.py")
    addr = dict(zip(("h0", "h1"), _stream_ends(site), strict=True))
    ns = {h.name: h.netns for h in site.hosts.hosts}
    rate = site.hosts.rate_mbit * 1e6 / 8
    found: dict[str, Any] = {"seconds": seconds}
    for label, pairs in (("one_way", [("h0", "h1")]), ("both_ways", [("h0", "h1"), ("h1", "h0")])):
        procs: list[subprocess.Popen[str]] = []
        try:
            servers = []
            for k, (src, dst) in enumerate(pairs):
                port = str(5201 + k)
                argv = ["ip", "netns", "exec", ns[dst], sys.executable, worker, "serve"]
                server = subprocess.Popen(
                    [*argv, addr[dst], port], stdout=subprocess.PIPE, text=True
                )
                procs.append(server)
                servers.append(server)
                argv = ["ip", "netns", "exec", ns[src], sys.executable, worker, "send"]
                procs.append(subprocess.Popen([*argv, addr[dst], port, str(seconds)]))
            rates = []
            for server in servers:
                out, _ = server.communicate(timeout=timeout)
                rates.append(json.loads(out.splitlines()[-1])["goodput_Bps"] / rate)
            found[label] = [round(r, 4) for r in rates]
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            found[label] = f"failed: {e}"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    return found


class HostsSampler(bench.LoadSampler):
    """:class:`collectives.LoadSampler` that also counts the hosts' processes as the job's.

    Remote ranks run under each host's sshd, not under the launcher, so the
    processes in the hosts' network namespaces are added to "ours".
    """

    def __init__(self, hosts: EmulatedHosts, interval: float = 0.25) -> None:
        super().__init__([], interval)
        self.ns_ids = {h._ns_id for h in hosts.hosts if h._ns_id is not None}

    def _ours(self) -> dict[int, int]:
        table = bench._proc_table()
        roots = list(self.roots)
        for pid in table:
            try:
                st = Path(f"/proc/{pid}/ns/net").stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in self.ns_ids:
                roots.append(pid)
        return {pid: table[pid][1] for pid in bench._descendants(roots, table)}

    def mean(self, start: float, end: float, column: int) -> float | None:
        """Mean of one sample column (2: the job's cores, 3: interrupt cores) over a window."""
        inside = [s[column] for s in self.samples if s[0] >= start and s[0] - self.interval <= end]
        return round(sum(inside) / len(inside), 3) if inside else None


# --------------------------------------------------------------------------- peers


@dataclass(frozen=True)
class Peer:
    """A row of the table: a library, a backend and how its ranks start on the hosts.

    ``backend`` is what ``chorus launch --backend`` gets (the other libraries'
    ranks only use the launcher; None: the backend does not exist yet).
    ``one_per_host``: runs on the one-rank-per-host layouts; ``packed``: runs
    on the several-ranks-per-host layouts unless ``--peers`` names a subset.
    ``ops``: the collectives its worker runs (gloo and MLX's CPU ring have
    no reduce-scatter).
    """

    name: str
    launcher: str
    worker: str
    backend: str | None = "ring"
    one_per_host: bool = True
    packed: bool = True
    ops: tuple[str, ...] = ("all_sum", "all_gather", "sum_scatter")

    def commands(
        self,
        site: Site,
        venv: Path,
        config: str,
        tmp: Path,
        port: int,
        chorus_env: list[str] | None = None,
        script: Path | None = None,
    ) -> list[tuple[list[str], dict[str, str]]]:
        """The launcher's command line and environment (HOME = the hosts' ssh config).

        ``script`` replaces the worker (the placement probe).
        """
        py = str(venv / "bin" / "python")
        worker = str(script or bench.WORKERS / self.worker)
        env = site.hosts.env(bench._base_env())
        k = site.ranks_per_host
        if self.name.startswith("openmpi"):
            env.update(
                {
                    # OpenSSH reads ~/.ssh/config from the passwd entry, not $HOME.
                    "OMPI_MCA_plm_rsh_agent": f"ssh -F {site.hosts.ssh_config}",
                    "OMPI_ALLOW_RUN_AS_ROOT": "1",
                    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                    "BENCH_CONFIG": config,
                }
            )
            if k == 1:
                argv = ["mpirun", "--host", ",".join(site.hosts.names)]
            else:
                # k slots per host, filled host by host: ranks 0..k-1 on h0, as chorus's hostfile.
                argv = ["mpirun", "--host", ",".join(f"{h}:{k}" for h in site.hosts.names)]
                argv += ["--map-by", "slot"]
            argv += ["-n", str(site.nranks)]
            argv += ["--bind-to", "none", "--wdir", str(tmp)]
            # Ranks on one host talk through shared memory (vader), as on a real cluster.
            argv += ["--mca", "btl", "tcp,self" if k == 1 else "vader,tcp,self"]
            argv += ["--mca", "btl_tcp_if_include", ",".join(site.btl_subnets)]
            argv += ["--mca", "oob_tcp_if_include", site.mgmt_subnet]
            # 4 ranks share this machine's cores: waiting ranks must give them away.
            argv += ["--mca", "mpi_yield_when_idle", "1"]
            argv += ["-x", "BENCH_CONFIG", "-x", "PYTHONUNBUFFERED"]
            if self.name == "openmpi (ring forced)":
                argv += OMPI_RING
            if self.name == "openmpi (han)":
                argv += OMPI_HAN
            return [([*argv, py, worker], env)]
        if self.backend is None:
            msg = f"{self.name}: no chorus backend selects it yet"
            raise RuntimeError(msg)
        hostfile = tmp / f"hosts-{site.layout}.json"
        hostfile.write_text(json.dumps(site.hostfile))
        argv = [str(venv / "bin" / "chorus"), "launch", "--hostfile", str(hostfile)]
        argv += ["--backend", self.backend, "--python", py, "--cwd", str(tmp), "--no-prefix"]
        argv += ["--env", f"BENCH_CONFIG={config}"]
        if self.name in CHORUS_PEERS:
            for setting in chorus_env or []:
                argv += ["--env", setting]
        if self.name == "torch gloo":
            master = site.hosts.hosts[0].address
            argv += ["--env", f"MASTER_ADDR={master}", "--env", f"MASTER_PORT={port}"]
            argv += ["--env", f"BENCH_GLOO_IFNAMES={json.dumps(site.gloo_ifnames)}"]
        return [([*argv, worker], env)]

    def started_by(self, host_names: list[str], k: int) -> str:
        """How the ranks start with ``k`` ranks per host, for the packed layouts' table."""
        if self.name.startswith("openmpi"):
            hosts = ",".join(f"{h}:{k}" for h in host_names)
            extra = {"openmpi (ring forced)": ", ring all-reduce forced", "openmpi (han)": ", HAN"}
            return (
                f"mpirun --host {hosts} --map-by slot, btl vader,tcp,self{extra.get(self.name, '')}"
            )
        how = f"chorus launch --hostfile (each host {k}x) --backend {self.backend}"
        return how + (", MASTER_ADDR=h0" if self.name == "torch gloo" else "")


PEERS = [
    Peer("chorus ring", "chorus launch --hostfile --backend ring", "chorus_worker.py"),
    Peer("chorus mesh", "chorus launch --hostfile --backend mesh", "chorus_worker.py", "mesh"),
    # Shared memory inside a host, TCP between hosts: only meaningful with several ranks per
    # host (unavailable when the venv's chorus lacks HIERARCHICAL_BACKEND).
    Peer(
        "chorus hierarchical",
        f"chorus launch --hostfile --backend {HIERARCHICAL_BACKEND or '(not yet)'}",
        "chorus_worker.py",
        HIERARCHICAL_BACKEND,
        one_per_host=False,
    ),
    # Optional on the packed layouts (--peers): 30-45 ms per 8-byte all_sum here.
    Peer(
        "mlx ring",
        "chorus launch --hostfile (MLX_RANK, MLX_HOSTFILE)",
        "mlx_worker.py",
        packed=False,
        ops=("all_sum", "all_gather"),
    ),
    Peer(
        "torch gloo",
        "chorus launch --hostfile (RANK, MASTER_ADDR=h0)",
        "torch_worker.py",
        ops=("all_sum", "all_gather"),
    ),
    Peer("openmpi", "mpirun --host h0,h1,h2,h3", "mpi_worker.py"),
    Peer("openmpi (ring forced)", "mpirun ... coll_tuned_allreduce_algorithm 4", "mpi_worker.py"),
    # Open MPI's own hierarchical collectives (HAN: shared memory inside a host, then the
    # network), which Open MPI 4.1 leaves off unless asked; only on the packed layouts.
    Peer("openmpi (han)", "mpirun ... coll_han_priority 100", "mpi_worker.py", one_per_host=False),
]


def peers_for(layout: str, chosen: list[str] | None) -> list[Peer]:
    """The peers that run on ``layout``: ``--peers`` if given (those that fit it), else the defaults."""
    packed = layout in PACKED_LAYOUTS
    fits = [p for p in PEERS if (p.one_per_host or packed)]
    if chosen is not None:
        return [p for p in fits if p.name in chosen]
    return [p for p in fits if p.packed or not packed]


# --------------------------------------------------------------------------- measuring


def measure_peer(
    peer: Peer,
    site: Site,
    sampler: HostsSampler,
    cases: list[tuple[str, int]],
    args: argparse.Namespace,
    tmp: Path,
    port: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run one peer on one layout; retry noisy or missing cases once. Returns (jobs, cases)."""
    jobs: list[dict[str, Any]] = []
    best: dict[tuple[str, int], dict[str, Any]] = {}
    cases = [c for c in cases if c[0] in peer.ops]
    todo = list(cases)
    for attempt in (1, 2):
        if not todo:
            break
        config = {"cases": todo, "trials": args.trials, "target_s": args.target, "warmup": 3}
        before = bench.wait_quiet(args.quiet_wait * attempt, args.noise)
        commands = peer.commands(
            site, args.venv, json.dumps(config), tmp, port + attempt, args.chorus_env
        )
        tcp_before = site.tcp_counters()
        job = bench.Job(peer.name, commands, args.timeout).run(sample=False)
        leftovers = site.clean()
        tcp = _tcp_delta(tcp_before, site.tcp_counters())
        records = job.records()
        status = "ok" if job.ok else ("TIMEOUT" if job.timed_out else f"rc={job.returncodes}")
        log(
            f"  {site.layout:6s} {peer.name:22s} attempt {attempt}: {len(records)}/{len(todo)} "
            f"cases, {job.wall_s:.1f} s, {status}, background before {before:.2f} cores"
        )
        if not job.ok:
            log("    " + job.tail().replace("\n", "\n    "))
        jobs.append(
            {
                "layout": site.layout,
                "peer": peer.name,
                "attempt": attempt,
                "cases": todo,
                "argv": [c[0] for c in commands],
                "returncodes": job.returncodes,
                "timed_out": job.timed_out,
                "wall_s": job.wall_s,
                "leftover_processes_killed": leftovers,
                "tcp_counters": tcp,
                "background_before_cores": before,
                "loadavg_after": bench._loadavg(),
                "output_tail": job.tail(40) if not job.ok else "",
            }
        )
        for rec in records:
            rec.update(bench.summarise(rec))
            rec["peer"] = peer.name
            rec["layout"] = site.layout
            rec["attempt"] = attempt
            rec["link_fraction"] = rec["busbw_gbs"] / args.link_gbs
            rec["background_cores"] = sampler.background(rec["t_start"], rec["t_end"])
            rec["job_cores"] = sampler.mean(rec["t_start"], rec["t_end"], 2)
            rec["interrupt_cores"] = sampler.mean(rec["t_start"], rec["t_end"], 3)
            rec["background_before_cores"] = before
            bench.keep_quietest(best, rec)
        todo = bench.cases_to_retry(cases, best, job.timed_out, args.noise)
    for rec in best.values():
        rec["noisy"] = (rec["background_cores"] or 0) > args.noise
    return jobs, [best[k] for k in sorted(best, key=lambda k: k[1])]


# Says where each rank runs, in a file per rank (the hosts share this machine's filesystem):
# printed lines went missing here now and then under mpirun (ranks that exit at once). The
# rank comes from mpirun's or chorus launch's variables.
PLACEMENT_PROBE = """import os, socket
rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("CHORUS_RANK", "?"))
with open(os.path.join({folder!r}, rank), "w") as f:
    f.write(socket.gethostname() + " " + os.readlink("/proc/self/ns/net"))
"""


def check_placement(
    peer: Peer, site: Site, args: argparse.Namespace, tmp: Path, port: int
) -> dict[str, Any]:
    """Start ``peer``'s ranks on ``site`` with a probe that records each rank's host name.

    Every host's sshd has its own UTS namespace named after the host, so the
    name says where a rank really runs. ``ok`` when ranks ik..ik+k-1 are on hi.
    """
    folder = Path(tempfile.mkdtemp(prefix="placement-", dir=tmp))
    script = folder / "probe.py"
    script.write_text(PLACEMENT_PROBE.format(folder=str(folder)))
    commands = peer.commands(site, args.venv, "{}", tmp, port, args.chorus_env, script=script)
    job = bench.Job(f"{peer.name} placement", commands, 90).run(sample=False)
    site.clean()
    found: dict[int, list[str]] = {}
    for rank in range(site.nranks):
        try:
            found[rank] = (folder / str(rank)).read_text().split()
        except OSError:
            continue
    hosts = [found.get(r, ["?"])[0] for r in range(site.nranks)]
    want = [str(e["ssh"]) for e in site.hostfile]
    ok = job.ok and hosts == want
    return {
        "hosts": hosts,
        "expected": want,
        "netns": [found.get(r, ["?", "?"])[-1] for r in range(site.nranks)],
        "ok": ok,
        "output_tail": "" if ok else job.tail(20),
    }


def compiled_backends(venv: Path, cwd: Path) -> list[str]:
    """The chorus backends compiled into the venv's chorus (``[]`` when it cannot import)."""
    probe = "import json; from chorus import _core; print(json.dumps(_core.compiled_backends()))"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    try:
        return list(json.loads(out.stdout))
    except json.JSONDecodeError:
        return []


# --------------------------------------------------------------------------- reporting


def _fmt_us(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "—"
    return bench._us(rec["median_us"]) + _marks(rec)


def _marks(rec: dict[str, Any]) -> str:
    mark = "" if rec["check"] == "ok" else " ✗"
    return mark + ("~" if rec.get("noisy") else "")


def layout_table(result: dict[str, Any], layout: str) -> str:
    """One markdown table: a row per peer, then chorus's best against the best peer."""
    meta = result["meta"]
    sizes = sorted({b for _, b in meta["cases"]})
    big = max(sizes)
    by = {(c["peer"], c["bytes"]): c for c in result["cases"] if c["layout"] == layout}
    head = ["peer", "started by", "8 B latency (us)"]
    head += [f"{bench._size(b)} busbw (GB/s)" for b in sizes if b > 8]
    head += [f"{bench._size(big)} busbw / link rate", f"{bench._size(big)} CPU (cores)"]
    head += ["TCP retransmits / segments"]
    jobs = {(j["peer"], j["attempt"]): j for j in result["jobs"] if j["layout"] == layout}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = meta.get("layout_peers", {}).get(layout, meta["peers"])
    for peer in PEERS:
        if peer.name not in shown:
            continue
        missing = meta["unavailable"].get(peer.name)
        row = [peer.name, f"`{peer.launcher}`"]
        if missing:
            lines.append("| " + " | ".join(row + [missing] * (len(head) - 2)) + " |")
            continue
        row.append(_fmt_us(by.get((peer.name, 8))))
        for b in sizes:
            if b > 8:
                rec = by.get((peer.name, b))
                row.append("—" if rec is None else f"{rec['busbw_gbs']:.3f}{_marks(rec)}")
        rec = by.get((peer.name, big))
        row.append("—" if rec is None else f"**{rec['link_fraction']:.2f}**{_marks(rec)}")
        row.append(_cpu(rec))
        row.append(_retransmits(None if rec is None else jobs.get((peer.name, rec["attempt"]))))
        lines.append("| " + " | ".join(row) + " |")
    ratio = ["**chorus / best peer**", "best chorus backend over best other"]
    for b in sizes:
        mine = [by[(p, b)] for p in CHORUS_PEERS if (p, b) in by]
        theirs = [c for (p, bb), c in by.items() if bb == b and p not in CHORUS_PEERS]
        if not mine or not theirs:
            ratio.append("—")
            continue
        if b == 8:  # latency: time ratio, below 1 chorus is faster
            a = min(mine, key=lambda r: r["median_us"])
            o = min(theirs, key=lambda r: r["median_us"])
            ratio.append(f"{a['median_us'] / o['median_us']:.2f} ({_short(a)} / {o['peer']})")
        else:  # bandwidth: busbw ratio, above 1 chorus is faster
            a = max(mine, key=lambda r: r["busbw_gbs"])
            o = max(theirs, key=lambda r: r["busbw_gbs"])
            ratio.append(f"{a['busbw_gbs'] / o['busbw_gbs']:.2f} ({_short(a)} / {o['peer']})")
    ratio += ["", "", ""]
    lines.append("| " + " | ".join(ratio) + " |")
    return "\n".join(lines)


def _cpu(rec: dict[str, Any] | None) -> str:
    """``job + interrupt / background`` cores while the case ran."""
    if rec is None or rec.get("job_cores") is None:
        return "—"
    return f"{rec['job_cores']:.2f} + {rec['interrupt_cores']:.2f} / {rec['background_cores']:.2f}"


def _retransmits(job: dict[str, Any] | None) -> str:
    """TCP segments retransmitted / sent on all hosts during the job (every case of it)."""
    if job is None or not job.get("tcp_counters"):
        return "—"
    counters = job["tcp_counters"].values()
    sent = sum(c.get("OutSegs", 0) for c in counters)
    return f"{sum(c.get('RetransSegs', 0) for c in counters)} / {sent / 1e6:.2f} M"


def _short(rec: dict[str, Any]) -> str:
    return str(rec["peer"]).removeprefix("chorus ")


def targets(result: dict[str, Any], layout: str) -> str:
    """Whether chorus's best 16 MiB busbw reaches the issue's target on ``layout``."""
    big = max(b for _, b in result["meta"]["cases"])
    mine = [
        c
        for c in result["cases"]
        if c["layout"] == layout and c["bytes"] == big and c["peer"] in CHORUS_PEERS
    ]
    goal = TARGETS[layout]
    if not mine:
        return f"Target: {big // MIB} MiB busbw >= {goal} x link rate: no chorus result."
    best = max(mine, key=lambda r: r["link_fraction"])
    verdict = "met" if best["link_fraction"] >= goal else "not met"
    text = (
        f"Target: {bench._size(big)} busbw >= {goal} x link rate; chorus's best is "
        f"{best['peer']} at {best['link_fraction']:.3f}: **{verdict}**"
    )
    limit = _ceiling(result["meta"]["sites"].get(layout, {}).get("tcp_ceiling"), layout)
    if limit:
        text += f" ({best['link_fraction'] / limit:.0%} of the TCP ceiling {limit:.3f}"
        text += "; the target is above it)" if goal > limit else ")"
    return text + "."


def _ceiling(ceiling: dict[str, Any] | None, layout: str) -> float | None:
    """The busbw ceiling (fraction of the link rate) that the bulk TCP streams measured."""
    if not ceiling:
        return None
    one, both = ceiling.get("one_way"), ceiling.get("both_ways")
    if layout == "switch":
        return float(one[0]) if isinstance(one, list) else None
    return float(sum(both)) if isinstance(both, list) else None


def ceiling_text(ceiling: dict[str, Any] | None, layout: str) -> str:
    """One sentence on what plain TCP gets through one shaped hop here."""
    if not ceiling:
        return "TCP ceiling: not measured."
    one, both = ceiling.get("one_way"), ceiling.get("both_ways")
    if not isinstance(one, list) or not isinstance(both, list):
        return f"TCP ceiling: {ceiling}"
    best = _ceiling(ceiling, layout) or 0.0
    what = "one direction" if layout == "switch" else "both directions of a cable at once"
    return (
        f"Ceiling: one bulk TCP stream h0 -> h1 gets {one[0]:.3f} of the link rate; "
        f"h0 -> h1 and h1 -> h0 at once get {both[0]:.3f} + {both[1]:.3f} (headers take 66 "
        "of each 1514-byte frame tbf counts: 1448/1514 = 0.956). An all_sum whose busiest "
        f"link carries its bus bytes in {what} cannot pass **{best:.2f}** here."
    )


def _cell(rec: dict[str, Any] | None) -> str:
    """``time · busbw`` as in collectives.md."""
    if rec is None:
        return "—"
    return f"{bench._us(rec['median_us'])} us · {rec['busbw_gbs']:.3f}{_marks(rec)}"


def _fastest(recs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(recs, key=lambda r: r["median_us"]) if recs else None


def packed_rows(result: dict[str, Any], layout: str) -> list[dict[str, Any]]:
    """Per op and size (all_sum first): the best chorus, the best Open MPI, and chorus's
    best at one rank per host."""
    meta = result["meta"]
    ref = meta["sites"][layout].get("reference_layout", "")
    cases = {(op, b) for op, b in meta.get("packed_cases", meta["cases"])}
    rows = []
    for op, b in sorted(cases, key=lambda c: (c[0] != "all_sum", c[0], c[1])):
        here = [
            c
            for c in result["cases"]
            if c["layout"] == layout and c["bytes"] == b and c["op"] == op
        ]
        there = [
            c for c in result["cases"] if c["layout"] == ref and c["bytes"] == b and c["op"] == op
        ]
        rows.append(
            {
                "op": op,
                "bytes": b,
                "by_peer": {c["peer"]: c for c in here},
                "chorus": _fastest([c for c in here if c["peer"] in CHORUS_PEERS]),
                "openmpi": _fastest([c for c in here if c["peer"].startswith("openmpi")]),
                "ref_chorus": _fastest([c for c in there if c["peer"] in CHORUS_PEERS]),
                "ref_openmpi": _fastest([c for c in there if c["peer"].startswith("openmpi")]),
            }
        )
    return rows


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if a is None or b is None:
        return "—"
    return f"{a['median_us'] / b['median_us']:.2f} ({_short(a)} / {_short(b)})"


def packed_table(result: dict[str, Any], layout: str) -> str:
    """Rows are sizes; a column per peer (``time · busbw``), the one-rank-per-host
    reference on the same hosts, and the time ratios the targets are about."""
    meta = result["meta"]
    site = meta["sites"][layout]
    count = site["hosts"]
    shown = [p for p in PEERS if p.name in meta.get("layout_peers", {}).get(layout, [])]
    head = ["op", "bytes per rank", *[p.name for p in shown]]
    head += [f"1 rank/host: chorus best ({count}x1)", f"1 rank/host: openmpi ({count}x1)"]
    head += ["**chorus / openmpi**", "**chorus / 1 rank/host**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in packed_rows(result, layout):
        cells = [row["op"], bench._size(row["bytes"])]
        for peer in shown:
            missing = meta["unavailable"].get(peer.name)
            has = row["op"] in peer.ops
            cells.append(missing or (_cell(row["by_peer"].get(peer.name)) if has else "n/a"))
        cells += [_cell(row["ref_chorus"]), _cell(row["ref_openmpi"])]
        cells += [_ratio(row["chorus"], row["openmpi"]), _ratio(row["chorus"], row["ref_chorus"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def packed_peers_table(result: dict[str, Any], layout: str) -> str:
    """How each peer started, where its ranks ran, its CPU and TCP retransmits."""
    meta = result["meta"]
    site = meta["sites"][layout]
    big = max(b for op, b in meta.get("packed_cases", meta["cases"]) if op == "all_sum")
    placed = site.get("placement", {})
    by = {
        c["peer"]: c
        for c in result["cases"]
        if c["layout"] == layout and c["bytes"] == big and c["op"] == "all_sum"
    }
    jobs = {(j["peer"], j["attempt"]): j for j in result["jobs"] if j["layout"] == layout}
    head = ["peer", "started by", "ranks 0.. on (as each rank saw it)"]
    head += [f"{bench._size(big)} CPU (cores)", "TCP retransmits / segments"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in meta.get("layout_peers", {}).get(layout, []):
        peer = next(p for p in PEERS if p.name == name)
        where = placed.get(name)
        hosts = "—" if where is None else " ".join(where["hosts"]) + ("" if where["ok"] else " ✗")
        rec = by.get(name)
        job = None if rec is None else jobs.get((name, rec["attempt"]))
        how = meta["unavailable"].get(name) or peer.started_by(
            list(site["host_addresses"]), site["ranks_per_host"]
        )
        lines.append(f"| {name} | {how} | {hosts} | {_cpu(rec)} | {_retransmits(job)} |")
    return "\n".join(lines)


def packed_targets(result: dict[str, Any], layout: str) -> str:
    """The issue's two targets for a packed layout, and what a flat ring can reach at best."""
    site = result["meta"]["sites"][layout]
    count, k = site["hosts"], site["ranks_per_host"]
    n = count * k
    # The targets are about all_sum.
    rows = [r for r in packed_rows(result, layout) if r["op"] == "all_sum"]
    slower = [
        f"{bench._size(r['bytes'])} ({r['chorus']['median_us'] / r['openmpi']['median_us']:.2f}x)"
        for r in rows
        if r["chorus"] and r["openmpi"] and r["chorus"]["median_us"] > r["openmpi"]["median_us"]
    ]
    both = [r for r in rows if r["chorus"] and r["openmpi"]]
    if not both:
        first = "Target chorus <= Open MPI's time at every size: no result to compare."
    elif slower:
        first = (
            "Target chorus <= Open MPI's time at every size: **not met**, slower at "
            + ", ".join(slower)
            + "."
        )
    else:
        first = "Target chorus <= Open MPI's time at every size: **met**."
    big = [r for r in rows if r["bytes"] == 16 * MIB]
    factor = result["meta"].get("packed_reference_factor", PACKED_REFERENCE_FACTOR)
    if big and big[0]["chorus"] and big[0]["ref_chorus"]:
        r = big[0]
        ratio = r["chorus"]["median_us"] / r["ref_chorus"]["median_us"]
        verdict = "met" if ratio <= factor else "not met"
        second = (
            f"Target 16 MiB within {factor}x of one rank per host: {_short(r['chorus'])} "
            f"{bench._us(r['chorus']['median_us'])} us against {_short(r['ref_chorus'])} "
            f"{bench._us(r['ref_chorus']['median_us'])} us on {count}x1: {ratio:.2f}x, **{verdict}**."
        )
    else:
        second = f"Target 16 MiB within {factor}x of one rank per host: no result to compare."
    # A flat ring (ranks packed per host) sends 2(N-1)/N of the bytes through each host's
    # link each way; one rank per host (or a hierarchical all_sum) sends 2(H-1)/H.
    floor = (n - 1) / n * count / (count - 1) if count > 1 else float("nan")
    third = (
        f"With {k} ranks on each of {count} hosts a flat ring moves 2(N-1)/N = {2 * (n - 1) / n:.2f}x "
        f"the bytes per rank through each host's link each way, against 2(H-1)/H = "
        f"{2 * (count - 1) / count:.2f}x with one rank per host: at 16 MiB it cannot come "
        f"closer than {floor:.2f}x the reference; only a hierarchical all_sum (shared memory "
        "inside a host, one rank per host on the network) can."
    )
    return f"{first}\n\n{second}\n\n{third}"


def packed_section(result: dict[str, Any], layout: str) -> str:
    """A packed layout's heading, set-up, tables and targets."""
    meta = result["meta"]
    site = meta["sites"].get(layout)
    if site is None:
        return f"## {layout} layout\n\nNot run (see Failed jobs)."
    count, k = site["hosts"], site["ranks_per_host"]
    ref = site.get("reference_layout") or ""
    ips = ", ".join(f"{h} {ip}" for h, ip in site["host_addresses"].items())
    text = [
        f"## {layout} layout: {count} hosts x {k} ranks (N = {count * k})",
        "",
        f"{count} hosts on one bridge, each host's veth shaped both ways ({ips}); ranks "
        f"0-{k - 1} on h0, {k}-{2 * k - 1} on h1, and so on. chorus's hostfile lists each host "
        f"{k} times in a row, so chorus ring and mesh run flat: TCP between every pair of "
        "ranks, over loopback inside a host. Open MPI: `--host "
        + ",".join(f"{h}:{k}" for h in site["host_addresses"])
        + " --map-by slot`, `btl vader,tcp,self` (shared memory inside a host), "
        f"`btl_tcp_if_include {','.join(site['btl_tcp_if_include'])}`. "
        + (
            f"The one-rank-per-host columns are the same {count} hosts with one rank each "
            f"(N = {count}, layout `{ref}`), the cost of the network alone."
            if ref
            else "No one-rank-per-host reference was run (`--no-reference`)."
        )
        + " Cells: `time per op · busbw (GB/s)`; ratios are time ratios (below 1: chorus faster).",
        "",
        ceiling_text(site.get("tcp_ceiling"), "switch"),
        "",
        packed_table(result, layout),
        "",
        packed_peers_table(result, layout),
        "",
        packed_targets(result, layout),
    ]
    return "\n".join(text)


def report(result: dict[str, Any]) -> str:
    """The markdown report."""
    meta = result["meta"]
    v = meta["versions"]
    setup = (
        f"{meta['started']}; {v.get('cpu_model')} ({v.get('cpu_count')} cores, shared by all "
        f"hosts), Linux {v.get('kernel')}; chorus {v.get('chorus_git_sha', '')[:12]}"
        f"{' (dirty)' if v.get('chorus_git_dirty') else ''}, torch {v.get('torch')}, "
        f"mlx {v.get('mlx')}, mpi4py {v.get('mpi4py')} on {v.get('mpirun')}; "
        f"python {v.get('python')}, numpy {v.get('numpy')}."
    )
    any_packed = any(lay in PACKED_LAYOUTS for lay in meta["layouts"])
    packed_note = (
        " (the packed layouts below: several hosts and ranks per host)" if any_packed else ""
    )
    how = (
        f"{NRANKS} emulated hosts (network namespaces, one sshd each), one rank per host"
        f"{packed_note}; "
        f"data links shaped with `tc tbf` to {meta['rate_mbit']} Mbit/s "
        f"(link rate {meta['link_gbs']} GB/s) in both directions. float32 all_sum "
        "(and sum_scatter on the packed layouts); "
        f"mode {'quick' if meta['quick'] else 'full'}: {meta['trials']} trials of "
        f"~{meta['target_s']} s per case; a cell is the median over trials of the time per op "
        "(slowest rank per trial); busbw = algbw x 2(N-1)/N for all_sum, x (N-1)/N for "
        "sum_scatter, whose algbw counts the input (1 GB = 1e9 B). "
        f"`~`: more than {meta['noise_cores']} background cores busy even after a retry; "
        "`✗`: wrong result. Last row: chorus's best backend over the best other peer, as a "
        "time ratio at 8 B (below 1: chorus faster) and a busbw ratio for bandwidth "
        "(above 1: chorus faster). CPU: cores used by the job's processes (launchers, "
        "sshd sessions, ranks) + interrupt (softirq: the veths, bridge and qdiscs) / "
        f"everything else on the machine, while the {bench._size(max(b for _, b in meta['cases']))} "
        f"case ran; the {v.get('cpu_count')} cores are all there is for all hosts. TCP "
        "retransmits / segments: summed over the hosts for the whole job that gave the "
        "row (all its cases); tbf drops what overflows its 50 ms queue."
    )
    out = ["# chorus across emulated hosts", "", setup, "", how]
    notes = {
        "switch": (
            "Every host's veth into one bridge, shaped both ways (host to switch and "
            "switch to host). Ranks use the management addresses: {ips}. Open MPI: "
            "`btl_tcp_if_include {btl}`."
        ),
        "ring": (
            "Cables h0-h1, h1-h2, h2-h3, h3-h0 (each end shaped; the management bridge, "
            "used only for ssh, Open MPI's out-of-band channel and gloo's store, is not). "
            "Rank i's ip is its own end of the cable from rank i-1: {ips}, so each ring "
            "link is one TCP connection on one cable. Hosts forward IP and route the "
            "cables they are not on through a neighbour (Open MPI, gloo and mesh also talk "
            "to the rank opposite, two cables away). Open MPI: `btl_tcp_if_include {btl}`."
        ),
    }
    for layout in meta["layouts"]:
        if layout in PACKED_LAYOUTS:
            out += ["", packed_section(result, layout)]
            continue
        if layout not in meta["sites"]:
            continue
        site = meta["sites"][layout]
        ips = ", ".join(f"{e['ssh']} {e['ips'][0]}" for e in site["hostfile"])
        out += ["", f"## {layout} layout", ""]
        out += [notes[layout].format(ips=ips, btl=",".join(site["btl_tcp_if_include"])), ""]
        out += [ceiling_text(site.get("tcp_ceiling"), layout), ""]
        out += [layout_table(result, layout), "", targets(result, layout)]
    failed = [
        j for j in result["jobs"] if j["timed_out"] or any(rc != 0 for rc in j["returncodes"])
    ]
    if failed or result["errors"]:
        out += ["", "## Failed jobs", ""]
        for j in failed:
            why = "timeout" if j["timed_out"] else f"exit {j['returncodes']}"
            last = (j["output_tail"] or "").strip().splitlines()[-1:] or [""]
            out.append(f"- {j['layout']} {j['peer']} attempt {j['attempt']}: {why}: `{last[0]}`")
        out += [f"- {e}" for e in result["errors"]]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 B and 16 MiB, 2 short trials")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--venv", type=Path, default=bench.DEFAULT_VENV, help="the peers' venv")
    parser.add_argument("--setup", action="store_true", help="(re)run setup_peers.sh first")
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=[*LAYOUTS, *PACKED_LAYOUTS, "packed"],
        default=list(LAYOUTS),
        metavar="LAYOUT",
        help=f"of {', '.join(LAYOUTS)} (one rank per host, the default) and "
        f"{', '.join(PACKED_LAYOUTS)} (hosts x ranks per host); packed = all three",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the packed layouts' one-rank-per-host reference runs",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=[p.name for p in PEERS],
        metavar="PEER",
        help="subset of: " + ", ".join(p.name for p in PEERS),
    )
    parser.add_argument("--rate", type=int, default=1000, help="link rate in Mbit/s (1000)")
    parser.add_argument(
        "--stream-seconds",
        type=float,
        default=4.0,
        help="length of the bulk TCP streams that measure the link's ceiling (4)",
    )
    parser.add_argument(
        "--chorus-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra variable for chorus's ranks, e.g. CHORUS_SEGMENT_BYTES=262144 (repeatable)",
    )
    parser.add_argument("--trials", type=int, help="timed trials per case (default 5)")
    parser.add_argument("--target", type=float, help="seconds per trial (default 1.0)")
    parser.add_argument("--timeout", type=float, help="hard limit per job in s (default 240)")
    parser.add_argument(
        "--noise", type=float, default=0.3, help="background cores that make a case noisy"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="wait up to this many s (twice before a retry) for a quiet machine (default 5)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild multihost.md from multihost.json"
    )
    args = parser.parse_args(argv)
    # "packed" stands for every packed layout; keep the order given, each once.
    named = [lay for x in args.layouts for lay in (PACKED_LAYOUTS if x == "packed" else [x])]
    args.layouts = list(dict.fromkeys(named))
    args.trials = args.trials or (2 if args.quick else 5)
    args.target = args.target or (0.5 if args.quick else 1.0)
    args.timeout = args.timeout or (120 if args.quick else 240)
    args.link_gbs = args.rate * 1e6 / 8 / 1e9
    args.out = args.out.resolve()
    args.venv = args.venv.absolute()
    return args


def run_peers(
    site: Site,
    peers: list[Peer],
    cases: list[tuple[str, int]],
    sampler: HostsSampler,
    args: argparse.Namespace,
    tmp: Path,
    port: int,
    result: dict[str, Any],
) -> int:
    """Measure every peer on ``site`` into ``result``; returns the next free port base.

    On a packed site each peer first proves its placement (:func:`check_placement`);
    a peer whose ranks land elsewhere is not measured.
    """
    unavailable = result["meta"]["unavailable"]
    placements = result["meta"]["sites"][site.layout].setdefault("placement", {})
    for peer in peers:
        if peer.name in unavailable:
            log(f"  {site.layout:10s} {peer.name:22s} {unavailable[peer.name]}")
            continue
        port += 10
        try:
            if site.ranks_per_host > 1:
                placed = check_placement(peer, site, args, tmp, port)
                placements[peer.name] = placed
                log(f"  {site.layout:10s} {peer.name:22s} ranks on {' '.join(placed['hosts'])}")
                if not placed["ok"]:
                    msg = f"ranks on {placed['hosts']}, expected {placed['expected']}"
                    log(f"    placement wrong: {msg}\n    {placed['output_tail']}")
                    result["errors"].append(f"{site.layout} {peer.name}: {msg}")
                    continue
            jobs, recs = measure_peer(peer, site, sampler, cases, args, tmp, port)
        except (OSError, RuntimeError) as e:
            log(f"  {site.layout} {peer.name}: could not run: {e}")
            result["errors"].append(f"{site.layout} {peer.name}: {e}")
            continue
        result["jobs"] += jobs
        result["cases"] += recs
        for rec in recs:
            log(
                f"    {bench._size(rec['bytes']):>7s}: {rec['median_us']:,.0f} us, "
                f"busbw {rec['busbw_gbs']:.3f} GB/s = {rec['link_fraction']:.2f} "
                f"x link, {rec['check']}, background {rec['background_cores']}"
            )
    return port


def site_runs(layouts: list[str], reference: bool) -> list[tuple[str, int, list[int], bool]]:
    """(topology, hosts, ranks per host in run order, packed) per set of hosts to start.

    The one-rank-per-host layouts run as before (4 hosts, 1 rank each). Packed
    layouts with the same number of hosts share one set of hosts, whose
    one-rank-per-host reference (k = 1) runs first.
    """
    runs = [(lay, NRANKS, [1], False) for lay in layouts if lay in LAYOUTS]
    packed: dict[int, list[int]] = {}
    for lay in layouts:
        if lay in PACKED_LAYOUTS:
            count, k = PACKED_LAYOUTS[lay]
            packed.setdefault(count, [1] if reference else []).append(k)
    runs += [("switch", count, ks, True) for count, ks in packed.items()]
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    bench.ensure_venv(args, argv, __file__, "multihost")
    if args.report_only:
        result = json.loads((args.out / "multihost.json").read_text())
        text = report(result)
        (args.out / "multihost.md").write_text(text)
        print(text)
        return 0
    if os.geteuid() != 0:
        log("multihost: must run as root (it creates network namespaces)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    cases = QUICK_CASES if args.quick else FULL_CASES
    packed_cases = QUICK_CASES if args.quick else PACKED_FULL_CASES
    every = {p.name for lay in args.layouts for p in peers_for(lay, args.peers)}
    peers = [p for p in PEERS if p.name in every]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chorus-multihost-") as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)  # never import the checkout's (unbuilt) chorus package by accident
        unavailable: dict[str, str] = {}
        compiled = compiled_backends(args.venv, tmp)
        if "mesh" not in compiled:
            unavailable["chorus mesh"] = "not available"
        if HIERARCHICAL_BACKEND is None:
            unavailable["chorus hierarchical"] = "no such backend yet"
        elif HIERARCHICAL_BACKEND not in compiled:
            unavailable["chorus hierarchical"] = f"backend {HIERARCHICAL_BACKEND!r} not compiled"
        result: dict[str, Any] = {
            "meta": {
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "argv": argv,
                "quick": args.quick,
                "n": NRANKS,
                "layouts": args.layouts,
                "peers": [p.name for p in peers],
                "layout_peers": {
                    lay: [p.name for p in peers_for(lay, args.peers)] for lay in args.layouts
                },
                "launchers": {p.name: p.launcher for p in peers},
                "unavailable": unavailable,
                "rate_mbit": args.rate,
                "chorus_env": args.chorus_env,
                "link_gbs": args.link_gbs,
                "targets_link_fraction": TARGETS,
                "packed_reference_factor": PACKED_REFERENCE_FACTOR,
                "hierarchical_backend": HIERARCHICAL_BACKEND,
                "trials": args.trials,
                "target_s": args.target,
                "noise_cores": args.noise,
                "timeout_s": args.timeout,
                "cases": cases,
                "packed_cases": packed_cases,
                "versions": bench.versions(args.venv),
                "loadavg_start": bench._loadavg(),
                "sites": {},
                "units": "time per op in us (max over ranks per trial); bandwidth GB/s = 1e9 B/s",
            },
            "jobs": [],
            "cases": [],
            "load_samples": {},
            "errors": [],
        }
        log(
            f"multihost: {len(peers)} peers x {args.layouts}, "
            f"links at {args.rate} Mbit/s, results in {args.out}"
        )
        port = 29500
        for topology, count, per_host, packed in site_runs(args.layouts, args.reference):
            name = f"{topology}-{count}x{'/'.join(map(str, per_host))}" if packed else topology
            try:
                base = make_site(topology, args.rate, count)
            except Exception as e:  # noqa: BLE001 - reported, the other layouts still run
                log(f"multihost: could not create the {name} hosts: {e}")
                result["errors"].append(f"{name}: hosts: {e}")
                continue
            sampler = HostsSampler(base.hosts).start()
            try:
                ceiling = tcp_ceiling(base, args.stream_seconds, args.timeout)
                base.clean()
                log(f"{name}: bulk TCP h0<->h1 as a fraction of the link rate: {ceiling}")
                for k in per_host:
                    site = base.packed(k) if packed else base
                    result["meta"]["sites"][site.layout] = site.describe()
                    result["meta"]["sites"][site.layout]["tcp_ceiling"] = ceiling
                    if packed and k > 1:
                        ref = f"{topology}-{count}x1" if args.reference else ""
                        result["meta"]["sites"][site.layout]["reference_layout"] = ref
                    if packed and k == 1:  # the reference of the packed layouts on these hosts
                        on = [p for p in PEERS if p.name in REFERENCE_PEERS]
                        on = [p for p in on if args.peers is None or p.name in args.peers]
                        run_cases = packed_cases
                    else:
                        on = peers_for(site.layout, args.peers)
                        run_cases = packed_cases if packed else cases
                    log(
                        f"{site.layout}: {site.hosts!r}, ranks at {[e['ips'] for e in site.hostfile]}"
                    )
                    port = run_peers(site, on, run_cases, sampler, args, tmp, port, result)
            finally:
                result["load_samples"][name] = sampler.stop()
                base.hosts.close()
    result["meta"]["loadavg_end"] = bench._loadavg()
    result["meta"]["duration_s"] = round(time.perf_counter() - t0, 1)
    text = report(result)
    (args.out / "multihost.md").write_text(text)
    (args.out / "multihost.json").write_text(json.dumps(result, indent=1) + "\n")
    print(text)
    log(
        f"multihost: wrote {args.out}/multihost.md, multihost.json in {result['meta']['duration_s']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
