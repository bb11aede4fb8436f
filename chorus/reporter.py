"""Where long-running library code tells what it does; the CLI decides how it looks.

Library code never prints: the launcher, placement and ``chorus config``
report set-up steps, events and a live status line to a :class:`Reporter`
(``chorus.cli`` writes them to stderr; the kernel to its log).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Reporter", "SilentReporter"]


class Reporter(Protocol):
    """Where a job (or ``chorus config``) tells what it does; implemented by the CLI."""

    def progress(self, message: str) -> None:
        """A set-up or teardown step, or a command run on a host: shown with ``--verbose``."""

    def event(self, message: str) -> None:
        """Something the user must see: a rank failed, ranks are stopped."""

    def status(self, line: str) -> None:
        """A live status line while a slow step runs (``""`` clears it)."""


class SilentReporter:
    """A :class:`Reporter` that drops everything."""

    def progress(self, message: str) -> None:
        """Drop ``message``."""

    def event(self, message: str) -> None:
        """Drop ``message``."""

    def status(self, line: str) -> None:
        """Drop ``line``."""
