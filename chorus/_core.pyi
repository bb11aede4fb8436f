"""Typed stubs for the compiled extension ``chorus._core``."""

from collections.abc import Callable
from typing import Any

import numpy as np

class PeerError(ConnectionError):
    """A peer rank closed, reset, timed out or aborted the group.

    The failure as data: ``reason`` ("died", "unreachable", "interrupted",
    "aborted", "protocol", "timeout", "overlap", "late" or "unknown"), the
    culprit's ``rank`` and ``host`` (its address), the call: ``op``
    ("all_sum") and ``call`` (its number on the group on this rank), and
    ``cause``: what happened, the message without the group's prefix and
    the call it failed.
    """

    reason: str
    rank: int | None
    host: str | None
    op: str | None
    call: int | None
    cause: str | None

class PeerTimeoutError(PeerError, TimeoutError):
    """A peer did not arrive or answer before the deadline."""

class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here."""

class Group:
    """A set of ranks that run collectives together (backend handle)."""

    @property
    def backend(self) -> str: ...
    def rank(self) -> int: ...
    def size(self) -> int: ...
    def split(self, color: int, key: int = -1) -> Group: ...

def note_interrupt() -> None: ...
def interrupt_count() -> int: ...
def sigint_handler(*args: object) -> None: ...
def compiled_backends() -> list[str]: ...
def is_available(backend: str) -> bool: ...
def unavailable_reason(backend: str) -> str:
    """Why the backend cannot run here, or ``""`` when it can."""

def host_of(address: str) -> str:
    """The host of a rank's address as the backends group ranks (``chorus.hostfile.host_of``)."""

def shutdown_backend(backend: str, abort: bool = False) -> None:
    """Release a backend's process-wide state at exit (mpi: communicators, then MPI_Finalize)."""

def set_stream_bytes(nbytes: int) -> None:
    """Results of at least this many bytes are copied with streaming stores (0: always)."""

def set_mpi_library(name: str) -> None:
    """The libmpi the mpi backend loads (``""``: the default names); once only."""

def single_group(backend: str = "single") -> Group: ...
def flight_record(group: Group, last: int = ...) -> list[dict[str, Any]]:
    """The group's recorded calls, oldest first (see chorus.debug.CallRecord)."""

def set_flight_records(capacity: int) -> None: ...
def set_call_site_package(directory: str) -> None: ...
def set_call_sites(on: bool) -> None: ...
def set_call_site_cell(cell: int) -> None: ...
def init(
    backend: str,
    rank: int,
    size: int,
    hosts: list[list[str]],
    token: str,
    job_id: str,
    hostname: str,
    timeout: float,
    peer_timeout: float = 15.0,
    verbose: bool = False,
    segment_bytes: int = 0,
    listen_fds: list[int] = ...,
    coordinator: str = "",
    shm_spin_us: int | None = None,
    shm_yield_us: int | None = None,
    shm_cma: bool = True,
    shm_cma_bytes: int | None = None,
    tcp_spin_us: int | None = None,
    tcp_yield_us: int | None = None,
    machine_ranks: int = 0,
) -> Group: ...
def set_result_allocator(
    allocator: Callable[[tuple[int, ...], np.dtype[Any]], np.ndarray[Any, Any]], min_bytes: int
) -> None: ...
def all_reduce(group: Group, x: object, out: object, op: str) -> np.ndarray[Any, Any] | None: ...
def all_gather(group: Group, x: object, out: object) -> np.ndarray[Any, Any] | None: ...
def reduce_scatter(
    group: Group, x: object, out: object, op: str = "sum"
) -> np.ndarray[Any, Any] | None: ...
def broadcast(group: Group, buf: np.ndarray[Any, Any], root: int) -> None: ...
def barrier(group: Group) -> None: ...
def send(group: Group, x: np.ndarray[Any, Any], dst: int, *, tag: int = 0) -> None: ...
def recv(group: Group, out: np.ndarray[Any, Any], src: int, *, tag: int = 0) -> None: ...
