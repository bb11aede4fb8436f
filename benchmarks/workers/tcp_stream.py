"""A bulk TCP stream, the link's ceiling for the multi-host benchmark (``multihost.py``).

``tcp_stream.py serve ADDR PORT`` accepts one connection and prints one JSON
line: the bytes received and the goodput (bytes/s) measured after the first
``SKIP`` bytes (slow start and tbf's initial burst) until the sender closed.
``tcp_stream.py send ADDR PORT SECONDS`` connects and sends 1 MiB buffers for
that long. Plain blocking sockets with the kernel's default buffers, as a
library that does not tune them would use.
"""

from __future__ import annotations

import json
import socket
import sys
import time

SKIP = 16 * 1024 * 1024
CHUNK = 1 << 20


def serve(addr: str, port: int) -> None:
    """Receive one stream and print its goodput."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, port))
        listener.listen(1)
        print("listening", flush=True)
        conn, _ = listener.accept()
        buf = bytearray(CHUNK)
        total = 0
        mark: tuple[float, int] | None = None
        with conn:
            while True:
                got = conn.recv_into(buf)
                if not got:
                    break
                total += got
                if mark is None and total >= SKIP:
                    mark = (time.perf_counter(), total)
        end = time.perf_counter()
    rate = (total - mark[1]) / (end - mark[0]) if mark and end > mark[0] else 0.0
    print(json.dumps({"bytes": total, "goodput_Bps": rate}), flush=True)


def send(addr: str, port: int, seconds: float) -> None:
    """Send for ``seconds``, then close."""
    payload = b"\0" * CHUNK
    deadline = time.perf_counter() + 10
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=10)
            break
        except OSError:
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.05)
    with conn:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            conn.sendall(payload)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
