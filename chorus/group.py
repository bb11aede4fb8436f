"""Groups of ranks and backend initialisation (``chorus.init``).

``init()`` mirrors ``mlx.core.distributed.init``: ``backend="any"`` tries the
backends in order and falls back to a size-1 group when none can run here;
later calls return the first group initialised, so libraries can call
``init()`` freely.

Order tried by ``"any"``: the backend named by ``CHORUS_BACKEND`` (the
launcher sets it), then ``shm`` when every rank is on this host, then
``hier`` when the hostfile puts ranks on several hosts and several ranks on
some host (shared memory inside each host, a mesh between hosts), then
``ring`` when a hostfile or a coordinator (``CHORUS_COORDINATOR``) is
known, then ``mpi`` for ranks that ``mpirun`` started without a chorus
hostfile (see :func:`init`). ``mesh`` (TCP full mesh: any-to-any
``send``/``recv`` with tags, one round trip for small collectives) runs only
when asked for, by ``init("mesh")`` or ``CHORUS_BACKEND=mesh``. A backend
that is available but fails to connect raises: a launched rank silently
running alone would compute wrong answers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
import weakref
from pathlib import Path

from chorus import _core, _mpi
from chorus.backends import RANK_BACKENDS
from chorus.env import RankEnv, read_rank_env

# The flight recorder names the caller's line: frames in chorus's own files are skipped.
_core.set_call_site_package(str(Path(__file__).resolve().parent) + os.sep)

_lock = threading.Lock()
_groups: dict[str, Group] = {}
_live: weakref.WeakSet[Group] = weakref.WeakSet()  # every group not yet collected (reports)
# When this rank's init() began connecting, while it waits for the other ranks (reports).
_setting_up_since: float | None = None
_first: Group | None = None


class Group:
    """A set of ranks that run collectives together.

    Obtain the world group from :func:`init`; sub-groups from :meth:`split`.
    """

    def __init__(self, impl: _core.Group, name: str = "world") -> None:
        #: The compiled group (chorus._core.Group): what the collectives call.
        self.handle = impl
        #: Which group this is, in reports: "world", "world.split1(color=0)", ...
        self.name = name
        self._splits = 0
        _live.add(self)

    def rank(self) -> int:
        """This process's rank within the group (0 .. size-1)."""
        return self.handle.rank()

    def size(self) -> int:
        """Number of ranks in the group."""
        return self.handle.size()

    @property
    def backend(self) -> str:
        """Name of the backend moving this group's bytes."""
        return self.handle.backend

    def split(self, color: int, key: int = -1) -> Group:
        """Split into sub-groups, as ``MPI_Comm_split``.

        Every rank of this group must call it. Ranks passing the same
        ``color`` form one group, ordered by ``key`` (ties and ``key=-1`` by
        their rank in this group).

        Parameters
        ----------
        color
            Non-negative group label.
        key
            Sort key for the new ranks; ``-1`` keeps this group's order.

        Returns
        -------
        Group
            The sub-group this rank belongs to.
        """
        child = self.handle.split(color, key)
        self._splits += 1
        return Group(child, f"{self.name}.split{self._splits}(color={color})")

    def __repr__(self) -> str:
        return f"<chorus.Group rank={self.rank()} size={self.size()} backend={self.backend!r}>"


def _candidates(requested: str, env: RankEnv) -> list[str]:
    if requested != "any":
        return [requested]
    order: list[str] = []
    if env.backend not in ("", "any"):
        order.append(env.backend)
    if env.in_job and env.all_hosts_local():
        order.append("shm")
    if env.in_job and env.shares_hosts():
        order.append("hier")
    if env.hosts or env.coordinator:
        order.append("ring")
    if env.mpi_launched and not env.hosts:
        order.append("mpi")
    return list(dict.fromkeys(order))


def _usable(name: str, env: RankEnv) -> bool:
    if name == "mpi" and not env.mpi_launched:
        return False  # before is_available(), which loads libmpi
    if not env.in_job or not _core.is_available(name):
        return False
    if name in ("ring", "mesh", "hier"):
        # The hostfile, or a rendezvous through rank 0 at the coordinator.
        return bool(env.hosts) or env.coordinator is not None
    if name == "shm":
        return env.all_hosts_local()
    return True


