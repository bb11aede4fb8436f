"""Stop every rank in pdb; the test drives all of them from one terminal."""

from __future__ import annotations

import os

rank = int(os.environ["CHORUS_RANK"])
breakpoint()  # noqa: T100 - the test drives this pdb
print(f"rank {rank} done")
