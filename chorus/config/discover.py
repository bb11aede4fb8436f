"""Read every host's interfaces over ssh: one connection and one round trip per host.

Linux hosts run ``ip -j addr show``, ``ip -j link show`` and ``ip -j -4 route show``;
macOS hosts run ``ifconfig -a``, ``networksetup -listallhardwareports`` and
``system_profiler SPThunderboltDataType -json``. All of a host's commands go in one shell
line (``uname -s`` picks the set), because every remote command pays for a shell start.
The outputs are parsed by :mod:`chorus.config.interfaces`. All hosts are read at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from chorus.config.errors import ConfigError
from chorus.config.interfaces import (
    HostInterfaces,
    InterfaceParseError,
    parse_ip_json,
    parse_ip_routes,
    parse_macos,
)
from chorus.together import run_together

if TYPE_CHECKING:
    import asyncssh

__all__ = ["COMMAND_TIMEOUT", "Log", "gather", "read_host", "run_command"]

T = TypeVar("T")
COMMAND_TIMEOUT = 30.0
Log = Callable[[str], None]
# What to install when a command is missing (exit status 127 from the remote shell).
INSTALL_HINTS = {
    "ip": "install iproute2 (Debian/Ubuntu: apt install iproute2)",
    "python3": "install python3, or pass --python with the interpreter's path there",
}
# bash: "bash: line 1: ip: command not found"; dash: "sh: 1: ip: not found";
# zsh: "zsh:1: command not found: ip".
_NOT_FOUND = re.compile(r"(?:(?P<a>[^\s:]+): (?:command )?not found|command not found: (?P<b>\S+))")
LINUX_COMMANDS = ("ip -j addr show", "ip -j link show", "ip -j -4 route show")
MACOS_COMMANDS = (
    "ifconfig -a",
    "networksetup -listallhardwareports",
    "system_profiler SPThunderboltDataType -json",
)


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data if isinstance(data, str) else ""


async def run_command(
    conn: asyncssh.SSHClientConnection,
    host: str,
    command: str,
    log: Log | None = None,
    *,
    timeout: float = COMMAND_TIMEOUT,
    shown: str = "",
) -> str:
    """Run ``command`` on ``host`` and return its stdout.

    ``shown`` replaces the command in logs and messages (for long generated scripts).

    Raises
    ------
    ConfigError
        If it cannot run, is not installed (the message says what to install), exits
        non-zero (with the last line of its stderr) or takes longer than ``timeout``.
    """
    from chorus.sshlib import asyncssh

    label = shown or command
    if log is not None:
        log(f"{host}$ {label}")
    try:
        async with asyncio.timeout(timeout):
            result = await conn.run(command, check=False)
    except TimeoutError:
        msg = f"{host}: `{label}` did not finish within {timeout:g} s"
        raise ConfigError(msg) from None
    except (OSError, asyncssh.Error) as exc:
        msg = f"{host}: `{label}` could not run: {exc}"
        raise ConfigError(msg) from exc
    stderr = _text(result.stderr).strip()
    if result.exit_status == 127:
        missing = _NOT_FOUND.search(stderr)
        tool = (missing["a"] or missing["b"]) if missing else label.split()[0]
        hint = INSTALL_HINTS.get(tool, "install it or check PATH there")
        msg = f"{host}: `{tool}` is not installed there: {hint}"
        raise ConfigError(msg)
    if result.exit_status != 0:
        # Under `sh -x` each command is traced as "+ command": name the one that failed.
        traced = [line[2:] for line in stderr.splitlines() if line.startswith("+ ")]
        said = [line for line in stderr.splitlines() if not line.startswith("+ ")]
        what = traced[-1] if traced else label
        last = said[-1] if said else "no message"
        msg = f"{host}: `{what}` failed (exit status {result.exit_status}): {last}"
        raise ConfigError(msg)
    return _text(result.stdout)


SECTION = "--- chorus config: next command ---"


def discovery_script(commands: Sequence[str]) -> str:
    """One shell line running ``commands`` in turn, their outputs split by :data:`SECTION`.

    One ssh round trip per host: each remote command costs a shell start (a login shell
    that may source a slow ``.bashrc``), so discovery asks once.
    """
    return f"; echo '{SECTION}'; ".join(f"{command} || exit $?" for command in commands)


async def read_host(
    conn: asyncssh.SSHClientConnection, host: str, log: Log | None = None
) -> HostInterfaces:
    """One host's interfaces (and, on Linux, its IPv4 routes), in one ssh round trip.

    Raises
    ------
    ConfigError
        For an operating system other than Linux or macOS, a missing tool, or output
        the parsers do not understand.
    """
    linux = discovery_script(LINUX_COMMANDS)
    script = (
        f"s=$(uname -s); echo \"$s\"; echo '{SECTION}'; "
        f'case "$s" in Linux) {linux};; Darwin) {discovery_script(MACOS_COMMANDS)};; esac'
    )
    shown = "uname -s; then " + "; ".join(LINUX_COMMANDS) + " (Linux) or "
    shown += "; ".join(MACOS_COMMANDS) + " (macOS)"
    out = await run_command(conn, host, script, log, shown=shown)
    system, *sections = [part.strip("\n") for part in out.split(SECTION + "\n")]
    system = system.strip()
    peer = conn.get_extra_info("peername")
    ssh_address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    try:
        if system == "Linux" and len(sections) == len(LINUX_COMMANDS):
            addr, link, routes = sections
            interfaces = parse_ip_json(addr, link, source=f"{host}: ip -j")
            return HostInterfaces(
                host,
                system,
                tuple(interfaces),
                ssh_address,
                tuple(parse_ip_routes(routes, f"{host}: ip -j -4 route")),
            )
        if system == "Darwin" and len(sections) == len(MACOS_COMMANDS):
            ifconfig, ports, thunderbolt = sections
            interfaces = parse_macos(ifconfig, ports, thunderbolt, source=host)
            return HostInterfaces(host, system, tuple(interfaces), ssh_address)
    except InterfaceParseError as exc:
        raise ConfigError(str(exc)) from exc
    if system in ("Linux", "Darwin"):
        msg = f"{host}: the output of `{shown}` was cut short ({len(sections)} sections)"
        raise ConfigError(msg)
    msg = f"{host}: runs {system or 'an unknown system'}; chorus config reads Linux and macOS"
    raise ConfigError(msg)


async def gather(
    conns: Sequence[asyncssh.SSHClientConnection],
    hosts: Sequence[str],
    log: Log | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[HostInterfaces]:
    """Every host's interfaces, in host order; ``progress(done, total)`` as hosts answer.

    Raises
    ------
    ConfigError
        The first host's failure; the others are cancelled.
    """
    done = 0

    async def one(conn: asyncssh.SSHClientConnection, host: str) -> HostInterfaces:
        nonlocal done
        found = await read_host(conn, host, log)
        done += 1
        if progress is not None:
            progress(done, len(hosts))
        return found

    return await run_together([one(conn, host) for conn, host in zip(conns, hosts, strict=True)])