def _why_unusable(name: str, env: RankEnv) -> str:
    """Why backend ``name`` cannot run here, for the error when nothing can."""
    if name == "mpi" and not env.mpi_launched:
        return "mpi: this rank was not started by mpirun/mpiexec"
    if name == "mpi" or not _core.is_available(name):
        return _core.unavailable_reason(name)
    return f"{name}: not usable with this environment"


def _set_process_knobs(env: RankEnv) -> None:
    """Hand the process-wide knobs to the core before any backend needs them.

    Not through ``_core.init``: the mpi backend loads libmpi in
    ``_core.is_available("mpi")`` already, before any group is created.
    """
    _core.set_mpi_library(env.mpi_libname)
    if env.stream_bytes is not None:
        _core.set_stream_bytes(env.stream_bytes)


def _connect(name: str, env: RankEnv) -> Group:
    impl = _core.init(
        name,
        rank=env.rank,
        size=env.size,
        hosts=env.hosts,
        token=env.token,
        job_id=env.job_id,
        hostname=env.hostname,
        timeout=env.timeout,
        peer_timeout=env.peer_timeout,
        verbose=env.verbose,
        segment_bytes=env.segment_bytes,
        listen_fds=env.listen_fds,
        coordinator=env.coordinator or "",
        shm_spin_us=env.shm_spin_us,
        shm_yield_us=env.shm_yield_us,
        shm_cma=env.shm_cma,
        shm_cma_bytes=env.shm_cma_bytes,
        tcp_spin_us=env.tcp_spin_us,
        tcp_yield_us=env.tcp_yield_us,
        machine_ranks=env.machine_ranks or 0,
    )
    if name == "mpi":
        _mpi.register_exit()
    return Group(impl)


def init(backend: str = "any", strict: bool = False) -> Group:
    """Initialise (or return the already initialised) world group.

    Parameters
    ----------
    backend
        ``"any"`` (default), ``"shm"``, ``"ring"``, ``"mesh"``, ``"hier"`` or
        ``"mpi"``.
        ``"any"`` never picks ``mesh`` on its own: name it here or in
        ``CHORUS_BACKEND``.

        ``"any"`` tries, in order, and takes the first that can run:

        1. the backend named by ``CHORUS_BACKEND`` (``chorus launch
           --backend`` sets it; ``mpirun -x CHORUS_BACKEND=mpi`` works too);
        2. ``shm``, when every rank is on this host (per the hostfile, or
           per mpirun's local rank count when there is none);
        3. ``hier``, when the hostfile puts ranks on several hosts and
           several ranks on some host: shared memory among a host's ranks,
           a mesh between hosts (a host is the address of a rank's first
           hostfile entry);
        4. ``ring``, when a hostfile (``CHORUS_HOSTFILE``) or a coordinator
           (``CHORUS_COORDINATOR``: rank 0's "ip:port", where the ranks
           exchange addresses) is known;
        5. ``mpi``, when mpirun/mpiexec started this rank
           (``OMPI_COMM_WORLD_SIZE``/``PMI_SIZE`` set) and there is no
           chorus hostfile, and libmpi loads (``CHORUS_MPI_LIBNAME`` or
           ``libmpi.so.40``, ``libmpi.so``, ``libmpi.so.12``).

        So under mpirun on one host ``"any"`` picks ``shm`` (faster and
        interruptible), across hosts ``mpi``. When none can run, a rank of
        a job warns and continues as a group of size 1 (``strict=False``)
        or raises :class:`chorus.BackendUnavailableError` naming each
        backend tried and why it cannot run (``strict=True``); outside any
        job the size-1 group is silent.
    strict
        Raise instead of falling back to a size-1 group when no backend can
        run (for example outside ``chorus launch``).

    Returns
    -------
    Group
        The world group. Outside a job it has size 1 and every collective
        returns its input.

    Raises
    ------
    chorus.BackendUnavailableError
        ``strict=True`` and no requested backend can run here.
    chorus.PeerError
        A backend started but its peers did not connect (the message names
        the missing rank and address).
    """
    global _first, _setting_up_since
    with _lock:
        if backend == "any" and _first is not None:
            return _first
        if backend in _groups:
            return _groups[backend]
        env = read_rank_env()
        if backend != "any" and backend not in _core.compiled_backends():
            msg = f"unknown backend {backend!r}; chorus has: any, {', '.join(RANK_BACKENDS)}"
            raise ValueError(msg)
        _core.set_flight_records(env.flight_records)
        _set_process_knobs(env)
        if env.flight_sites:
            _core.set_call_sites(True)
        if os.environ.get("CHORUS_REPORTS") == "stderr":
            # Before connecting: a rank stuck in set-up can say so too.
            from chorus.debug import install_report_signal

            install_report_signal()
        for name in _candidates(backend, env):
            if not _usable(name, env):
                continue
            _setting_up_since = time.time()
            try:
                group = _connect(name, env)
            except _core.PeerTimeoutError as err:
                _explain_setup_timeout(err)
                raise
            finally:
                _setting_up_since = None
            _note_interrupts()
            _groups[name] = group
            if _first is None:
                _first = group
            return group
        if strict:
            if not env.in_job:
                why = "this process is not part of a job (no CHORUS_RANK/CHORUS_WORLD_SIZE)"
            else:
                why = f"none of {_candidates(backend, env)} can run with this environment"
                reasons = [_why_unusable(n, env) for n in _candidates(backend, env)]
                if reasons:
                    why += " (" + "; ".join(reasons) + ")"
            msg = f"[chorus] cannot initialise backend {backend!r}: {why}"
            raise _core.BackendUnavailableError(msg)
        if env.in_job:
            # A launched rank running alone computes wrong answers: say so.
            unusable = "; ".join(_why_unusable(n, env) for n in _candidates(backend, env))
            warnings.warn(
                f"[chorus] rank {env.rank} of {env.size}: no backend of "
                f"{_candidates(backend, env) or list(RANK_BACKENDS)} can run here"
                + (f" ({unusable})" if unusable else "")
                + "; continuing as a group of size 1 (init(strict=True) raises instead)",
                RuntimeWarning,
                stacklevel=2,
            )
        group = Group(_core.single_group("single"))
        _groups[backend] = group
        if _first is None:
            _first = group
        return group


