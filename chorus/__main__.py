"""``python -m chorus``: the same as the ``chorus`` command."""

from __future__ import annotations

from chorus.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
