"""A program in a real terminal: tmux, typed at with send-keys, read with capture-pane."""

from __future__ import annotations

import os
import re
import subprocess
import time


class Tmux:
    """One tmux session on a private server socket."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.socket = f"chorus-test-{os.getpid()}"
        self.target = "console"
        self._tmux(
            "new-session", "-d", "-s", self.target, "-x", "200", "-y", "60", command, env=env
        )

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        return done.stdout

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", self.target, "-l", line)
        self._tmux("send-keys", "-t", self.target, "Enter")

    def keys(self, *names: str) -> None:
        """Press keys by tmux's names ("Up", "Enter", "C-c")."""
        self._tmux("send-keys", "-t", self.target, *names)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", self.target, "-S", "-2000")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60.0) -> str:
        """Wait until ``pattern`` shows ``count`` times on the screen; return it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if len(re.findall(pattern, screen)) >= count:
                return screen
            if time.monotonic() > deadline:
                msg = f"{pattern!r} x{count} never appeared; screen:\n{screen}"
                raise AssertionError(msg)
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], check=False, timeout=30)
