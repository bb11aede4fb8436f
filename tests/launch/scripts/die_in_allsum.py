"""Rank 1 dies by SIGKILL; the others are in all_sum and must raise."""

from __future__ import annotations

import os
import signal

import numpy as np

import chorus

group = chorus.init()
if group.rank() == 1:
    os.kill(os.getpid(), signal.SIGKILL)
chorus.all_sum(np.ones(1 << 20))
print("unreachable")
