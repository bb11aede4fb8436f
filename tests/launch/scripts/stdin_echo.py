"""Read stdin to EOF, then print every line read, labelled by rank."""

from __future__ import annotations

import os
import sys

rank = os.environ["CHORUS_RANK"]
lines = sys.stdin.read().splitlines()
print(f"rank {rank} read {len(lines)} lines: {lines}")
