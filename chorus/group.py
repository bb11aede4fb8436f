"""Groups of ranks and backend initialisation (``chorus.init``).

``init()`` mirrors ``mlx.core.distributed.init``: ``backend="any"`` tries the
backends in order and falls back to a size-1 group when none can run here;
later calls return the first group initialised, so libraries can call
``init()`` freely.

Order tried by ``"any"``: the backend named by ``CHORUS_BACKEND`` (the
launcher sets it), then ``shm`` when every rank is on this host, then
``ring`` when a hostfile is known. A backend that is available but fails to
connect raises: a launched rank silently running alone would compute wrong
answers.
"""

from __future__ import annotations

import threading
import warnings

from chorus import _core
from chorus.env import RankEnv, read_rank_env

BACKENDS = ("shm", "ring")

_lock = threading.Lock()
_groups: dict[str, Group] = {}
_first: Group | None = None


class Group:
    """A set of ranks that run collectives together.

    Obtain the world group from :func:`init`; sub-groups from :meth:`split`.
    """

    def __init__(self, impl: _core.Group) -> None:
        self._impl = impl

    def rank(self) -> int:
        """This process's rank within the group (0 .. size-1)."""
        return self._impl.rank()

    def size(self) -> int:
        """Number of ranks in the group."""
        return self._impl.size()

    @property
    def backend(self) -> str:
        """Name of the backend moving this group's bytes."""
        return self._impl.backend

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
        return Group(self._impl.split(color, key))

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
    if env.hosts:
        order.append("ring")
    return list(dict.fromkeys(order))


def _usable(name: str, env: RankEnv) -> bool:
    if not env.in_job or not _core.is_available(name):
        return False
    if name == "ring":
        return bool(env.hosts)
    if name == "shm":
        return env.all_hosts_local()
    return True


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
        verbose=env.verbose,
        segment_bytes=env.segment_bytes,
        listen_fds=env.listen_fds,
    )
    return Group(impl)


def init(backend: str = "any", strict: bool = False) -> Group:
    """Initialise (or return the already initialised) world group.

    Parameters
    ----------
    backend
        ``"any"`` (default), ``"shm"`` or ``"ring"``.
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
    global _first
    with _lock:
        if backend == "any" and _first is not None:
            return _first
        if backend in _groups:
            return _groups[backend]
        env = read_rank_env()
        if backend != "any" and backend not in _core.compiled_backends():
            msg = f"unknown backend {backend!r}; chorus has: any, {', '.join(BACKENDS)}"
            raise ValueError(msg)
        for name in _candidates(backend, env):
            if not _usable(name, env):
                continue
            group = _connect(name, env)
            _groups[name] = group
            if _first is None:
                _first = group
            return group
        if strict:
            if not env.in_job:
                why = "this process is not part of a job (no CHORUS_RANK/CHORUS_WORLD_SIZE)"
            else:
                why = f"none of {_candidates(backend, env)} can run with this environment"
            msg = f"[chorus] cannot initialise backend {backend!r}: {why}"
            raise _core.BackendUnavailableError(msg)
        if env.in_job:
            # A launched rank running alone computes wrong answers: say so.
            warnings.warn(
                f"[chorus] rank {env.rank} of {env.size}: no backend of "
                f"{_candidates(backend, env) or list(BACKENDS)} can run here; "
                "continuing as a group of size 1 (init(strict=True) raises instead)",
                RuntimeWarning,
                stacklevel=2,
            )
        group = Group(_core.single_group("single"))
        _groups[backend] = group
        if _first is None:
            _first = group
        return group


def is_available(backend: str | None = None) -> bool:
    """Whether ``backend`` (or, with ``None``, any distributed backend) can run here."""
    env = read_rank_env()
    names = BACKENDS if backend in (None, "any") else (backend,)
    return any(name in _core.compiled_backends() and _usable(name, env) for name in names)


def default_group(group: Group | None) -> Group:
    """``group`` itself, or the world group from :func:`init`."""
    return init() if group is None else group


def _reset_for_tests() -> None:
    """Forget cached groups (tests only: the groups themselves stay alive)."""
    global _first
    with _lock:
        _groups.clear()
        _first = None
