"""Print, as one JSON line, what a rank sees of its environment and fds."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

report: dict[str, object] = {
    "env": {k: v for k, v in os.environ.items() if k.startswith(("CHORUS_", "MLX_", "PYTHON"))},
    "argv": sys.argv[1:],
    "cwd": str(Path.cwd()),
    "fds": sorted(int(name) for name in (path.name for path in Path("/proc/self/fd").iterdir())),
    "listen": [],
}
for fd_text in os.environ.get("CHORUS_LISTEN_FDS", "").split(","):
    if not fd_text:
        continue
    sock = socket.socket(fileno=int(fd_text))
    report["listen"].append(  # type: ignore[union-attr]
        {
            "fd": int(fd_text),
            "listening": sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
            "type": int(sock.type),
            "address": "{}:{}".format(*sock.getsockname()),
        }
    )
    sock.detach()
with open(os.environ["MLX_HOSTFILE"]) as handle:
    report["mlx_hostfile"] = json.load(handle)
print(json.dumps(report))
