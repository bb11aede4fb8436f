"""Rank FAILING fails (exit code N, or a signal); the others sleep or finish.

usage: fail.py FAILING HOW OTHERS MARKER
  HOW: a number (exit code) or a signal name (the rank kills itself)
  OTHERS: "sleep" (sleep 60), "finish" (exit 0 after 0.3 s),
          "ignore-term" (ignore SIGTERM, sleep 60)
"""

from __future__ import annotations

import os
import signal
import sys
import time

rank = int(os.environ["CHORUS_RANK"])
failing, how, others = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if rank == failing:
    time.sleep(0.2)
    print(f"rank {rank} failing with {how}", flush=True)
    if how.isdigit():
        sys.exit(int(how))
    os.kill(os.getpid(), signal.Signals[how])
    time.sleep(10)
if others == "finish":
    time.sleep(0.3)
    print(f"rank {rank} finished", flush=True)
    sys.exit(0)
if others == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"rank {rank} sleeping", flush=True)
time.sleep(60)
