"""IPython magics for chorus: ``%load_ext chorus`` then ``%chorus start -n 4``."""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%chorus``, ``%%all`` and ``%autoall`` (called by ``%load_ext chorus``)."""
    from chorus.magics.magics import ChorusMagics

    ipython.register_magics(ChorusMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the ranks when the extension is unloaded."""
    from chorus.magics.magics import ChorusMagics

    magics = ipython.magics_manager.registry.get(ChorusMagics.__name__)
    if magics is not None:
        magics.stop_ranks()
