"""Addresses for the ranks of a local job, chosen without races.

Ranks of the chorus backends get a socket that the launcher has already bound
and put into listening state (``listening_sockets``): its port is known before
any rank starts and nobody else can take it. The rank inherits it and uses it
as is (``CHORUS_LISTEN_FDS``).

Programs that bind their own ports (MLX) can only be given ports that were
free a moment ago (``free_ports``), and a hostfile that names them is passed
in an anonymous memory file (``memfd_hostfile``) so that no temporary file is
ever left behind, even if the launcher is killed. Programs that bind with
``SO_REUSEADDR`` (torch's TCPStore, JAX's coordinator) get ports held in
TIME_WAIT (``reserved_ports``): no one else is given them for a minute.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Sequence

__all__ = [
    "free_ports",
    "hostfile_json",
    "listening_sockets",
    "memfd_hostfile",
    "reserved_ports",
]

LOCALHOST = "127.0.0.1"


def listening_sockets(count: int, host: str = LOCALHOST) -> list[socket.socket]:
    """Bind ``count`` TCP sockets to ``host`` port 0 and listen on each.

    Parameters
    ----------
    count
        How many sockets (one per rank address).
    host
        The address to bind.

    Returns
    -------
    list of socket.socket
        Listening sockets; the caller closes them.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
            sock.listen(socket.SOMAXCONN)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """Ports that were free on ``host`` just now (bind to port 0, then close).

    All sockets are held open until every port is chosen, so the ports are
    distinct.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def reserved_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """Ports kept from everyone but programs that bind with ``SO_REUSEADDR``.

    Each port had a connection closed by its own side, so it stays in
    TIME_WAIT for about a minute: the kernel gives it to no ``bind(0)`` and
    refuses a plain ``bind`` to it, while a server that sets
    ``SO_REUSEADDR`` (as torch's TCPStore and gRPC do) binds it at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = []
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            server = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, 0))
            server.listen(1)
            client = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            client.connect(server.getsockname()[:2])
            accepted, _ = server.accept()
            accepted.close()  # this side closes first: the port's end goes to TIME_WAIT
            ports.append(server.getsockname()[1])
    return ports


def hostfile_json(addresses: Sequence[Sequence[str]]) -> str:
    """The hostfile text: a JSON list with one list of "ip:port" per rank."""
    return json.dumps([list(rank_addresses) for rank_addresses in addresses])


def memfd_hostfile(text: str, name: str = "chorus-hostfile") -> int:
    """Write ``text`` to a sealed anonymous memory file and return its fd.

    A child that inherits the fd reads the text at ``/proc/self/fd/<fd>``;
    the file disappears with its last fd, so nothing is left on disk. The
    fd is close-on-exec; pass it with ``pass_fds``. Linux only.

    Raises
    ------
    OSError
        If the memory file cannot be created or written.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        data = text.encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    except OSError:
        os.close(fd)
        raise
    return fd
