"""The environment of a rank: CHORUS_* (set by ``chorus launch``) or a scheduler's.

Everything a rank learns from its environment goes through :func:`read_rank_env`,
and everything chorus tells a rank it starts goes through
:meth:`RankEnv.to_environ`, so the rest of the package never spells these
names (one exception: ``import chorus`` checks ``CHORUS_REPORTS`` itself,
as it must never raise on a malformed variable).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from chorus.hostfile import host_of
from chorus.scheduler import SchedulerError, derived_coordinator, derived_token

# Rank and size from a scheduler, in the order they are tried when the
# CHORUS_* variables are absent (Slurm, Open MPI, MPICH/PMI).
_RANK_VARS = ("CHORUS_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_SIZE_VARS = ("CHORUS_WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# Set by an MPI launcher (Open MPI's mpirun; MPICH's hydra; PMIx launchers):
# the mpi backend can only run in processes it started.
_MPI_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
# Ranks of the job on this host, as the MPI launcher counts them.
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")

DEFAULT_TIMEOUT = 60.0
DEFAULT_PEER_TIMEOUT = 15.0
# Calls each group keeps in its flight record (chorus.debug.flight_record).
DEFAULT_FLIGHT_RECORDS = 4096
# Upper bounds of the tuning knobs: what the C++ side holds without overflow
# (microseconds are added to a nanosecond clock; byte counts are size_t).
_MAX_MICROS = 10**12
_MAX_BYTES = 2**63 - 1
_MAX_RANKS = 2**31 - 1


class EnvError(ValueError):
    """A CHORUS_* (or scheduler) variable is malformed; the message names it."""


@dataclass(frozen=True)
class RankEnv:
    """What this process knows about the job it belongs to.

    Attributes
    ----------
    rank, size
        This rank and the world size (``size == 1`` outside any job).
    hosts
        One entry per rank, each a list of ``"ip:port"`` addresses.
    backend
        The backend the launcher asked for (``"any"`` when unset).
    token
        Shared secret every connection proves knowledge of.
    job_id
        Unique per job; names shared-memory segments.
    timeout
        Seconds allowed for set-up (``CHORUS_TIMEOUT``).
    peer_timeout
        Seconds after which a peer whose host acknowledges nothing is
        unreachable (``CHORUS_PEER_TIMEOUT``, TCP backends; a slow or stopped
        peer process still acknowledges and is never declared dead).
    flight_records
        Calls each group keeps in its flight record (``CHORUS_FLIGHT_RECORDS``,
        default 4096; 0 records nothing).
    flight_sites
        Record each call's Python line too (``CHORUS_FLIGHT_SITES=1``; about
        0.1 us a call, so off by default outside the kernel: a running call's
        line is always known, from the rank's stack).
    mpi_launched
        Started by ``mpirun``/``mpiexec`` (the only way the ``mpi`` backend runs).
    local_size
        Ranks on this host according to the MPI launcher, ``None`` when unknown.
    supervisor
        ``CHORUS_SUPERVISOR``: the ``ip:port`` where the launcher or kernel
        answers this rank's questions (:func:`chorus.debug.where`), or
        ``unavailable: <why>``; empty when nothing started the job that can.
    reports
        ``CHORUS_REPORTS``: ``"stderr"`` when the launcher asks "where are
        you?" with SIGURG and reads the answer from stderr.
    shm_spin_us, shm_yield_us
        How long a shm wait spins, then yields the core, before it sleeps on
        the futex (``CHORUS_SHM_SPIN_US``, ``CHORUS_SHM_YIELD_US``; ``None``:
        50 us of spinning when every rank has a core, else 100 us of
        yielding). For measurements, and tests that need every wait to reach
        the futex and its interrupt check.
    shm_cma
        Whether shm ``all_gather``/``broadcast`` may read peers' buffers
        directly with cross-memory attach (``CHORUS_SHM_CMA=0`` turns it off).
    shm_cma_bytes
        Bytes per rank from which they do (``CHORUS_SHM_CMA_BYTES``; ``None``:
        64 KiB).
    tcp_spin_us, tcp_yield_us
        How long the TCP backends (ring, mesh, hier's links between hosts) look
        for traffic, then look and yield the core, before they sleep in
        ``poll()`` (``CHORUS_TCP_SPIN_US``, ``CHORUS_TCP_YIELD_US``; ``None``:
        50 us of spinning when the ranks on this host have a core each, else
        100 us of yielding).
    machine_ranks
        The job's ranks on this rank's machine, whatever host the hostfile
        lists each at (``CHORUS_MACHINE_RANKS``, written by the launcher from
        each host's kernel boot id: emulated hosts and containers can share
        one machine's cores); ``None``: the hostfile's count. Waits spin only
        while these ranks have a core each.
    stream_bytes
        Results of at least this many bytes are copied out with streaming
        stores (``CHORUS_STREAM_BYTES``; ``None``: 4 MiB; 0 streams always).
        Process-wide: one value for every group.
    mpi_libname
        The libmpi the ``mpi`` backend loads (``CHORUS_MPI_LIBNAME``, a name
        for the dynamic linker or a path; ``""``: ``libmpi.so.40``,
        ``libmpi.so``, ``libmpi.so.12``). Process-wide: the library is loaded
        once.
    """

    rank: int = 0
    size: int = 1
    hosts: list[list[str]] = field(default_factory=list)
    backend: str = "any"
    token: str = ""
    job_id: str = ""
    timeout: float = DEFAULT_TIMEOUT
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    coordinator: str | None = None
    verbose: bool = False
    listen_fds: list[int] = field(default_factory=list)
    segment_bytes: int = 0
    flight_records: int = DEFAULT_FLIGHT_RECORDS
    flight_sites: bool = False
    hostname: str = field(default_factory=socket.gethostname)
    mpi_launched: bool = False
    local_size: int | None = None
    supervisor: str = ""
    reports: str = ""
    shm_spin_us: int | None = None
    shm_yield_us: int | None = None
    shm_cma: bool = True
    shm_cma_bytes: int | None = None
    tcp_spin_us: int | None = None
    tcp_yield_us: int | None = None
    machine_ranks: int | None = None
    stream_bytes: int | None = None
    mpi_libname: str = ""

    def to_environ(self, *, with_rank: bool = True) -> dict[str, str]:
        """The ``CHORUS_*`` variables that make :func:`read_rank_env` read this back.

        Knobs at their defaults are left out. ``with_rank=False`` leaves out
        rank and size too, for ranks whose launcher sets its own (mpirun).
        """
        env: dict[str, str] = {}
        if with_rank:
            env["CHORUS_RANK"] = str(self.rank)
            env["CHORUS_WORLD_SIZE"] = str(self.size)
        if self.hosts:
            env["CHORUS_HOSTFILE"] = json.dumps([list(entry) for entry in self.hosts])
        env["CHORUS_BACKEND"] = self.backend
        optional = {
            "CHORUS_TOKEN": self.token,
            "CHORUS_JOB_ID": self.job_id,
            "CHORUS_COORDINATOR": self.coordinator or "",
            "CHORUS_LISTEN_FDS": ",".join(str(fd) for fd in self.listen_fds),
            "CHORUS_SUPERVISOR": self.supervisor,
            "CHORUS_REPORTS": self.reports,
            "CHORUS_MPI_LIBNAME": self.mpi_libname,
        }
        env.update({name: value for name, value in optional.items() if value})
        env["CHORUS_TIMEOUT"] = f"{self.timeout:g}"
        if self.peer_timeout != DEFAULT_PEER_TIMEOUT:
            env["CHORUS_PEER_TIMEOUT"] = f"{self.peer_timeout:g}"
        if self.verbose:
            env["CHORUS_VERBOSE"] = "1"
        if self.segment_bytes:
            env["CHORUS_SEGMENT_BYTES"] = str(self.segment_bytes)
        if self.flight_records != DEFAULT_FLIGHT_RECORDS:
            env["CHORUS_FLIGHT_RECORDS"] = str(self.flight_records)
        if self.flight_sites:
            env["CHORUS_FLIGHT_SITES"] = "1"
        if not self.shm_cma:
            env["CHORUS_SHM_CMA"] = "0"
        tuning = {
            "CHORUS_SHM_SPIN_US": self.shm_spin_us,
            "CHORUS_SHM_YIELD_US": self.shm_yield_us,
            "CHORUS_SHM_CMA_BYTES": self.shm_cma_bytes,
            "CHORUS_TCP_SPIN_US": self.tcp_spin_us,
            "CHORUS_TCP_YIELD_US": self.tcp_yield_us,
            "CHORUS_MACHINE_RANKS": self.machine_ranks,
            "CHORUS_STREAM_BYTES": self.stream_bytes,
        }
        env.update({name: str(value) for name, value in tuning.items() if value is not None})
        return env

    @property
    def in_job(self) -> bool:
        """Whether this process was started as one of several ranks."""
        return self.size > 1

    def shares_hosts(self) -> bool:
        """Whether the ranks span several hosts, some with several ranks.

        A rank's host is the address of its first hostfile entry, as the
        ``hier`` backend groups ranks (so 127.0.0.1 and 127.0.0.2 are two).
        """
        hosts = [host_of(entry[0]) for entry in self.hosts if entry]
        return len(set(hosts)) > 1 and len(hosts) > len(set(hosts))

    def all_hosts_local(self) -> bool:
        """Whether every rank's addresses are loopback or this host's name."""
        if not self.hosts:
            # mpirun says how many ranks share this host; otherwise assume all.
            return self.in_job and self.local_size in (None, self.size)
        local = {"127.0.0.1", "localhost", "::1", self.hostname}
        for entry in self.hosts:
            for address in entry:
                ip = host_of(address)
                if ip not in local and not ip.startswith("127."):
                    return False
        return True


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            return name, value
    return None


def _int_var(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        msg = f"{name}={value!r} is not an integer"
        raise EnvError(msg) from None


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name, "")
    if value == "":
        return default
    if value in ("0", "1"):
        return value == "1"
    msg = f"{name}={value!r} must be 0 or 1"
    raise EnvError(msg)


def _flight_records(env: Mapping[str, str]) -> int:
    if not env.get("CHORUS_FLIGHT_RECORDS"):
        return DEFAULT_FLIGHT_RECORDS
    count = _int_var("CHORUS_FLIGHT_RECORDS", env["CHORUS_FLIGHT_RECORDS"])
    if count < 0:
        msg = f"CHORUS_FLIGHT_RECORDS={count} must be 0 (off) or a number of calls to keep"
        raise EnvError(msg)
    return count


def _bounded_var(env: Mapping[str, str], name: str, unit: str, limit: int) -> int | None:
    """A tuning knob: a whole number of ``unit`` from 0 to ``limit``, ``None`` when unset."""
    if not env.get(name):
        return None
    value = _int_var(name, env[name])
    if not 0 <= value <= limit:
        msg = f"{name}={env[name]!r} must be a number of {unit} from 0 to {limit}"
        raise EnvError(msg)
    return value


def _seconds_var(env: Mapping[str, str], name: str, default: float) -> float:
    if not env.get(name):
        return default
    try:
        seconds = float(env[name])
    except ValueError:
        msg = f"{name}={env[name]!r} is not a number of seconds"
        raise EnvError(msg) from None
    if not math.isfinite(seconds) or seconds <= 0:
        msg = f"{name}={env[name]!r} must be a positive, finite number of seconds"
        raise EnvError(msg)
    return seconds


def parse_hosts(text: str, source: str) -> list[list[str]]:
    """Parse a hostfile list: one entry per rank, each ``"ip:port"`` or a list of them.

    ``source`` names where the text came from, for error messages.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"{source}: not valid JSON ({err})"
        raise EnvError(msg) from None
    if not isinstance(data, list):
        msg = f"{source}: expected a JSON list with one entry per rank"
        raise EnvError(msg)
    hosts: list[list[str]] = []
    for index, entry in enumerate(data):
        addresses = [entry] if isinstance(entry, str) else entry
        if not isinstance(addresses, list) or not addresses:
            msg = f'{source}: entry {index} must be "ip:port" or a non-empty list of them'
            raise EnvError(msg)
        for address in addresses:
            if not isinstance(address, str) or ":" not in address:
                msg = f'{source}: entry {index} has {address!r}, expected "ip:port"'
                raise EnvError(msg)
            port = address.rsplit(":", 1)[1]
            if not port.isdigit() or not 0 < int(port) < 65536:
                msg = f"{source}: entry {index} has {address!r}: bad port"
                raise EnvError(msg)
        hosts.append(list(addresses))
    return hosts


def _read_hosts(value: str) -> list[list[str]]:
    # The launcher passes JSON text; a path to a file is accepted too (as MLX_HOSTFILE).
    if value.lstrip().startswith("["):
        return parse_hosts(value, "CHORUS_HOSTFILE")
    try:
        with open(value, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        msg = f"CHORUS_HOSTFILE={value!r}: cannot read it ({err.strerror})"
        raise EnvError(msg) from None
    return parse_hosts(text, value)


# Variables that were renamed: set under the old name, they would be ignored.
_RENAMED_VARS = {"CHORUS_RING_SPIN_US": "CHORUS_TCP_SPIN_US"}


def read_rank_env(environ: Mapping[str, str] | None = None) -> RankEnv:
    """Build the :class:`RankEnv` of this process from its environment.

    Raises
    ------
    EnvError
        A variable is malformed, or rank and size contradict each other or
        the hostfile; the message names the variable.
    """
    env = os.environ if environ is None else environ
    rank_var = _first(env, _RANK_VARS)
    size_var = _first(env, _SIZE_VARS)
    if rank_var is None and size_var is None:
        return RankEnv()
    if rank_var is None or size_var is None:
        have = (rank_var or size_var or ("", ""))[0]
        msg = f"{have} is set but no matching rank/size variable is ({', '.join(_SIZE_VARS)})"
        raise EnvError(msg)
    rank = _int_var(*rank_var)
    size = _int_var(*size_var)
    if size < 1 or not 0 <= rank < size:
        msg = f"{rank_var[0]}={rank} is not a valid rank for {size_var[0]}={size}"
        raise EnvError(msg)

    for old_name, new_name in _RENAMED_VARS.items():
        if old_name in env:
            msg = f"{old_name} is now {new_name}"
            raise EnvError(msg)

    hosts: list[list[str]] = []
    if env.get("CHORUS_HOSTFILE"):
        hosts = _read_hosts(env["CHORUS_HOSTFILE"])
        if len(hosts) != size:
            msg = f"CHORUS_HOSTFILE has {len(hosts)} entries but {size_var[0]}={size}"
            raise EnvError(msg)

    timeout = _seconds_var(env, "CHORUS_TIMEOUT", DEFAULT_TIMEOUT)
    peer_timeout = _seconds_var(env, "CHORUS_PEER_TIMEOUT", DEFAULT_PEER_TIMEOUT)

    listen_fds: list[int] = []
    if env.get("CHORUS_LISTEN_FDS"):
        listen_fds = [_int_var("CHORUS_LISTEN_FDS", v) for v in env["CHORUS_LISTEN_FDS"].split(",")]

    coordinator = env.get("CHORUS_COORDINATOR") or None
    if coordinator is None and not hosts:
        try:
            coordinator = derived_coordinator(env)
        except SchedulerError as err:
            raise EnvError(str(err)) from None
    token = env.get("CHORUS_TOKEN", "")
    if not token and coordinator is not None and not hosts:
        # A scheduler started us and nobody exported a secret: every rank of
        # this job derives the same value (keeps jobs apart; not a secret).
        token = derived_token(env)
    job_id = env.get("CHORUS_JOB_ID", "")
    if not job_id:
        # Ranks started without our launcher still need a name every rank agrees on.
        seed = "|".join([token, env.get("CHORUS_HOSTFILE", ""), str(size)])
        seed += "|" + env.get("SLURM_JOB_ID", env.get("OMPI_MCA_orte_hnp_uri", ""))
        # One-way (the seed holds the token, and the job id names /dev/shm files).
        job_id = hashlib.sha256(b"chorus job id|" + seed.encode()).hexdigest()[:16]

    local = _first(env, _LOCAL_SIZE_VARS)
    local_size = None if local is None else _int_var(*local)
    nodes = _first(env, ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"))
    if local_size is None and nodes is not None and _int_var(*nodes) > 1:
        # srun spread the ranks over several nodes: shared memory cannot join them.
        local_size = 0
    return RankEnv(
        rank=rank,
        size=size,
        hosts=hosts,
        backend=env.get("CHORUS_BACKEND", "") or "any",
        token=token,
        job_id=job_id,
        timeout=timeout,
        peer_timeout=peer_timeout,
        coordinator=coordinator,
        verbose=env.get("CHORUS_VERBOSE", "") not in ("", "0"),
        listen_fds=listen_fds,
        segment_bytes=_int_var("CHORUS_SEGMENT_BYTES", env.get("CHORUS_SEGMENT_BYTES", "0")),
        flight_records=_flight_records(env),
        flight_sites=_flag(env, "CHORUS_FLIGHT_SITES"),
        mpi_launched=_first(env, _MPI_LAUNCHER_VARS) is not None,
        local_size=local_size,
        supervisor=env.get("CHORUS_SUPERVISOR", ""),
        reports=env.get("CHORUS_REPORTS", ""),
        shm_spin_us=_bounded_var(env, "CHORUS_SHM_SPIN_US", "microseconds", _MAX_MICROS),
        shm_yield_us=_bounded_var(env, "CHORUS_SHM_YIELD_US", "microseconds", _MAX_MICROS),
        shm_cma=_flag(env, "CHORUS_SHM_CMA", default=True),
        shm_cma_bytes=_bounded_var(env, "CHORUS_SHM_CMA_BYTES", "bytes", _MAX_BYTES),
        tcp_spin_us=_bounded_var(env, "CHORUS_TCP_SPIN_US", "microseconds", _MAX_MICROS),
        tcp_yield_us=_bounded_var(env, "CHORUS_TCP_YIELD_US", "microseconds", _MAX_MICROS),
        machine_ranks=_bounded_var(env, "CHORUS_MACHINE_RANKS", "ranks", _MAX_RANKS),
        stream_bytes=_bounded_var(env, "CHORUS_STREAM_BYTES", "bytes", _MAX_BYTES),
        mpi_libname=env.get("CHORUS_MPI_LIBNAME", ""),
    )
