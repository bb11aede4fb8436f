"""Arrays of the frameworks (torch, MLX, JAX) in chorus's collectives, and back.

chorus's backends move the bytes of numpy arrays. A framework's array is
seen as a numpy array over the same memory where the framework allows it
(torch CPU tensors, JAX CPU arrays and evaluated MLX arrays all do), and a
result comes back as the input's kind:

- torch: a tensor over the result's memory (no copy); a tensor that
  requires grad is read through ``detach()`` (no copy) and the result does
  not require grad, as torch.distributed's own collectives;
- JAX: an array over the result's memory (the result is allocated with the
  64-byte alignment JAX needs to share it); bfloat16 results are copied;
- MLX: a copy (an ``mx.array`` always owns its memory).

Another library's array that speaks only DLPack (``__dlpack__``) is read in
place too, and its result is a numpy array.

bfloat16 travels as numpy's ``ml_dtypes.bfloat16``, which is also how numpy
users pass it. ``out=`` takes a numpy array, a torch tensor or an MLX array
(written in place); JAX arrays are immutable and are refused. Arrays chorus
cannot read (on a GPU, sharded across processes) raise TypeError saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from chorus.pool import MIN_BYTES, RESULTS

# JAX shares a buffer with numpy only at this alignment (XLA's minimum).
JAX_ALIGNMENT = 64


@dataclass(frozen=True)
class Kind:
    """A framework's arrays: how a numpy result is given back as one."""

    name: str
    wrap: Callable[[np.ndarray[Any, Any]], Any]
    alignment: int = 0  # what the result buffer needs for ``wrap`` to share it


def framework_of(x: object) -> str | None:
    """``"torch"``, ``"mlx"`` or ``"jax"`` for those frameworks' arrays, else None."""
    root = type(x).__module__.partition(".")[0]
    if root == "torch" and hasattr(x, "device"):
        return "torch"
    if root == "mlx":
        return "mlx"
    if root in ("jax", "jaxlib") and hasattr(x, "addressable_shards"):
        return "jax"
    return None


def from_framework(x: object, name: str) -> tuple[Any, Kind | None]:
    """``x`` as something numpy reads without a copy, and the kind to give results back as.

    Anything not of a framework comes back as it is, with kind None.

    Raises
    ------
    TypeError
        ``x`` is in memory chorus cannot read (a GPU), or of a dtype numpy has no name for.
    """
    framework = framework_of(x)
    if framework == "torch":
        return _torch_view(x, name), Kind("torch", _to_torch)
    if framework == "mlx":
        return _mlx_view(x), Kind("mlx", _to_mlx)
    if framework == "jax":
        return _jax_view(x, name), Kind("jax", _to_jax, JAX_ALIGNMENT)
    if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray) and not hasattr(x, "__array__"):
        # Another library's array that only speaks DLPack: read in place, a numpy result.
        try:
            return np.from_dlpack(x), None
        except (BufferError, RuntimeError, TypeError) as err:
            msg = f"{name}: chorus cannot read this {type(x).__name__} through DLPack: {err}"
            raise TypeError(msg) from None
    return x, None


def numpy_dtype(dtype: object, name: str) -> tuple[np.dtype[Any], Kind | None]:
    """numpy's dtype for a numpy, torch or MLX dtype, and the kind to give results back as."""
    root = type(dtype).__module__.partition(".")[0]
    if root == "torch":
        import torch

        view, kind = from_framework(torch.empty(0, dtype=dtype), name)  # type: ignore[call-overload]
        return view.dtype, kind
    if root == "mlx":
        import mlx.core as mx

        view, kind = from_framework(mx.zeros((0,), dtype=dtype), name)  # type: ignore[arg-type]
        return view.dtype, kind
    return np.dtype(dtype), None  # type: ignore[call-overload]


