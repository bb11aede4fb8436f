"""Collective and point-to-point operations on numpy arrays.

Each function resolves ``group=None`` to the world group, converts the input
to a C-contiguous native-endian array, allocates the output (or checks the
caller's ``out=``) and makes one call into the compiled module, which
releases the GIL while it communicates. At size 1 every collective returns a
copy of its input.

all_sum/all_max/all_min/all_gather hand their arguments to the compiled
module as they are: it checks a plain C-contiguous ndarray itself (small
messages are mostly call overhead) and returns None, before communicating,
for anything that needs converting or a detailed error; the Python path then
converts or explains, and calls again.

``out=`` writes the result into an existing array, as numpy's ufuncs do: in
a loop this skips allocating, page-faulting and zeroing a fresh result every
call, which costs as much as the communication for arrays of tens of MiB.

torch tensors, MLX and JAX arrays go in and come back as themselves
(:mod:`chorus.arrays`): the fast path refuses them, and the careful one
reads them as numpy arrays over the same memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from chorus import _core
from chorus.arrays import Kind, empty, from_framework, numpy_dtype, writable_view
from chorus.group import Group, default_group
from chorus.pool import MIN_BYTES

ArrayLike = npt.ArrayLike
# Also a torch tensor, an MLX or a JAX array (given back as the same kind).
Array = Any


def _fresh(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    return empty(shape, dtype, None)


# The compiled fast path makes its large results here too (recycled memory).
_core.set_result_allocator(_fresh, MIN_BYTES)


def _as_array(x: ArrayLike) -> np.ndarray[Any, Any]:
    """Any array-like (buffer protocol, ``__array__``, scalar) as a C-contiguous array."""
    if type(x) is np.ndarray and x.flags.c_contiguous and x.dtype.isnative:
        return x  # the common case, kept cheap: small collectives are all overhead
    array = np.asarray(x, order="C")
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.c_contiguous:  # asarray keeps 0-d and already-contiguous as is
        array = np.ascontiguousarray(array)
    return array


def _output(
    out: object,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    name: str,
    kind: Kind | None = None,
) -> np.ndarray[Any, Any]:
    """The result array: fresh (as ``kind`` can share it), or a view of the checked ``out``.

    ``out`` must match exactly: no casting, no reshaping, C-contiguous and
    writeable, since the backend writes raw bytes into it. An ``out`` that
    overlaps the input (``all_sum(x, out=x)``) is fine: the compiled module
    then sends a private copy of the input, since backends read their input
    while they write the result.
    """
    if out is None:
        return empty(shape, dtype, kind)
    view = writable_view(out, name)
    if view.shape != shape or view.dtype != dtype:
        msg = (
            f"{name}: out has shape {view.shape} and dtype {view.dtype}; "
            f"the result has shape {shape} and dtype {dtype}"
        )
        raise ValueError(msg)
    if not view.flags.c_contiguous or not view.flags.writeable:
        msg = f"{name}: out must be C-contiguous and writeable"
        raise ValueError(msg)
    return view


def _given(out: object, result: np.ndarray[Any, Any], kind: Kind | None) -> Array:
    """What a collective returns: ``out`` itself, or the result as the input's kind."""
    if out is not None:
        return out
    return result if kind is None else kind.wrap(result)


def _reduce(x: Array, op: str, group: Group | None, out: Array | None) -> Array:
    """The careful path of all_sum & co: convert the input, check ``out``."""
    g = default_group(group)
    name = f"all_{op}"
    source, kind = from_framework(x, name)
    array = _as_array(source)
    result = _output(out, array.shape, array.dtype, name, kind)
    if _core.all_reduce(g.handle, array, result, op) is None:
        msg = "chorus: converted arguments were refused by the compiled module (a bug)"
        raise RuntimeError(msg)
    return _given(out, result, kind)


def all_sum(x: Array, *, group: Group | None = None, out: Array | None = None) -> Array:
    """Elementwise sum over all ranks; every rank gets the result.

    Parameters
    ----------
    x
        This rank's array: numpy or anything numpy reads, a torch tensor, an
        MLX or a JAX array (on the CPU). All ranks must pass the same shape
        and dtype: bool, an integer, float16/32/64, bfloat16
        (``ml_dtypes.bfloat16`` for numpy) or complex. float16 and bfloat16
        are added in float32 and rounded after every step, as numpy does.
    group
        The group to reduce over (default: the world group).
    out
        Where to write the result (default: a new array): a C-contiguous,
        writeable numpy array, torch tensor or MLX array of exactly the
        result's shape and dtype. It may be ``x`` itself.

    Returns
    -------
    numpy.ndarray, or the kind of ``x``
        Same shape and dtype as ``x`` (``out`` when given); bit-identical
        on every rank. A torch tensor or JAX array shares the result's
        memory; an MLX array is a copy (see :mod:`chorus.arrays`).

    Raises
    ------
    ValueError
        Ranks disagree on shape or dtype (raised on every rank), or ``out``
        does not fit the result.
    chorus.PeerError
        A peer died or aborted the call.
    """
    fast = _core.all_reduce(default_group(group).handle, x, out, "sum")
    return fast if fast is not None else _reduce(x, "sum", group, out)


