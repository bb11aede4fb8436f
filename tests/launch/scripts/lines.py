"""Print many long lines to stdout and stderr at once from every rank."""

from __future__ import annotations

import os
import sys

rank = int(os.environ["CHORUS_RANK"])
count, width = int(sys.argv[1]), int(sys.argv[2])
for i in range(count):
    # print() writes the text and the newline separately: the launcher must
    # still keep each line whole.
    print(f"{rank}:{i}:" + "x" * width)
    print(f"E{rank}:{i}:" + "y" * width, file=sys.stderr)
