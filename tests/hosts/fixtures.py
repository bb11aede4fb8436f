"""pytest fixtures for emulated hosts (see testbed/emulated_hosts.py).

Loaded from tests/conftest.py with ``pytest_plugins``. When hosts cannot be created (not
root, no sshd, ...) the fixtures fail with the reason: a skipped test would hide it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from testbed.emulated_hosts import EmulatedHosts


class EmulatedHostsFactory(Protocol):
    """The `emulated_hosts` fixture: makes started hosts, closed at the test's teardown."""

    def __call__(self, count: int = 4, layout: str = "switch", **kw: Any) -> EmulatedHosts: ...


def make_hosts(count: int = 4, layout: str = "switch", **kw: Any) -> EmulatedHosts:
    """Started EmulatedHosts, or a test failure that says why they could not be made."""
    try:
        return EmulatedHosts(count, layout, **kw).start()
    except Exception as exc:  # noqa: BLE001 - any reason becomes the test's failure
        pytest.fail(
            f"could not create {count} emulated hosts (layout {layout!r}): "
            f"{type(exc).__name__}: {exc}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def switch_hosts() -> Iterator[EmulatedHosts]:
    """4 hosts h0..h3 on one switch (a bridge the test process is also on)."""
    hosts = make_hosts(4, "switch")
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="session")
def ring_hosts() -> Iterator[EmulatedHosts]:
    """4 hosts h0..h3 on a management switch plus cables h0-h1, h1-h2, h2-h3, h3-h0."""
    hosts = make_hosts(4, "ring")
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
def emulated_hosts() -> Iterator[EmulatedHostsFactory]:
    """A factory `emulated_hosts(count, layout, **kw)`; what it made is closed at teardown."""
    made: list[EmulatedHosts] = []

    def factory(count: int = 4, layout: str = "switch", **kw: Any) -> EmulatedHosts:
        hosts = make_hosts(count, layout, **kw)
        made.append(hosts)
        return hosts

    try:
        yield factory
    finally:
        for hosts in made:
            hosts.close()
