"""Emulated hosts for tests: network namespaces, each running a real OpenSSH server."""

from __future__ import annotations