def all_max(x: Array, *, group: Group | None = None, out: Array | None = None) -> Array:
    """Elementwise maximum over all ranks (NaN propagates, as ``np.maximum``).

    Raises ``TypeError`` for complex arrays. See :func:`all_sum`.
    """
    fast = _core.all_reduce(default_group(group).handle, x, out, "max")
    return fast if fast is not None else _reduce(x, "max", group, out)


def all_min(x: Array, *, group: Group | None = None, out: Array | None = None) -> Array:
    """Elementwise minimum over all ranks (NaN propagates, as ``np.minimum``).

    Raises ``TypeError`` for complex arrays. See :func:`all_sum`.
    """
    fast = _core.all_reduce(default_group(group).handle, x, out, "min")
    return fast if fast is not None else _reduce(x, "min", group, out)


def all_gather(x: Array, *, group: Group | None = None, out: Array | None = None) -> Array:
    """Concatenate every rank's array along axis 0, in rank order.

    A 0-d input gives a 1-d result of length ``size``. All ranks must pass
    the same shape and dtype. ``out``: see :func:`all_sum`.
    """
    g = default_group(group)
    fast = _core.all_gather(g.handle, x, out)
    if fast is not None:
        return fast
    source, kind = from_framework(x, "all_gather")
    array = _as_array(source)
    shape = (g.size(),) if array.ndim == 0 else (g.size() * array.shape[0], *array.shape[1:])
    result = _output(out, shape, array.dtype, "all_gather", kind)
    if _core.all_gather(g.handle, array, result) is None:
        msg = "chorus: converted arguments were refused by the compiled module (a bug)"
        raise RuntimeError(msg)
    return _given(out, result, kind)


