"""The chorus Jupyter kernel: every cell on N ranks (``python -m chorus.kernel``)."""

from __future__ import annotations
