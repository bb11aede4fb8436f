"""chorus kernel install / list / remove, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _chorus(*args: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    return subprocess.run(
        [sys.executable, "-m", "chorus", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_install_list_remove(tmp_path: Path) -> None:
    done = _chorus("kernel", "install", "--ranks", "8", "--prefix", str(tmp_path), prefix=tmp_path)
    assert done.returncode == 0, done.stderr
    spec_file = tmp_path / "share/jupyter/kernels/chorus-8/kernel.json"
    spec = json.loads(spec_file.read_text())
    assert spec["display_name"] == "Chorus (8 ranks)"
    assert spec["argv"][:3] == [sys.executable, "-m", "chorus.kernel"]
    assert "--ranks=8" in spec["argv"]
    assert "{connection_file}" in spec["argv"]
    listed = _chorus("kernel", "list", prefix=tmp_path)
    assert "chorus-8" in listed.stdout
    assert "Chorus (8 ranks)" in listed.stdout
    gone = _chorus("kernel", "remove", "chorus-8", prefix=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert not spec_file.exists()
    missing = _chorus("kernel", "remove", "chorus-8", prefix=tmp_path)
    assert missing.returncode == 2
    assert "no chorus kernel named 'chorus-8'" in missing.stderr


def test_install_rejects_bad_ranks(tmp_path: Path) -> None:
    done = _chorus("kernel", "install", "--ranks", "0", "--prefix", str(tmp_path), prefix=tmp_path)
    assert done.returncode == 2
    assert "ranks" in done.stderr
