"""The one exception of ``chorus config``."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """Discovery or checking failed; the message names the host or cable and what to do."""