def writable_view(out: object, name: str) -> np.ndarray[Any, Any]:
    """A numpy array over ``out``'s memory, for chorus to write a result into.

    Raises
    ------
    TypeError
        ``out`` is not a numpy array, a CPU torch tensor or an MLX array.
    """
    if isinstance(out, np.ndarray):
        return out
    framework = framework_of(out)
    if framework == "torch":
        return _torch_view(out, f"{name}: out")  # its own memory: .numpy() never copies
    if framework == "mlx":
        import mlx.core as mx

        mx.eval(out)
        return _mlx_view(out)
    if framework == "jax":
        msg = f"{name}: JAX arrays are immutable and cannot be out= (pass a numpy array)"
        raise TypeError(msg)
    msg = f"{name}: out must be a numpy.ndarray, a torch tensor or an mlx array, not {type(out).__name__}"
    raise TypeError(msg)


def empty(shape: tuple[int, ...], dtype: np.dtype[Any], kind: Kind | None) -> np.ndarray[Any, Any]:
    """A fresh result array, aligned as ``kind`` needs to share it.

    Large ones come from recycled memory (:mod:`chorus.pool`): page-aligned,
    so aligned for every kind, and with no page faults once warm.
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= MIN_BYTES:
        return RESULTS.take(nbytes).view(dtype).reshape(shape)
    if kind is None or not kind.alignment:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(nbytes + kind.alignment, dtype=np.uint8)
    start = -raw.ctypes.data % kind.alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def bfloat16() -> np.dtype[Any]:
    """numpy's bfloat16 (``ml_dtypes.bfloat16``)."""
    import ml_dtypes

    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


# -- torch ------------------------------------------------------------------------


def _torch_view(tensor: Any, name: str) -> np.ndarray[Any, Any]:
    import torch

    if tensor.device.type != "cpu":
        msg = (
            f"{name}: chorus reads arrays in host memory, and this tensor is on {tensor.device}"
            " (pass tensor.cpu())"
        )
        raise TypeError(msg)
    if tensor.layout != torch.strided:
        msg = (
            f"{name}: chorus reads dense tensors, not {tensor.layout} ones (pass tensor.to_dense())"
        )
        raise TypeError(msg)
    tensor = tensor.detach().resolve_conj().resolve_neg()
    view: np.ndarray[Any, Any]
    if tensor.dtype == torch.bfloat16:
        view = tensor.view(torch.uint16).numpy().view(bfloat16())
        return view
    try:
        view = tensor.numpy()
    except TypeError as err:
        msg = f"{name}: chorus has no {tensor.dtype} (numpy has no such dtype): {err}"
        raise TypeError(msg) from None
    return view


def _to_torch(result: np.ndarray[Any, Any]) -> Any:
    import torch

    if result.dtype.name == "bfloat16":
        return torch.from_numpy(result.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(result)


# -- MLX --------------------------------------------------------------------------


def _mlx_view(array: Any) -> np.ndarray[Any, Any]:
    import mlx.core as mx

    if array.dtype == mx.bfloat16:
        # numpy reads MLX's memory through the buffer protocol, which has no bfloat16.
        return np.asarray(array.view(mx.uint16)).view(bfloat16())
    return np.asarray(array)


def _to_mlx(result: np.ndarray[Any, Any]) -> Any:
    import mlx.core as mx

    if result.dtype.name == "bfloat16":
        return mx.array(result.view(np.uint16)).view(mx.bfloat16)
    return mx.array(result)


# -- JAX --------------------------------------------------------------------------


def _jax_view(array: Any, name: str) -> np.ndarray[Any, Any]:
    if not array.is_fully_addressable:
        msg = f"{name}: this JAX array is sharded across processes; pass this process's shard"
        raise TypeError(msg)
    platforms = {device.platform for device in array.devices()}
    if platforms != {"cpu"}:
        msg = (
            f"{name}: chorus reads arrays in host memory, and this JAX array is on"
            f" {', '.join(sorted(platforms))} (pass jax.device_get(array))"
        )
        raise TypeError(msg)
    return np.asarray(array)


def _to_jax(result: np.ndarray[Any, Any]) -> Any:
    import jax.numpy as jnp

    if result.dtype.name == "bfloat16" or not result.flags.c_contiguous:
        return jnp.asarray(result)  # numpy's DLPack has no bfloat16: a copy
    return jnp.from_dlpack(result)
