"""PyTorch gloo rank: ``torchrun --standalone --nproc-per-node N torch_worker.py``.

Under ``chorus launch`` (the multi-host benchmark, ``multihost.py``) the rank
and world size come from ``CHORUS_RANK``/``CHORUS_WORLD_SIZE`` instead, with
``MASTER_ADDR``/``MASTER_PORT`` passed by ``--env``; ``BENCH_GLOO_IFNAMES``, a
JSON list with one interface name per rank, sets ``GLOO_SOCKET_IFNAME``.

all_reduce is in place (torch's API); all_gather writes into one preallocated
tensor with ``all_gather_into_tensor`` where gloo has it, else ``all_gather``
into views of that tensor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import _harness
import numpy as np
import torch
import torch.distributed as dist


def _env_from_chorus() -> None:
    """Fill torch.distributed's variables from chorus launch's (no-op under torchrun)."""
    if "RANK" in os.environ or "CHORUS_RANK" not in os.environ:
        return
    rank = os.environ["CHORUS_RANK"]
    os.environ["RANK"] = rank
    os.environ["WORLD_SIZE"] = os.environ["CHORUS_WORLD_SIZE"]
    ifnames = os.environ.get("BENCH_GLOO_IFNAMES")
    if ifnames:
        os.environ["GLOO_SOCKET_IFNAME"] = json.loads(ifnames)[int(rank)]


class TorchComm:
    """The default process group with the gloo backend."""

    def __init__(self) -> None:
        _env_from_chorus()
        dist.init_process_group("gloo")
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.peer = "torch-gloo"

    def _all_gather(self, out: torch.Tensor, x: torch.Tensor) -> None:
        try:
            dist.all_gather_into_tensor(out, x)
        except (RuntimeError, NotImplementedError):
            dist.all_gather(list(out.chunk(self.size)), x)

    def prepare(self, op: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[], Any]]:
        tensor = torch.from_numpy(x.copy())
        if op == "all_sum":
            return (lambda: dist.all_reduce(tensor)), tensor.numpy
        out = torch.empty(self.size * tensor.numel(), dtype=tensor.dtype)
        return (lambda: self._all_gather(out, tensor)), out.numpy

    def gather(self, values: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        out = torch.empty(self.size * x.numel(), dtype=x.dtype)
        self._all_gather(out, x)
        return out.numpy().reshape(self.size, -1)

    def barrier(self) -> None:
        dist.barrier()


if __name__ == "__main__":
    _harness.main(TorchComm)
    dist.destroy_process_group()
