"""ssh connections to the ranks' hosts (asyncssh), opened in parallel.

asyncssh reads the user's ``~/.ssh/config`` (host aliases, users, ports,
identity files, ProxyJump), uses the ssh agent and the default keys, exactly
as ``ssh`` would. Host keys are checked against ``known_hosts``; an unknown
key is refused unless the user passed ``--accept-new-host-keys`` (then it is
recorded, like OpenSSH's ``StrictHostKeyChecking=accept-new``); a changed key
is always refused.

Every failure becomes an :class:`SshError` that names the host and says what
to do about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncssh

__all__ = ["SshError", "connect_all", "known_hosts_files"]

CONNECT_TIMEOUT = 15.0
# A host that stops answering is noticed within about 15 s.
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT = 3
PROGRESS_INTERVAL = 0.5


class SshError(Exception):
    """A host cannot be reached or used; the message names it and says what to do."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


def known_hosts_files() -> list[Path]:
    """``~/.ssh/known_hosts`` and every ``UserKnownHostsFile`` named in ``~/.ssh/config``."""
    ssh_dir = Path("~/.ssh").expanduser()
    files = [ssh_dir / "known_hosts"]
    config = ssh_dir / "config"
    with contextlib.suppress(OSError):
        for line in config.read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*UserKnownHostsFile\s*=?\s*(.+)", line, re.IGNORECASE)
            if match:
                for name in match.group(1).split():
                    if name.lower() != "none":
                        files.append(Path(name.strip('"')).expanduser())
    return list(dict.fromkeys(files))


class _HostKeys:
    """Trusted keys for one connection, remembering why a key was refused."""

    def __init__(self, accept_new: bool) -> None:
        self.accept_new = accept_new
        self.known = False
        self.added_to: Path | None = None

    def lookup(self, host: str, addr: str, port: int | None) -> Any:
        """asyncssh's known_hosts callable: the keys recorded for this host."""
        from chorus.sshlib import asyncssh

        keys: list[Any] = []
        cas: list[Any] = []
        revoked: list[Any] = []
        for path in known_hosts_files():
            if not path.is_file():
                continue
            try:
                found = asyncssh.match_known_hosts(str(path), host, addr, port)
            except (OSError, ValueError):
                continue
            keys += found[0]
            cas += found[1]
            revoked += found[2]
        self.known = bool(keys or cas)
        return keys, cas, revoked

    def add(self, host: str, key: asyncssh.SSHKey) -> bool:
        """Record a new host's key (``--accept-new-host-keys``); never replace one."""
        if self.known or not self.accept_new:
            return False
        path = known_hosts_files()[0]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = f"{host} {key.export_public_key().decode().strip()}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(line)
        self.added_to = path
        return True


def _client_factory(keys: _HostKeys) -> Callable[[], asyncssh.SSHClient]:
    from chorus.sshlib import asyncssh

    class Client(asyncssh.SSHClient):
        def validate_host_public_key(
            self, host: str, addr: str, port: int, key: asyncssh.SSHKey
        ) -> bool:
            # Called only for a key known_hosts does not list.
            return keys.add(host, key)

    return Client


def _explain(host: str, exc: BaseException, keys: _HostKeys) -> SshError:
    from chorus.sshlib import asyncssh

    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if keys.known:
            return SshError(
                host,
                "the host key has CHANGED since it was recorded in known_hosts: this may be "
                "an attack, or the host was reinstalled; if you know why, remove the old key "
                f"with `ssh-keygen -R {host}` and connect once with `ssh {host}`",
            )
        return SshError(
            host,
            f"the host key is unknown (not in {known_hosts_files()[0]}): connect once with "
            f"`ssh {host}` to check and record it, or pass --accept-new-host-keys",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return SshError(
            host,
            "authentication refused: none of your keys (ssh agent, ~/.ssh/id_*, IdentityFile) "
            f"is accepted there; install one with `ssh-copy-id {host}` and check `ssh {host}`",
        )
    if isinstance(exc, TimeoutError):
        return SshError(
            host, f"unreachable: no answer within {CONNECT_TIMEOUT:g} s (is the host up?)"
        )
    if isinstance(exc, ConnectionRefusedError):
        return SshError(host, "unreachable: connection refused (is sshd running there?)")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        return SshError(host, f"unreachable: {reason} (check the name and `ssh {host}`)")
    if isinstance(exc, asyncssh.Error):
        return SshError(host, f"ssh failed: {exc.reason}")
    return SshError(host, f"ssh failed: {exc!r}")


async def _connect(host: str, accept_new: bool) -> asyncssh.SSHClientConnection:
    from chorus.sshlib import asyncssh

    keys = _HostKeys(accept_new)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await asyncssh.connect(
                host,
                known_hosts=keys.lookup,
                client_factory=_client_factory(keys),
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT,
            )
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise _explain(host, exc, keys) from exc


async def connect_all(
    hosts: Sequence[str],
    *,
    accept_new_host_keys: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[asyncssh.SSHClientConnection]:
    """Open one connection per entry of ``hosts`` (names may repeat), all at once.

    ``progress`` gets a status line every half second while connections are
    pending (how many hosts are up, which are slow).

    Raises
    ------
    SshError
        For the first host that fails (all others are closed); if several
        fail, the message lists them all.
    """
    started = time.monotonic()
    tasks = [(host, asyncio.create_task(_connect(host, accept_new_host_keys))) for host in hosts]
    try:
        pending = {task for _, task in tasks}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=PROGRESS_INTERVAL)
            if progress is not None:
                waiting = list(dict.fromkeys(host for host, task in tasks if not task.done()))
                up = sum(task.done() for _, task in tasks)
                line = f"connecting: {up}/{len(tasks)} ssh connection(s) up"
                if waiting:
                    shown = ", ".join(waiting[:4]) + (" ..." if len(waiting) > 4 else "")
                    line += f"; waiting for {shown} ({time.monotonic() - started:.1f} s)"
                progress(line)
        failures = [task.exception() for _, task in tasks if task.exception() is not None]
        if failures:
            first = failures[0]
            assert isinstance(first, BaseException)
            if len(failures) > 1:
                detail = "\n  ".join(str(exc) for exc in failures)
                raise SshError(
                    ", ".join(getattr(exc, "host", "?") for exc in failures),
                    f"{len(failures)} hosts failed:\n  {detail}",
                ) from first
            raise first
        return [task.result() for _, task in tasks]
    except BaseException:
        for _, task in tasks:
            task.cancel()
        for _, task in tasks:
            with contextlib.suppress(BaseException):
                conn = await task
                conn.close()
        raise
