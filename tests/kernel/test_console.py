"""The chorus kernel under the real `jupyter console`, typed at in tmux.

tmux gives the console a real terminal; the test types with send-keys and
reads the screen with capture-pane, as a person at the keyboard would.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from chorus.kernel.kernelspec import install

from tests.terminal import Tmux


def test_pdb_typed_in_jupyter_console(tmp_path: Path) -> None:
    install(name="chorus-console", ranks=2, backend="shm", timeout=30, prefix=str(tmp_path))
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "share" / "jupyter")}
    command = shlex.join(
        [sys.executable, "-m", "jupyter_console", "--kernel", "chorus-console", "--simple-prompt"]
    )
    tmux = Tmux(f"env JUPYTER_PATH={shlex.quote(env['JUPYTER_PATH'])} {command}", env)
    try:
        tmux.wait_for(r"In \[1\]: ")
        tmux.type("x = rank * 3; print('ready', x)")
        tmux.wait_for(r"\[1\] ready 3")
        tmux.wait_for(r"In \[2\]: ")
        tmux.type("breakpoint(); y = x + 1")
        tmux.wait_for(r"\[0,1\] ipdb> ")
        tmux.type("p x")
        tmux.wait_for(r"\[1\] 3")
        tmux.wait_for(r"\[0,1\] ipdb> ", count=2)
        tmux.type("!1 p x * 100")
        tmux.wait_for(r"\[1\] 300")
        tmux.wait_for(r"\[0,1\] ipdb> ", count=3)
        tmux.type("!0 c")
        tmux.wait_for(r"\[1\] ipdb> ")
        tmux.type("c")
        tmux.wait_for(r"In \[3\]: ")
        tmux.type("print('y', y)")
        screen = tmux.wait_for(r"\[1\] y 4")
        assert "[0] y 1" in screen, screen
        # Help through the pager payload, and each rank's history of this session.
        tmux.wait_for(r"In \[4\]: ")
        tmux.type("zip?")
        tmux.wait_for(r"Docstring:")
        tmux.wait_for(r"In \[5\]: ")
        tmux.type("%history -n -l 2")
        screen = tmux.wait_for(r"\[0,1\]\s+4: zip\?")
        assert "frozen modules" not in screen, screen
        _exit(tmux)
    finally:
        tmux.close()


def _exit(tmux: Tmux) -> None:
    """Type exit; the console must end (taking its tmux session with it)."""
    tmux.type("exit")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            tmux.screen()
        except subprocess.CalledProcessError:
            return
        time.sleep(0.2)
    raise AssertionError("jupyter console did not exit")


def test_up_arrow_recalls_the_last_session_in_jupyter_console(tmp_path: Path) -> None:
    """jupyter console's own prompt (prompt_toolkit) loads the kernel's history at start."""
    install(name="chorus-history", ranks=2, backend="shm", timeout=30, prefix=str(tmp_path))
    jupyter_path = str(tmp_path / "share" / "jupyter")
    env = {**os.environ, "JUPYTER_PATH": jupyter_path, "IPYTHONDIR": str(tmp_path / "ipython")}
    command = shlex.join([sys.executable, "-m", "jupyter_console", "--kernel", "chorus-history"])
    first = Tmux(
        f"env JUPYTER_PATH={shlex.quote(jupyter_path)} IPYTHONDIR={env['IPYTHONDIR']} {command}",
        env,
    )
    try:
        first.wait_for(r"In \[1\]: ")
        first.type("marker = 'from the last session'")
        first.wait_for(r"In \[2\]: ")
        _exit(first)
    finally:
        first.close()
    second = Tmux(
        f"env JUPYTER_PATH={shlex.quote(jupyter_path)} IPYTHONDIR={env['IPYTHONDIR']} {command}",
        env,
    )
    try:
        second.wait_for(r"In \[1\]: ")
        second.keys("Up")  # the last line of the last session: its exit, as in IPython
        second.wait_for(r"In \[1\]: exit")
        second.keys("Up")
        second.wait_for(r"In \[1\]: marker = 'from the last session'")
        second.keys("Enter")
        second.wait_for(r"In \[2\]: ")
        second.type("print(marker)")
        second.wait_for(r"\[0,1\] from the last session")
        _exit(second)
    finally:
        second.close()
