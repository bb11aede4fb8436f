"""Run with -m: print the rank, the module name and the arguments."""

from __future__ import annotations

import os
import sys

print(
    f"module {__name__} {__spec__.name if __spec__ else None} rank {os.environ['CHORUS_RANK']} args {sys.argv[1:]}"
)
