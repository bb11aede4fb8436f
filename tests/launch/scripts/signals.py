"""Report signals: print 'ready', then count SIGINT/SIGTERM for a while.

usage: signals.py MODE MARKER
  MODE "exit":   on the first SIGINT/SIGTERM print it, wait 0.5 s for a
                 second copy, print the count and exit with code 0
  MODE "ignore": print each SIGINT and keep running (a second Ctrl-C to the
                 launcher must kill us)
  MODE "sleep":  default handlers; just sleep
"""

from __future__ import annotations

import os
import signal
import sys
import time

rank = int(os.environ["CHORUS_RANK"])
mode = sys.argv[1]
received: list[int] = []


def handler(signum: int, frame: object) -> None:
    received.append(signum)
    print(f"rank {rank} got {signal.Signals(signum).name}", flush=True)


if mode in ("exit", "ignore"):
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
print(f"rank {rank} ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
    if mode == "exit" and received:
        time.sleep(0.5)
        print(f"rank {rank} count {len(received)}", flush=True)
        sys.exit(0)
sys.exit(1)
