"""Sum an array over every rank.

Runs alone (``python examples/allsum.py``: one rank, the sum is the array)
and as N ranks (``chorus launch -n 4 examples/allsum.py``).
"""

import numpy as np

import chorus

g = chorus.init()
x = chorus.all_sum(np.arange(4) * (g.rank() + 1))
print(f"rank {g.rank()}/{g.size()}: {x}")
