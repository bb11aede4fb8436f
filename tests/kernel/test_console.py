"""The chorus kernel under the real `jupyter console`, in a terminal (pexpect)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
from chorus.kernel.kernelspec import install


def test_pdb_in_jupyter_console(tmp_path: Path) -> None:
    install(name="chorus-console", ranks=2, backend="shm", timeout=30, prefix=str(tmp_path))
    env = {
        **os.environ,
        "JUPYTER_PATH": str(tmp_path / "share" / "jupyter"),
        "TERM": "dumb",
        "PYTHONUNBUFFERED": "1",
    }
    console = pexpect.spawn(
        sys.executable,
        ["-m", "jupyter_console", "--kernel", "chorus-console", "--simple-prompt"],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )
    transcript = []
    try:
        console.expect(r"In \[1\]: ")
        console.sendline("x = rank * 3; print('ready', x)")
        console.expect(r"\[1\] ready 3")
        console.expect(r"In \[2\]: ")
        console.sendline("breakpoint(); y = x + 1")
        console.expect(r"\[0,1\] ipdb> ")
        console.sendline("p x")
        console.expect(r"\[0\] 0")
        console.expect(r"\[0,1\] ipdb> ")
        transcript.append(console.before)
        console.sendline("!1 p x * 100")
        console.expect(r"\[1\] 300")
        console.expect(r"\[0,1\] ipdb> ")
        console.sendline("!0 c")
        console.expect(r"\[1\] ipdb> ")
        console.sendline("c")
        console.expect(r"In \[3\]: ")
        console.sendline("print('y', y)")
        console.expect(r"\[0\] y 1")
        console.expect(r"In \[4\]: ")
        console.sendline("exit")
        console.expect(pexpect.EOF)
    except (pexpect.TIMEOUT, pexpect.EOF) as err:
        raise AssertionError(f"console transcript:\n{console.before}\n{transcript}") from err
    finally:
        console.close(force=True)
