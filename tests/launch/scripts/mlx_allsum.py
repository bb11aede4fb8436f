"""A real MLX program: ring all_sum over MLX_RANK / MLX_HOSTFILE."""

from __future__ import annotations

import mlx.core as mx

group = mx.distributed.init(strict=True, backend="ring")
x = mx.distributed.all_sum(mx.arange(4) * (group.rank() + 1))
mx.eval(x)
print(f"mlx rank {group.rank()}/{group.size()}: {x.tolist()}")
