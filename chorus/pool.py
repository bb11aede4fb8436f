"""Recycled memory for large results: ``y = chorus.all_sum(x)`` without page faults.

A fresh result's memory is faulted in page by page as the collective first
writes it; at 64 MiB that cost as much as the collective itself (27 ms
against 13.4 ms with ``out=``, N=2, shm). Results of :data:`MIN_BYTES` or
more come from private anonymous mappings instead: when the last array (or
view, or tensor) using one dies, the mapping goes back to a free list, and
the next result of that size takes it with its pages already there.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
import weakref
from collections import defaultdict
from typing import Any

import numpy as np

# Smaller results come from numpy's allocator: glibc's malloc keeps freed
# blocks of up to 32 MiB (its largest dynamic mmap threshold) in its heap and
# hands them out again with their pages; larger ones it maps and unmaps anew.
MIN_BYTES = 32 << 20
# Free memory kept for reuse, at most; memory in live arrays is not counted.
KEEP_BYTES = 512 << 20
_HUGE = 2 << 20


class ResultPool:
    """Page-aligned result buffers, each returned to a free list when its arrays die."""

    def __init__(self, keep_bytes: int = KEEP_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self._free: defaultdict[int, list[mmap.mmap]] = defaultdict(list)
        self._kept = 0
        # Re-entrant: a give-back can run inside a take on the same thread
        # (the cyclic garbage collector may finalize a lease at any allocation).
        self._lock = threading.RLock()

    @property
    def kept_bytes(self) -> int:
        """Free memory held for reuse now."""
        return self._kept

    def take(self, nbytes: int) -> np.ndarray[Any, Any]:
        """A writable uint8 array of ``nbytes``, page-aligned, recycled when it dies."""
        size = -(-max(nbytes, 1) // mmap.PAGESIZE) * mmap.PAGESIZE
        memory = None
        with self._lock:
            free = self._free.get(size)
            if free:
                memory = free.pop()
                self._kept -= size
        if memory is None:
            # Private: a forked child's writes must not reach this process's arrays.
            memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            if size >= _HUGE and hasattr(mmap, "MADV_HUGEPAGE"):
                memory.madvise(mmap.MADV_HUGEPAGE)  # 512x fewer faults on first use
        # The lease is the arrays' base: numpy keeps it alive as long as any
        # array or view of it lives (torch.from_numpy and DLPack hold the array).
        lease = (ctypes.c_char * size).from_buffer(memory)
        weakref.finalize(lease, self._give_back, memory, size).atexit = False
        raw: np.ndarray[Any, Any] = np.frombuffer(lease, dtype=np.uint8, count=nbytes)  # type: ignore[call-overload]
        return raw

    def _give_back(self, memory: mmap.mmap, size: int) -> None:
        with self._lock:
            if self._kept + size <= self.keep_bytes:
                self._free[size].append(memory)
                self._kept += size
        # Otherwise dropped: unmapped once the dying lease lets go of it.


RESULTS = ResultPool()
