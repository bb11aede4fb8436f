"""The remote end of one rank: runs on the rank's host, started over ssh.

``chorus launch --hosts`` sends this file's source to the remote interpreter
(``python -I -c <source>``), so nothing but Python must exist at a fixed path
there; it uses the standard library only and runs on Linux and macOS.

The launcher talks to it over the ssh channel's stdin and stdout, in two
steps, before the rank exists:

1. *prepare*: the agent binds the rank's listening sockets (one per address;
   port 0, so no other program can hold the port) and picks free ports for
   MLX, checks that the files the command needs exist and that chorus is
   importable, and answers with its ports, host name and pid.
2. *start* (once every host answered, so every rank's address is known): the
   launcher sends the environment and command; the agent starts the rank in
   its own session with the listening sockets inherited
   (``CHORUS_LISTEN_FDS``) and MLX's hostfile in a memfd: no file is written.

Requests are ``<length>\\n<json>`` on stdin; answers are one line
``CHORUS-AGENT <json>`` on stdout. Afterwards the channel's stdin, stdout and
stderr belong to the rank (the agent never reads or writes them again).

Lifetime: the agent asks for SIGUSR1 when its parent (the ssh session) dies,
so a lost connection or a killed launcher stops the rank. Signals the launcher
sends the agent (``kill`` over ssh: SIGINT, SIGTERM, SIGHUP, SIGQUIT) go to the
rank's whole process group (on Linux the launcher signals that group itself,
so its ``kill`` returns once the signal is there); SIGUSR1 kills that group.
When the rank exits, whatever it left in its group is killed and the agent
exits the same way the rank did (same code, or the same signal), which ssh
reports to the launcher.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPLY_TAG = "CHORUS-AGENT "
# SIGURG: the launcher asks the rank where it is (chorus.where).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGURG)
KILL_REQUEST = signal.SIGUSR1
PR_SET_PDEATHSIG = 1


def _read_exact(count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = os.read(0, count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def read_request() -> dict[str, Any]:
    """One ``<length>\\n<json>`` request, read byte-exactly from fd 0.

    Nothing past the request is consumed: what follows is the rank's stdin.
    """
    header = bytearray()
    while not header.endswith(b"\n"):
        header += _read_exact(1)
        if len(header) > 20:
            msg = "bad request header"
            raise ValueError(msg)
    request: dict[str, Any] = json.loads(_read_exact(int(header)))
    return request


def reply(message: dict[str, Any]) -> None:
    """Write one ``CHORUS-AGENT <json>`` line to fd 1."""
    data = (REPLY_TAG + json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _die_with_parent(signum: int) -> None:
    """Ask Linux for ``signum`` when our parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


