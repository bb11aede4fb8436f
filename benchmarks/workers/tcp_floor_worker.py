"""The TCP floor: N processes in a bare TCP ring that move the bytes of a ring collective.

Not a library and not a column to beat: a reference for what loopback TCP
itself costs on this machine. For each case a rank sends to its right
neighbour exactly the bytes a bandwidth-optimal ring algorithm sends per
rank, ``2 (N-1)/N x bytes`` for all_sum and ``(N-1) x bytes`` for all_gather,
while it receives as many from its left neighbour, and computes nothing (no
reduction, no copy of its own block). Every ring all_sum over TCP (chorus
ring, gloo, MLX's ring) pays these kernel copies and TCP work, plus its own
reductions and pipelining; the floor shows how much of a backend's time is
left to improve.

Started directly by the driver, one process per rank, with ``FLOOR_RANK``,
``FLOOR_SIZE`` and ``FLOOR_PORT`` (rank r listens on ``FLOOR_PORT + r`` on
127.0.0.1 and connects to rank r+1). Sending runs in a thread (``sendall``
releases the GIL) while the main thread receives, as a library moving both
directions at once would. The check the harness runs against numpy cannot
apply (nothing is computed): records carry ``check = "reference"``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import _harness
import numpy as np

HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 30.0


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            return socket.create_connection((HOST, port))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class FloorComm:
    """A bare TCP ring; ``prepare`` returns a run() that moves a collective's bytes."""

    checks_results = False

    def __init__(self) -> None:
        self.rank = int(os.environ["FLOOR_RANK"])
        self.size = int(os.environ["FLOOR_SIZE"])
        self.peer = "tcp floor"
        base = int(os.environ["FLOOR_PORT"])
        listener = socket.create_server((HOST, base + self.rank))
        self.right = _connect(base + (self.rank + 1) % self.size)
        self.left, _ = listener.accept()
        listener.close()
        for s in (self.left, self.right):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._todo = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._outgoing = memoryview(b"")
        self._sender = threading.Thread(target=self._send_loop, daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        while True:
            self._todo.acquire()
            self.right.sendall(self._outgoing)
            self._done.release()

    def _exchange(self, outgoing: memoryview, incoming: memoryview) -> None:
        """Send ``outgoing`` right while filling ``incoming`` from the left."""
        self._outgoing = outgoing
        self._todo.release()
        got, total = 0, len(incoming)
        while got < total:
            n = self.left.recv_into(incoming[got:])
            if n == 0:
                msg = f"rank {self.rank}: the left neighbour closed the connection"
                raise ConnectionError(msg)
            got += n
        self._done.acquire()

    def prepare(self, op: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[], Any]]:
        if op == "all_sum":
            moved = 2 * (self.size - 1) * x.nbytes // self.size
        else:
            moved = (self.size - 1) * x.nbytes
        src = memoryview(np.zeros(moved, dtype=np.uint8))
        dst = memoryview(np.empty(moved, dtype=np.uint8))
        return (lambda: self._exchange(src, dst)), lambda: None

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's row, passed N-1 times around the ring."""
        rows = np.zeros((self.size, values.size), dtype=np.float64)
        rows[self.rank] = values
        carry = np.ascontiguousarray(values, dtype=np.float64)
        for step in range(1, self.size):
            incoming = np.empty_like(carry)
            self._exchange(memoryview(carry).cast("B"), memoryview(incoming).cast("B"))
            rows[(self.rank - step) % self.size] = incoming
            carry = incoming
        return rows

    def barrier(self) -> None:
        self.gather(np.zeros(1))


if __name__ == "__main__":
    _harness.main(FloorComm)
