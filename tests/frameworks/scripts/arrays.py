"""Every framework's arrays through chorus's collectives, checked on each rank.

Prints "ok <check>" for each check that passed; an assertion ends the rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import mlx.core as mx
import numpy as np
import torch

import chorus
from chorus.arrays import JAX_ALIGNMENT, empty, from_framework

group = chorus.init()
rank, size = group.rank(), group.size()
everyone = sum(range(1, size + 1))  # sum of (rank + 1) over ranks


def ok(name):
    print("ok", name, flush=True)


def refused(call, *needles):
    """``call()`` raises TypeError whose message holds every needle."""
    try:
        call()
    except TypeError as err:
        missing = [needle for needle in needles if needle not in str(err)]
        if missing:
            raise AssertionError(f"{missing} not in {err}") from err
    else:
        raise AssertionError("no TypeError")


# torch: a tensor in, a tensor out, sharing the result's memory.
total = chorus.all_sum(torch.arange(4, dtype=torch.float32) * (rank + 1))
assert isinstance(total, torch.Tensor), total
assert total.dtype == torch.float32, total
assert total.tolist() == [0.0, everyone, 2.0 * everyone, 3.0 * everyone], total
ok("torch all_sum")

weights = torch.ones(3, requires_grad=True)
view, _ = from_framework(weights, "check")
assert view.ctypes.data == weights.data_ptr(), "a tensor that requires grad was copied"
summed = chorus.all_sum(weights * 1)  # a non-leaf with a grad_fn
assert not summed.requires_grad
assert summed.tolist() == [float(size)] * 3
ok("torch requires_grad")

out = torch.zeros(2, 3)
address = out.data_ptr()
returned = chorus.all_max(torch.full((2, 3), float(rank)), out=out)
assert returned is out
assert out.data_ptr() == address
assert out.eq(size - 1).all()
ok("torch out")

inplace = torch.ones(5) * (rank + 1)
address = inplace.data_ptr()
chorus.all_sum(inplace, out=inplace)
assert inplace.data_ptr() == address
assert inplace.eq(everyone).all()
ok("torch in place")

gathered = chorus.all_gather(torch.tensor([rank, rank], dtype=torch.int64))
assert isinstance(gathered, torch.Tensor)
assert gathered.tolist() == [r for r in range(size) for _ in range(2)]
part = chorus.sum_scatter(torch.ones(size * 2, dtype=torch.float64))
assert isinstance(part, torch.Tensor)
assert part.tolist() == [float(size)] * 2
root = chorus.broadcast(torch.full((2,), float(rank)), root=size - 1)
assert isinstance(root, torch.Tensor)
assert root.tolist() == [size - 1.0] * 2
ok("torch gather scatter broadcast")

if size > 1:
    peer = (rank + 1) % size
    sent = torch.full((3,), 7.0 + rank)
    assert chorus.send(sent, peer) is sent
    came = chorus.recv_like(torch.zeros(3), (rank - 1) % size)
    assert isinstance(came, torch.Tensor)
    assert came.tolist() == [7.0 + (rank - 1) % size] * 3
    chorus.send(torch.full((2,), 1.5 + rank, dtype=torch.bfloat16), peer, tag=0)
    typed = chorus.recv((2,), torch.bfloat16, (rank - 1) % size)
    assert typed.dtype == torch.bfloat16
    assert typed.tolist() == [1.5 + (rank - 1) % size] * 2
    chorus.send(mx.arange(3, dtype=mx.int16), peer)
    mlx_typed = chorus.recv(3, mx.int16, (rank - 1) % size)
    assert isinstance(mlx_typed, mx.array)
    assert mlx_typed.tolist() == [0, 1, 2]
    ok("torch send recv")

meta = torch.ones(2, device="meta")
refused(lambda: chorus.all_sum(meta), "host memory", "meta")
ok("torch device refused")

grads = chorus.average_gradients({"w": torch.ones(2) * rank, "b": [np.ones(1) * rank]})
assert isinstance(grads["w"], torch.Tensor)
assert isinstance(grads["b"][0], np.ndarray)
assert grads["w"].tolist() == [(size - 1) / 2] * 2
ok("torch average_gradients")

# bfloat16, end to end: every framework's, against a float32 sum rounded once.
values = np.linspace(-3.7, 5.3, 64, dtype=np.float32) * (rank + 1) / 3
mine = values.astype(ml_dtypes.bfloat16)
exact = sum(
    (np.linspace(-3.7, 5.3, 64, dtype=np.float32) * (r + 1) / 3)
    .astype(ml_dtypes.bfloat16)
    .astype(np.float32)
    for r in range(size)
)
# Each partial sum rounds to bfloat16: at most one rounding (2**-8 relative) per step.
bound = np.abs(exact) * (size * 2.0**-8) + 1e-6
numpy_sum = chorus.all_sum(mine)
assert numpy_sum.dtype == mine.dtype
assert (np.abs(numpy_sum.astype(np.float32) - exact) <= bound).all()
torch_sum = chorus.all_sum(torch.from_numpy(mine.view(np.uint16)).view(torch.bfloat16))
assert torch_sum.dtype == torch.bfloat16
assert torch.equal(torch_sum.view(torch.uint16), torch.from_numpy(numpy_sum.view(np.uint16)))
mlx_sum = chorus.all_sum(mx.array(mine.astype(np.float32)).astype(mx.bfloat16))
assert mlx_sum.dtype == mx.bfloat16
assert np.array_equal(np.asarray(mlx_sum.astype(mx.float32)), numpy_sum.astype(np.float32))
jax_sum = chorus.all_sum(jnp.asarray(mine))
assert jax_sum.dtype == jnp.bfloat16
assert np.array_equal(np.asarray(jax_sum).view(np.uint16), numpy_sum.view(np.uint16))
torch_out = torch.zeros(64, dtype=torch.bfloat16)
chorus.all_sum(torch.from_numpy(mine.view(np.uint16)).view(torch.bfloat16), out=torch_out)
assert torch.equal(torch_out, torch_sum)
ok("bfloat16")

# MLX: an mx.array out (a copy: MLX owns its memory); out= written in place.
summed = chorus.all_sum(mx.arange(3, dtype=mx.float32) * (rank + 1))
assert isinstance(summed, mx.array)
assert summed.tolist() == [0.0, everyone, 2.0 * everyone]
target = mx.zeros((3,), dtype=mx.int32)
assert chorus.all_sum(mx.ones((3,), dtype=mx.int32), out=target) is target
assert target.tolist() == [size] * 3
ok("mlx")

# JAX: a jax.Array out, over the result's memory.
summed = chorus.all_sum(jnp.arange(3, dtype=jnp.float32) * (rank + 1))
assert isinstance(summed, jax.Array)
assert summed.tolist() == [0.0, everyone, 2.0 * everyone]
refused(lambda: chorus.all_sum(jnp.ones(3), out=jnp.zeros(3)), "immutable")
ok("jax out refused")
ok("jax")

# Results share chorus's buffer where promised: torch always, JAX when aligned.
result = np.arange(6, dtype=np.float32)
_, torch_kind = from_framework(torch.ones(1), "check")
assert torch_kind.wrap(result).data_ptr() == result.ctypes.data
_, jax_kind = from_framework(jnp.ones(1), "check")
aligned = empty((6,), np.dtype(np.float32), jax_kind)
assert aligned.ctypes.data % JAX_ALIGNMENT == 0
aligned[:] = result
shared = jax_kind.wrap(aligned)
assert shared.unsafe_buffer_pointer() == aligned.ctypes.data
assert shared.tolist() == result.tolist()
ok("results share memory")
