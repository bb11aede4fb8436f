"""Where the ranks of a multi-host job run: ``--hosts`` lists and hostfiles, in one place.

The launcher, the kernel, the magics and ``chorus config`` all read, resolve
and write hostfiles here.

A hostfile is MLX's JSON (``mlx.launch --hostfile``), loaded unchanged: either
a list of hosts or an object with ``hosts`` and optional ``backend`` and
``envs``::

    [{"ssh": "h1", "ips": ["10.0.0.1"]}, {"ssh": "h2", "ips": ["10.0.0.2"]}]

    {"backend": "ring", "envs": ["OMP_NUM_THREADS=1"],
     "hosts": [{"ssh": "h1", "ips": ["10.0.0.1"]}, ...]}

Each entry is one rank, in rank order; a host named twice runs two ranks.
``ssh`` is what ssh connects to (a name from ``~/.ssh/config``, a host name or
an address); ``ips`` are the addresses the rank listens on for its peers (one
listening socket per address). Without ``ips`` a rank listens on the address
ssh reached its host at. Other keys (MLX's ``rdma``) are accepted and ignored.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chorus.backends import MLX_BACKENDS, NETWORK_BACKENDS

__all__ = [
    "HostEntry",
    "Hostfile",
    "HostfileError",
    "host_of",
    "load_hostfile",
    "parse_host_list",
    "parse_hostfile",
    "resolve_hosts",
]

_ENV_ITEM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def host_of(address: str) -> str:
    """The host of a rank's address, as the backends read it (``tcp::host_of``).

    ``10.0.0.1`` of ``10.0.0.1:5000``; ``fe80::1`` of ``[fe80::1]:5000`` and of
    a bare ``fe80::1`` (several colons: no port); a name without a port as is.
    """
    if address.startswith("["):
        end = address.find("]")
        return address[1:] if end < 0 else address[1:end]
    if address.count(":") != 1:
        return address
    return address.rsplit(":", 1)[0]


class HostfileError(ValueError):
    """A hostfile or host list is malformed; the message says where and how."""


@dataclass(frozen=True)
class HostEntry:
    """One rank's host.

    Attributes
    ----------
    ssh
        What ssh connects to.
    ips
        Addresses the rank listens on for its peers; empty to use the address
        ssh reached the host at.
    """

    ssh: str
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hostfile:
    """The ranks' hosts (one entry per rank) and the hostfile's settings."""

    hosts: tuple[HostEntry, ...]
    backend: str = ""
    envs: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def distinct_hosts(self) -> list[str]:
        """The ssh names, each once, in rank order of first appearance."""
        return list(dict.fromkeys(entry.ssh for entry in self.hosts))

    def repeated(self, per_host: int) -> Hostfile:
        """Each entry ``per_host`` times in a row (``--hosts a,b -n 2`` is a, a, b, b)."""
        hosts = tuple(entry for entry in self.hosts for _ in range(per_host))
        return Hostfile(hosts, self.backend, self.envs)

    def to_json(self) -> dict[str, object]:
        """The hostfile in MLX's object form (what :func:`parse_hostfile` reads back)."""
        data: dict[str, object] = {}
        if self.backend:
            data["backend"] = self.backend
        if self.envs:
            data["envs"] = [f"{name}={value}" for name, value in self.envs]
        data["hosts"] = [{"ssh": entry.ssh, "ips": list(entry.ips)} for entry in self.hosts]
        return data


def _check_ip(text: object, where: str) -> str:
    if not isinstance(text, str):
        msg = f"{where}: expected an IP address string, got {text!r}"
        raise HostfileError(msg)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        msg = f"{where}: {text!r} is not an IP address"
        raise HostfileError(msg) from None
    return text


def parse_host_list(text: str) -> Hostfile:
    """``--hosts h1,h2,10.0.0.3``: one rank per name; an IP is also its listen address."""
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or any(not name for name in names):
        msg = f"--hosts {text!r}: expected a comma-separated list of host names, none empty"
        raise HostfileError(msg)
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            ips: tuple[str, ...] = (name,)
        except ValueError:
            ips = ()
        entries.append(HostEntry(name, ips))
    return Hostfile(tuple(entries))


