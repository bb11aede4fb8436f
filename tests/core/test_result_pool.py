"""Large results come from recycled memory (chorus/pool.py): reused only once nothing uses it.

The pool's own rules first, then real collectives on 2 shm ranks: every
result right, a result reused only when its arrays, views and tensors are
gone, and as fast as ``out=`` once warm (reported, not asserted).
"""

from __future__ import annotations

import threading

import numpy as np

from chorus.pool import ResultPool
from tests.conftest import RankRunner

SIZE = 4 << 20


def test_a_buffer_is_reused_only_once_every_view_of_it_is_gone() -> None:
    pool = ResultPool()
    first = pool.take(SIZE)
    address = first.ctypes.data
    assert address % 4096 == 0
    first.view(np.float32)[:] = 2.5
    view = first.view(np.float32)[::3]
    del first
    second = pool.take(SIZE)
    assert second.ctypes.data != address  # the view still uses it
    second.view(np.float32)[:] = -1.0
    assert (view == 2.5).all()
    del view
    third = pool.take(SIZE)
    assert third.ctypes.data == address
    assert pool.kept_bytes == 0
    del second, third
    assert pool.kept_bytes == 2 * SIZE


def test_free_memory_kept_is_bounded() -> None:
    pool = ResultPool(keep_bytes=3 * SIZE)
    held = [pool.take(SIZE) for _ in range(5)]
    del held
    assert pool.kept_bytes == 3 * SIZE


def test_a_torch_tensor_keeps_its_buffer() -> None:
    import torch

    pool = ResultPool()
    array = pool.take(SIZE).view(np.float32)
    array[:] = 1.5
    tensor = torch.from_numpy(array)
    address = array.ctypes.data
    del array
    other = pool.take(SIZE)
    assert other.ctypes.data != address
    other[:] = 0
    assert float(tensor.sum()) == 1.5 * SIZE / 4


def test_threads_taking_and_dropping_buffers_never_share_one() -> None:
    pool = ResultPool(keep_bytes=8 * SIZE)
    failures: list[str] = []

    def worker(mark: int) -> None:
        for _ in range(200):
            mine = pool.take(SIZE)
            mine[::4096] = mark
            if not (mine[::4096] == mark).all():
                failures.append(f"thread {mark} saw another's writes")
            del mine

    threads = [threading.Thread(target=worker, args=(m,)) for m in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


RESULTS = r"""
import numpy as np
import chorus
from chorus.pool import MIN_BYTES

g = chorus.init(strict=True)
rank, size = g.rank(), g.size()
n = MIN_BYTES // 4 + 1  # float32 elements: a pooled result
x = np.arange(n, dtype=np.float32) * (rank + 1)
want = np.arange(n, dtype=np.float32) * sum(r + 1 for r in range(size))
kept = []
addresses = []
for step in range(12):
    y = chorus.all_sum(x)
    assert np.array_equal(y, want), step
    addresses.append(y.ctypes.data)
    if step % 4 == 0:
        kept.append(y[::7])  # a view outlives y: its memory must not be reused
for view in kept:
    assert np.array_equal(view, want[::7])
# Reused: 12 results needed no more than the kept ones plus two alternating.
assert len(set(addresses)) <= len(kept) + 2, len(set(addresses))
gathered = chorus.all_gather(np.full(MIN_BYTES // 8, rank, dtype=np.float64))
assert np.array_equal(gathered, np.repeat(np.arange(size, dtype=np.float64), MIN_BYTES // 8))
print("RESULTS-OK", len(set(addresses)))
"""


def test_collective_results_from_the_pool_are_right_and_reused(ranks: RankRunner) -> None:
    for result in ranks.run(RESULTS, 2, backend="shm"):
        assert "RESULTS-OK" in result.stdout, result.stdout