def _explain_setup_timeout(err: _core.PeerTimeoutError) -> None:
    """Add where every rank is to a set-up timeout (a note, and ``err.report``).

    The ranks that never came are usually somewhere the user can fix (a
    collective inside ``if rank == 0:``, a long computation, ``input()``);
    the message alone cannot say where. Only when a launcher or kernel can
    ask them (``CHORUS_SUPERVISOR``); otherwise the message stands alone.
    """
    from chorus.debug import WhereUnavailableError, where

    try:
        report = where()
    except WhereUnavailableError:
        return  # nothing can ask the others: the message stands alone
    err.report = report  # type: ignore[attr-defined]
    err.add_note("Where every rank is now (chorus.debug.where()):\n" + report.text())


def _note_interrupts() -> None:
    """Tell the backends of every Ctrl-C, also one outside a call.

    A rank that enters a collective its peers aborted raises when it is late
    for it, but runs it (in step with their next call) when it was itself
    interrupted on its way; the backends tell the two apart by
    ``_core.interrupt_count()``. Python's default SIGINT handler is replaced by
    one that behaves the same (KeyboardInterrupt) and counts; a handler of the
    program's own is left alone (the chorus rank kernel counts in its own).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _core.sigint_handler)


def is_available(backend: str | None = None) -> bool:
    """Whether ``backend`` (or, with ``None``, any distributed backend) can run here.

    Only ranks of a job have one. ``"mpi"`` needs a rank started by
    mpirun/mpiexec and a libmpi that loads (``CHORUS_MPI_LIBNAME`` or the
    default names); ``chorus._core.unavailable_reason("mpi")`` says why not.
    """
    env = read_rank_env()
    _set_process_knobs(env)
    names = RANK_BACKENDS if backend in (None, "any") else (backend,)
    return any(name in _core.compiled_backends() and _usable(name, env) for name in names)


def live_groups() -> list[Group]:
    """Every group of this process still in use, the world first."""
    return sorted(_live, key=lambda g: (g.name != "world", g.name))


def default_group(group: Group | None) -> Group:
    """``group`` itself, or the world group from :func:`init`."""
    if group is not None:
        return group
    # Every collective comes here: skip init()'s lock once the world exists.
    first = _first
    return first if first is not None else init()


def _reset_for_tests() -> None:
    """Forget cached groups (tests only: the groups themselves stay alive)."""
    global _first
    with _lock:
        _groups.clear()
        _first = None