def _parse_entry(item: object, where: str) -> HostEntry:
    if isinstance(item, str):
        # A bare name is a convenience beyond MLX's format.
        item = {"ssh": item}
    if not isinstance(item, dict):
        msg = f'{where}: expected an object like {{"ssh": "h1", "ips": ["10.0.0.1"]}}'
        raise HostfileError(msg)
    ssh = item.get("ssh")
    if not isinstance(ssh, str) or not ssh.strip():
        msg = f'{where}: "ssh" must be a non-empty host name'
        raise HostfileError(msg)
    ips = item.get("ips", [])
    if not isinstance(ips, list):
        msg = f'{where}: "ips" must be a list of addresses'
        raise HostfileError(msg)
    checked = tuple(_check_ip(ip, f"{where}, ips[{i}]") for i, ip in enumerate(ips))
    return HostEntry(ssh.strip(), checked)


def _parse_envs(envs: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(envs, list):
        msg = f'{where}: "envs" must be a list of "NAME=VALUE" strings'
        raise HostfileError(msg)
    pairs = []
    for index, item in enumerate(envs):
        if not isinstance(item, str) or not _ENV_ITEM.match(item):
            msg = f'{where}: envs[{index}] = {item!r} is not "NAME=VALUE"'
            raise HostfileError(msg)
        name, _, value = item.partition("=")
        pairs.append((name, value))
    return tuple(pairs)


def parse_hostfile(text: str, source: str) -> Hostfile:
    """Parse hostfile JSON; ``source`` names it in error messages."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"{source}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        raise HostfileError(msg) from None
    backend = ""
    envs: tuple[tuple[str, str], ...] = ()
    if isinstance(data, dict):
        if "hosts" not in data:
            msg = f'{source}: an object hostfile needs a "hosts" list'
            raise HostfileError(msg)
        raw_backend = data.get("backend", "") or ""
        if not isinstance(raw_backend, str):
            msg = f'{source}: "backend" must be a string'
            raise HostfileError(msg)
        backend = raw_backend
        envs = _parse_envs(data.get("envs", []), source)
        data = data["hosts"]
    if not isinstance(data, list) or not data:
        msg = f'{source}: expected a non-empty list of hosts like [{{"ssh": "h1"}}, ...]'
        raise HostfileError(msg)
    hosts = tuple(_parse_entry(item, f"{source}: host {i}") for i, item in enumerate(data))
    return Hostfile(hosts, backend, envs)


def load_hostfile(path: str | Path) -> Hostfile:
    """Read and parse the hostfile at ``path``.

    Raises
    ------
    HostfileError
        If it cannot be read or is malformed; the message names the file and
        the entry.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        msg = f"hostfile {path}: cannot read it ({err.strerror})"
        raise HostfileError(msg) from None
    return parse_hostfile(text, f"hostfile {path}")


def resolve_hosts(*, hosts: str | None, hostfile: str | None, per_host: int) -> Hostfile | None:
    """The ranks' hosts: ``hostfile``'s entries, or ``per_host`` ranks on each of ``hosts``.

    ``None`` when neither is given: every rank runs here.

    Raises
    ------
    HostfileError
        The hostfile cannot be read or either is malformed.
    """
    if hostfile:
        return load_hostfile(hostfile)
    if hosts:
        return parse_host_list(hosts).repeated(per_host)
    return None


def chorus_backend(hostfile_backend: str, source: str) -> str:
    """The chorus backend for a hostfile's ``backend`` (MLX's names are mapped)."""
    name = MLX_BACKENDS.get(hostfile_backend, hostfile_backend)
    if name not in (*NETWORK_BACKENDS, "hier", "mpi", "any"):
        known = ", ".join(sorted({*MLX_BACKENDS, *NETWORK_BACKENDS, "hier", "any"}))
        msg = f'{source}: backend "{hostfile_backend}" cannot run here; use one of {known}'
        raise HostfileError(msg)
    return name


def describe(hosts: Sequence[HostEntry]) -> str:
    """``"h1 (2 ranks), h2 (2 ranks)"`` for progress messages."""
    counts: dict[str, int] = {}
    for entry in hosts:
        counts[entry.ssh] = counts.get(entry.ssh, 0) + 1
    return ", ".join(f"{name} ({n} rank{'s' if n != 1 else ''})" for name, n in counts.items())
