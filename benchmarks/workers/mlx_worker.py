"""MLX ring-backend rank: under ``mlx.launch --backend ring`` or spawned directly.

Either way the rank reads MLX_RANK and MLX_HOSTFILE. Every operation is
evaluated (``mx.eval``) before the next one starts, so a timed loop measures
finished collectives, not MLX's lazy graph building.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _harness
import mlx.core as mx
import numpy as np


class MlxComm:
    """``mx.distributed.init(backend="ring", strict=True)``."""

    def __init__(self) -> None:
        self.group = mx.distributed.init(backend="ring", strict=True)
        self.rank = self.group.rank()
        self.size = self.group.size()
        self.peer = "mlx"

    def prepare(self, op: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[], Any]]:
        fn = mx.distributed.all_sum if op == "all_sum" else mx.distributed.all_gather
        array = mx.array(x)
        mx.eval(array)
        last: list[Any] = [None]

        def run() -> None:
            out = fn(array, group=self.group)
            mx.eval(out)
            last[0] = out

        return run, lambda: np.array(last[0])

    def gather(self, values: np.ndarray) -> np.ndarray:
        # float32 on purpose: every MLX build has it; times keep 7 digits.
        out = mx.distributed.all_gather(mx.array(values.astype(np.float32)), group=self.group)
        return np.array(out).astype(np.float64).reshape(self.size, -1)

    def barrier(self) -> None:
        mx.eval(mx.distributed.all_sum(mx.zeros(1), group=self.group))


if __name__ == "__main__":
    _harness.main(MlxComm)
