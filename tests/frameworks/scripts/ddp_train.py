"""A script written for torchrun: no chorus in it. Trains a tiny model with DDP.

Run it as ``torchrun --nproc-per-node 4 ddp_train.py`` or as
``chorus launch -n 4 ddp_train.py``: the same weights come out.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo")
rank, size = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
generator = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
for _ in range(5):
    optimizer.zero_grad()
    inputs = torch.randn(8, 4, generator=generator)
    loss = (model(inputs) - inputs.sum(dim=1, keepdim=True)).pow(2).mean()
    loss.backward()
    optimizer.step()
weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
gathered = [torch.zeros_like(weights) for _ in range(size)]
dist.all_gather(gathered, weights)
assert all(torch.equal(gathered[0], other) for other in gathered), "ranks diverged"
names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")
print("env", " ".join(f"{name}={os.environ[name]}" for name in names))
if rank == 0:
    print("weights", " ".join(f"{w:.6f}" for w in weights.tolist()))
dist.barrier()
dist.destroy_process_group()
# torch 2.13 sometimes aborts rank 0 in its own teardown at interpreter exit
# ("terminate called without an active exception"), under torchrun as under
# chorus launch (seen about once in 20 runs on a loaded machine): leave
# without that teardown, the output flushed, so the comparison is of training.
sys.stdout.flush()
os._exit(0)
