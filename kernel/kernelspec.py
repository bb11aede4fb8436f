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
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

DEFAULT_NAME = "chorus"
MARKER = "chorus.kernel"


def make_chorus_cmd(
    ranks: int = 4,
    backend: str = "shm",
    timeout: float | None = None,
    executable: str | None = None,
) -> list[str]:
    """The argv Jupyter runs to start a chorus kernel."""
    argv = [executable or sys.executable, "-m", MARKER, "-f", "{connection_file}"]
    argv += [f"--ranks={ranks}", f"--backend={backend}"]
    if timeout is not None:
        argv.append(f"--timeout={timeout:g}")
    return argv


def get_kernel_dict(
    ranks: int = 4, backend: str = "shm", timeout: float | None = None
) -> dict[str, Any]:
    """The content of kernel.json."""
    return {
        "argv": make_chorus_cmd(ranks, backend, timeout),
        "display_name": f"Chorus ({ranks} ranks)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False, "chorus": {"ranks": ranks, "backend": backend}},
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
    """
    if ranks < 1:
        msg = f"--ranks must be at least 1, not {ranks}"
        raise ValueError(msg)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_kernel_spec(Path(tmp) / name, get_kernel_dict(ranks, backend, timeout))
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
