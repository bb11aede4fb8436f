"""Tests of ``chorus config``: parsers, topology checks, and discovery on emulated hosts."""

from __future__ import annotations