def sum_scatter(x: Array, *, group: Group | None = None, out: Array | None = None) -> Array:
    """Sum over ranks, then give rank ``r`` the ``r``-th block along axis 0.

    ``x.shape[0]`` must be divisible by the group size; the result has
    ``x.shape[0] // size`` rows. ``out``: see :func:`all_sum`.
    """
    g = default_group(group)
    fast = _core.reduce_scatter(g.handle, x, out, "sum")
    if fast is not None:
        return fast
    # The compiled module checks the shape (raising on every misfit); None
    # means the input needed converting or out does not fit.
    source, kind = from_framework(x, "sum_scatter")
    array = _as_array(source)
    target = None if out is None else writable_view(out, "sum_scatter")
    if kind is not None and kind.alignment and target is None and array.ndim:
        target = empty((array.shape[0] // g.size(), *array.shape[1:]), array.dtype, kind)
    result = _core.reduce_scatter(g.handle, array, target, "sum")
    if result is None:
        shape = (array.shape[0] // g.size(), *array.shape[1:])
        _output(out, shape, array.dtype, "sum_scatter")  # raises: says how out misfits
        msg = "chorus: converted arguments were refused by the compiled module (a bug)"
        raise RuntimeError(msg)
    return _given(out, result, kind)


def broadcast(
    x: Array, root: int = 0, *, group: Group | None = None, out: Array | None = None
) -> Array:
    """Every rank gets ``root``'s array. All ranks pass the same shape and dtype.

    ``out``: see :func:`all_sum`.
    """
    g = default_group(group)
    source, kind = from_framework(x, "broadcast")
    array = _as_array(source)
    result = _output(out, array.shape, array.dtype, "broadcast", kind)
    if result is not array:
        np.copyto(result, array)
    _core.broadcast(g.handle, result, root)
    return _given(out, result, kind)


def barrier(*, group: Group | None = None) -> None:
    """Return once every rank of the group has entered the barrier."""
    _core.barrier(default_group(group).handle)


def send(x: Array, dst: int, *, tag: int = 0, group: Group | None = None) -> Array:
    """Send ``x`` to rank ``dst``; returns ``x`` (as MLX does; numpy's view of an array-like).

    The receiver must call :func:`recv` (or :func:`recv_like`) with the same
    shape, dtype and tag. Returns once the bytes have left this rank; it does
    not wait for the matching ``recv``, so two ranks that both send first and
    then receive do not deadlock.

    Parameters
    ----------
    x
        The array to send.
    dst
        The receiving rank. With the ring backend it must be a ring
        neighbour; the mesh backend connects every pair of ranks.
    tag
        Matches this message to a ``recv`` with the same tag: messages
        between two ranks with the same tag arrive in order, and a ``recv``
        of one tag does not wait behind messages of another. Tags other than
        0 need the mesh backend.
    group
        The group ``dst`` is a rank of (default: the world group).

    Raises
    ------
    ValueError
        ``dst`` is this rank or outside the group, or a non-zero tag on a
        backend without tags.
    chorus.PeerError
        ``dst`` died or the connection failed.
    """
    g = default_group(group)
    source, kind = from_framework(x, "send")
    array = _as_array(source)
    _core.send(g.handle, array, dst, tag=tag)
    return x if kind is not None else array


def recv(
    shape: int | Iterable[int],
    dtype: npt.DTypeLike | Any,
    src: int,
    *,
    tag: int = 0,
    group: Group | None = None,
) -> Array:
    """Receive an array of ``shape`` and ``dtype`` sent by rank ``src`` with ``tag``.

    ``dtype`` may be a torch or MLX dtype: the array comes back as that
    framework's.

    Raises ``ValueError`` naming the sender when its message has another
    size or dtype (the message is consumed), and ``chorus.PeerError`` when
    ``src`` dies before sending. See :func:`send` for tags.
    """
    g = default_group(group)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    numpy_type, kind = numpy_dtype(dtype, "recv")
    out = empty(dims, numpy_type, kind)
    _core.recv(g.handle, out, src, tag=tag)
    return _given(None, out, kind)


def recv_like(x: Array, src: int, *, tag: int = 0, group: Group | None = None) -> Array:
    """Receive from ``src`` an array shaped and typed like ``x``, of ``x``'s kind (see :func:`recv`)."""
    source, kind = from_framework(x, "recv_like")
    array = np.asarray(source)
    g = default_group(group)
    out = empty(array.shape, array.dtype, kind)
    _core.recv(g.handle, out, src, tag=tag)
    return _given(None, out, kind)


Tree = Any


def _leaves(tree: Tree, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _leaves(value, (*path, index))
    else:
        yield path, tree


def _rebuild(tree: Tree, path: tuple[Any, ...], lookup: Callable[[tuple[Any, ...]], Any]) -> Tree:
    if isinstance(tree, dict):
        return {k: _rebuild(v, (*path, k), lookup) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [_rebuild(v, (*path, i), lookup) for i, v in enumerate(tree)]
        return type(tree)(items) if isinstance(tree, tuple) else items
    return lookup(path)


def average_gradients(
    gradients: Tree,
    *,
    group: Group | None = None,
    all_reduce_size: int = 32 * 1024 * 1024,
) -> Tree:
    """Average a tree (dicts, lists, tuples) of arrays over all ranks.

    Leaves may be numpy arrays or any framework's (:mod:`chorus.arrays`);
    each comes back as its own kind.

    Small arrays are packed into flat buffers of at most ``all_reduce_size``
    bytes per dtype, so a model with hundreds of parameters costs a few
    large :func:`all_sum` calls instead of hundreds of small ones. An array
    larger than the limit gets a call of its own; ``all_reduce_size <= 0``
    reduces every array separately.

    Returns
    -------
    The same tree structure with every leaf replaced by its average (same
    shape and dtype; integer leaves are floor-divided).
    """
    g = default_group(group)
    size = g.size()
    leaves = []
    kinds: dict[tuple[Any, ...], Kind | None] = {}
    for path, leaf in _leaves(gradients):
        source, kinds[path] = from_framework(leaf, "average_gradients")
        leaves.append((path, _as_array(source)))

    def given(path: tuple[Any, ...], array: np.ndarray[Any, Any]) -> Array:
        kind = kinds[path]
        return array if kind is None else kind.wrap(np.ascontiguousarray(array))

    if size == 1:
        copies = {path: array.copy() for path, array in leaves}
        return _rebuild(gradients, (), lambda path: given(path, copies[path]))

    averaged: dict[tuple[Any, ...], np.ndarray[Any, Any]] = {}

    def flush(batch: list[tuple[tuple[Any, ...], np.ndarray[Any, Any]]]) -> None:
        if not batch:
            return
        flat = np.concatenate([array.reshape(-1) for _, array in batch])
        total = all_sum(flat, group=g)
        offset = 0
        for path, array in batch:
            part = total[offset : offset + array.size].reshape(array.shape)
            offset += array.size
            averaged[path] = _divide(part, size)

    by_dtype: dict[np.dtype[Any], list[tuple[tuple[Any, ...], np.ndarray[Any, Any]]]] = {}
    for path, array in leaves:
        by_dtype.setdefault(array.dtype, []).append((path, array))
    for batch_items in by_dtype.values():
        batch: list[tuple[tuple[Any, ...], np.ndarray[Any, Any]]] = []
        batch_bytes = 0
        for path, array in batch_items:
            if batch and (all_reduce_size <= 0 or batch_bytes + array.nbytes > all_reduce_size):
                flush(batch)
                batch, batch_bytes = [], 0
            batch.append((path, array))
            batch_bytes += array.nbytes
        flush(batch)
    return _rebuild(gradients, (), lambda path: given(path, averaged[path]))


def _divide(array: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return (array // size).astype(array.dtype)
    return (array / size).astype(array.dtype)
