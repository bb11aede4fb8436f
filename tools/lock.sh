#!/usr/bin/env bash
# Regenerate tests/requirements.lock, the exact packages CI and `bash tests/run.sh`
# install: chorus's runtime and test dependencies (pyproject.toml's `test` extra) with
# their hashes, resolved by uv for every platform and Python >= 3.10.
#   bash tools/lock.sh                       keep every pin, add/drop what pyproject.toml changed
#   bash tools/lock.sh --upgrade             move everything to the newest releases
#   bash tools/lock.sh --upgrade-package X   move one package (and what it needs)
# Move pins deliberately: run tools/check-latest.sh first and fix what it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  tool_venv=build/lock-tool-venv
  [ -x "$tool_venv/bin/uv" ] || { python3 -m venv "$tool_venv" && "$tool_venv/bin/pip" install -q uv; }
  uv="$tool_venv/bin/uv"
fi
# torch's CPU build is not on PyPI: PyTorch's index has it, and this machine's disk
# (/opt/wheels) a copy; the lock pins that file by its hash.
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
"$uv" pip compile pyproject.toml --extra test --universal --python-version 3.10 --generate-hashes \
  "${find_links[@]}" \
  --custom-compile-command "bash tools/lock.sh" -o tests/requirements.lock "$@"
