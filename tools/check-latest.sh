#!/usr/bin/env bash
# chorus against the newest release of every dependency: a throw-away venv
# (build/latest-venv) with whatever pip resolves today for `.[test]`, ignoring
# tests/requirements.lock; prints every package newer than the lock, then runs every
# check (tests/check.sh: lint and pytest; the C++ unit tests need no Python package
# and are left out) and names what breaks. Run it before every stop. It changes
# nothing: move the lock deliberately afterwards (bash tools/lock.sh --upgrade).
# Arguments go to pytest. Needs what tests/run.sh installs from apt.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build/latest-venv
rm -rf "$venv"
python3 -m venv "$venv"
py="$PWD/$venv/bin/python"
pip() {
  "$py" -m pip --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

printf '==> newest releases of chorus[test] into %s\n' "$venv"
pip install -q --upgrade pip
pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" numpy
# Its own build directory: the CMake cache remembers the interpreter and pybind11.
pip install -q --no-build-isolation -Cbuild-dir="build/latest-{wheel_tag}" \
  -Ccmake.define.CHORUS_WERROR=ON -e ".[test]"

printf '\n==> newer than tests/requirements.lock\n'
"$py" - << 'PY'
import importlib.metadata as md
import re

from packaging.markers import Marker
from packaging.utils import canonicalize_name

locked: dict[str, str] = {}
for line in open("tests/requirements.lock", encoding="utf-8"):
    match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)(?:\s*;\s*([^\\]+))?", line)
    if match and (match[3] is None or Marker(match[3].strip()).evaluate()):
        locked[canonicalize_name(match[1])] = match[2]
newer = []
for dist in md.distributions():
    name = canonicalize_name(dist.metadata["Name"])
    if name in locked and locked[name] != dist.version:
        newer.append(f"  {name}: {locked[name]} -> {dist.version}")
extra = sorted(
    canonicalize_name(d.metadata["Name"]) for d in md.distributions()
    if canonicalize_name(d.metadata["Name"]) not in locked
)
print("\n".join(sorted(newer)) or "  nothing: the lock is the newest")
print("  not in the lock:", ", ".join(extra) or "none")
PY

status=0
CHORUS_CHECK_CPP=0 PYTHON="$py" bash tests/check.sh "$@" || status=$?
if [ "$status" = 0 ]; then
  printf '\ncheck-latest: the newest releases pass every check\n'
else
  printf '\ncheck-latest: the newest releases break the checks named above\n'
fi
exit "$status"