def _listen(ip: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((ip, 0))
    sock.listen(socket.SOMAXCONN)
    os.set_inheritable(sock.fileno(), True)
    return sock


def _free_port(ip: str) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _machine_id() -> str:
    """The running kernel's boot id: equal on hosts that share one machine's cores.

    Network namespaces and containers see their machine's; ``""`` where
    there is none (not Linux).
    """
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _free_ports(ip: str, count: int) -> list[int]:
    """``count`` distinct ports that were free on ``ip`` a moment ago (for ZMQ)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    held = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in held:
            sock.bind((ip, 0))
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def _reserved_ports(ip: str, count: int) -> list[int]:
    """Ports in TIME_WAIT, bindable only with SO_REUSEADDR (as chorus.launch.ports's)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    ports = []
    for _ in range(count):
        with socket.socket(family, socket.SOCK_STREAM) as server, socket.socket(family) as client:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((ip, 0))
            server.listen(1)
            port = server.getsockname()[1]
            client.connect((loopback if ip in ("0.0.0.0", "::") else ip, port))
            accepted, _ = server.accept()
            accepted.close()  # this side closes first: the port's end goes to TIME_WAIT
            ports.append(port)
    return ports


def interface_of(ip: str) -> str | None:
    """The network interface that holds IPv4 address ``ip`` (for gloo's GLOO_SOCKET_IFNAME)."""
    if ":" in ip or not hasattr(socket, "if_nameindex"):
        return None
    import fcntl
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(
                    probe.fileno(), siocgifaddr, struct.pack("256s", name[:15].encode())
                )
            except OSError:
                continue  # no IPv4 address on it
            if socket.inet_ntoa(raw[20:24]) == ip:
                return name
    return None


def prepare(request: dict[str, Any]) -> tuple[dict[str, Any], list[socket.socket]]:
    """Step 1: check the host and bind the rank's sockets."""
    host = socket.gethostname()
    for path in request.get("check_paths", []):
        if not Path(path).exists():
            return {"ok": False, "error": f"{path} does not exist on {host}"}, []
    if request.get("need_chorus") and importlib.util.find_spec("chorus") is None:
        error = f"chorus is not installed for {sys.executable} on {host}"
        return {"ok": False, "error": error, "kind": "no-chorus"}, []
    cwd = request.get("cwd")
    if cwd and not Path(cwd).is_dir():
        cwd = str(Path.home())
    sockets: list[socket.socket] = []
    ports: list[int] = []
    mlx_ports: list[int] = []
    try:
        for ip in request["bind"]:
            sockets.append(_listen(ip))
            ports.append(sockets[-1].getsockname()[1])
            mlx_ports.append(_free_port(ip))
    except OSError as err:
        for sock in sockets:
            sock.close()
        error = f"cannot listen on {ip} on {host}: {err.strerror}"
        return {"ok": False, "error": error, "kind": "bind"}, []
    free_ip = request["bind"][0] if request["bind"] else "0.0.0.0"
    answer = {
        "ok": True,
        "hostname": host,
        "pid": os.getpid(),
        "ports": ports,
        "mlx_ports": mlx_ports,
        "free_ports": _free_ports(free_ip, request.get("free_ports", 0)),
        "rendezvous_ports": _reserved_ports(free_ip, 2),
        "interface": interface_of(request["advertise"][0]) if request.get("advertise") else None,
        "cores": _usable_cores(),
        "machine": _machine_id(),
        "cwd": cwd,
        "python": sys.version.split()[0],
    }
    return answer, sockets


def _memfd(text: str) -> int:
    fd = os.memfd_create("chorus", 0)
    # Private, and what jupyter's secure_write insists on when a kernel
    # rewrites its connection file.
    os.fchmod(fd, 0o600)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Supervisor:
    """Runs the rank, forwards signals to its group, exits as it did."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None

    def _signal_group(self, signum: int) -> None:
        if self.child is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, signum)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == KILL_REQUEST:
            self._signal_group(signal.SIGKILL)
        else:
            self._signal_group(signum)

    def install(self) -> None:
        for signum in (*FORWARDED, KILL_REQUEST):
            signal.signal(signum, self._on_signal)

    def run(self, request: dict[str, Any], sockets: list[socket.socket]) -> int:
        env = dict(os.environ)
        env.update(request["env"])
        fds = [sock.fileno() for sock in sockets]
        env["CHORUS_LISTEN_FDS"] = ",".join(str(fd) for fd in fds)
        mlx_text = request.get("mlx_hostfile")
        if mlx_text and hasattr(os, "memfd_create"):
            fd = _memfd(mlx_text)
            fds.append(fd)
            env["MLX_HOSTFILE"] = f"/proc/self/fd/{fd}"
        # Files the rank reads (a kernel's connection file), as memfds named
        # "{memfd:NAME}" in its argv and environment.
        paths = {}
        for name, text in request.get("memfds", {}).items():
            fd = _memfd(text)
            fds.append(fd)
            paths["{memfd:" + name + "}"] = f"/proc/self/fd/{fd}"

        def substitute(text: str) -> str:
            for placeholder, path in paths.items():
                text = text.replace(placeholder, path)
            return text

        env = {key: substitute(value) for key, value in env.items()}

        def in_child() -> None:
            # The rank dies with the agent even if the agent is SIGKILLed.
            _die_with_parent(signal.SIGKILL)

        argv = [substitute(arg) for arg in request["argv"]]
        try:
            self.child = subprocess.Popen(
                argv,
                env=env,
                cwd=request.get("cwd") or None,
                pass_fds=fds,
                start_new_session=True,
                # The agent has no threads, so preexec_fn is safe here.
                preexec_fn=in_child if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        except OSError as err:
            sys.stderr.write(f"chorus: {socket.gethostname()}: cannot run {argv[0]}: {err}\n")
            return 127
        finally:
            for sock in sockets:
                sock.close()
            for fd in fds[len(sockets) :]:
                os.close(fd)
        returncode = self.child.wait()
        # Whatever the rank started and left running goes with it.
        self._signal_group(signal.SIGKILL)
        return returncode


def exit_like(returncode: int) -> None:
    """Exit with ``returncode``, or die of the same signal (ssh reports it)."""
    if returncode < 0:
        signum = -returncode
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(returncode if returncode >= 0 else 128 - returncode)


def main() -> None:
    """Run the two steps, then supervise the rank."""
    supervisor = Supervisor()
    supervisor.install()
    _die_with_parent(KILL_REQUEST)
    try:
        answer, sockets = prepare(read_request())
        reply(answer)
        if not answer["ok"]:
            os._exit(3)
        request = read_request()
    except (EOFError, ValueError, OSError):
        # The launcher went away (or spoke nonsense) before the rank started.
        os._exit(4)
    exit_like(supervisor.run(request, sockets))


if __name__ == "__main__":
    main()
