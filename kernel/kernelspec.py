"""Kernelspecs for the chorus kernel: ``chorus kernel install|list|remove``.

Split as ipykernel's kernelspec module: the command line, the kernel.json
dict, writing a spec folder, and installing it with jupyter_client's
KernelSpecManager (user, sys-prefix or any prefix).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from chorus.hostfile import load_hostfile, resolve_hosts

DEFAULT_NAME = "chorus"
MARKER = "chorus.kernel"


@dataclass(frozen=True)
class Placement:
    """Where a kernel's ranks run: here, on ``hosts`` (ranks per host), or as a hostfile says."""

    hosts: str | None = None
    hostfile: str | None = None
    python: str | None = None

    def options(self) -> list[str]:
        argv = []
        if self.hostfile:
            argv.append(f"--hostfile={Path(self.hostfile).absolute()}")
        if self.hosts:
            argv.append(f"--hosts={self.hosts}")
        if self.python:
            argv.append(f"--python={self.python}")
        return argv

    def total_ranks(self, ranks: int) -> int:
        """How many ranks the kernel runs (``ranks`` is per host with ``hosts``)."""
        hosts = resolve_hosts(hosts=self.hosts, hostfile=self.hostfile, per_host=ranks)
        return ranks if hosts is None else len(hosts.hosts)

    def where(self) -> str:
        if self.hostfile:
            return f" on {', '.join(load_hostfile(self.hostfile).distinct_hosts)}"
        if self.hosts:
            return f" on {self.hosts.replace(',', ', ')}"
        return ""


def make_chorus_cmd(
    ranks: int = 4,
    backend: str = "shm",
    timeout: float | None = None,
    executable: str | None = None,
    placement: Placement | None = None,
) -> list[str]:
    """The argv Jupyter runs to start a chorus kernel."""
    argv = [executable or sys.executable, "-m", MARKER, "-f", "{connection_file}"]
    argv += [f"--ranks={ranks}", f"--backend={backend}"]
    if timeout is not None:
        argv.append(f"--timeout={timeout:g}")
    if placement is not None:
        argv += placement.options()
    return argv


def get_kernel_dict(
    ranks: int = 4,
    backend: str = "shm",
    timeout: float | None = None,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """The content of kernel.json (the hosts are checked now, not when the kernel starts)."""
    placement = placement or Placement()
    total = placement.total_ranks(ranks)
    return {
        "argv": make_chorus_cmd(ranks, backend, timeout, placement=placement),
        "display_name": f"Chorus ({total} ranks{placement.where()})",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True, "chorus": {"ranks": total, "backend": backend}},
    }


def write_kernel_spec(path: Path, kernel_dict: dict[str, Any]) -> Path:
    """Write ``kernel.json`` (and nothing else) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "kernel.json").write_text(json.dumps(kernel_dict, indent=1) + "\n")
    return path


def install(
    name: str = DEFAULT_NAME,
    ranks: int = 4,
    backend: str = "shm",
    timeout: float | None = None,
    user: bool = False,
    prefix: str | None = None,
    placement: Placement | None = None,
) -> str:
    """Install a chorus kernelspec; returns the folder it was written to.

    Parameters
    ----------
    name
        Kernelspec name (folder name), e.g. ``chorus-8``.
    ranks, backend, timeout
        How the kernel starts its ranks.
    user
        Install for the current user instead of system-wide.
    prefix
        Install under this prefix (``sys.prefix`` for ``--sys-prefix``).
    placement
        Remote hosts for the ranks (``ranks`` is then per host with ``hosts``).
    """
    if ranks < 1:
        msg = f"--ranks must be at least 1, not {ranks}"
        raise ValueError(msg)
    with tempfile.TemporaryDirectory() as tmp:
        spec = get_kernel_dict(ranks, backend, timeout, placement)
        source = write_kernel_spec(Path(tmp) / name, spec)
        return str(
            KernelSpecManager().install_kernel_spec(str(source), name, user=user, prefix=prefix)
        )


def list_specs() -> dict[str, dict[str, Any]]:
    """Installed chorus kernelspecs: name -> {"resource_dir": ..., "spec": ...}."""
    specs = KernelSpecManager().get_all_specs()
    return {name: info for name, info in specs.items() if MARKER in info["spec"].get("argv", [])}


def remove(name: str) -> str:
    """Remove the chorus kernelspec ``name``; returns the folder removed.

    Raises
    ------
    KeyError
        No chorus kernelspec of that name is installed.
    """
    specs = list_specs()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        msg = f"no chorus kernel named {name!r} (installed: {known})"
        raise KeyError(msg)
    path = specs[name]["resource_dir"]
    shutil.rmtree(path)
    return str(path)
