"""Fixtures for launcher tests.

Every test gets a unique ``marker`` that it passes on the rank command
lines; after the test no process whose command line carries it may exist
(the launcher and every rank are gone, whatever happened).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psutil
import pytest

from tests.launch.helpers import wait_gone


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique word for this test's command lines; no process may keep it."""
    value = f"chorus-test-{secrets.token_hex(6)}"
    yield value
    left = wait_gone(value, timeout=3.0)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"
