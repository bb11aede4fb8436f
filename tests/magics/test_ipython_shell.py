"""The magics from a terminal IPython shell, typed at in tmux."""

from __future__ import annotations

import os
import shlex
import sys

from tests.terminal import Tmux


def test_magics_in_terminal_ipython() -> None:
    command = shlex.join([sys.executable, "-m", "IPython", "--simple-prompt", "--no-banner"])
    tmux = Tmux(command, dict(os.environ))
    try:
        tmux.wait_for(r"In \[1\]: ")
        tmux.type("%load_ext chorus")
        tmux.wait_for(r"In \[2\]: ")
        tmux.type("%chorus start -n 2 --timeout 20")
        tmux.wait_for(r"2 ranks ready")
        tmux.wait_for(r"In \[3\]: ")
        tmux.type("%%all")
        tmux.type("name = input('name? ')")
        tmux.type("print('hello', name, chorus.all_sum(np.ones(1) * rank))")
        tmux.type("")  # a cell magic ends with two empty lines at a simple prompt
        tmux.type("")
        tmux.wait_for(r"\[0,1\] name\? ")
        tmux.type("ada")
        tmux.wait_for(r"\[0,1\] hello ada \[1\.\]")
        tmux.wait_for(r"In \[4\]: ")
        tmux.type("%autoall")
        tmux.wait_for(r"In \[5\]: ")
        # One Enter runs a line on the ranks, as any line at this prompt.
        tmux.type("print('auto', rank)")
        tmux.wait_for(r"\[0\] auto 0")
        tmux.wait_for(r"In \[6\]: ")
        tmux.type("%autoall off")
        tmux.wait_for(r"In \[7\]: ")
        tmux.type("%chorus stop")
        tmux.wait_for(r"In \[8\]: ")
    finally:
        tmux.close()
