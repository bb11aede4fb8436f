#!/usr/bin/env bash
# Install chorus on Debian/Ubuntu: the build tools from apt (only those
# missing), then `pip install .` into the active Python (a venv or pyenv
# interpreter; Debian's system Python refuses pip installs, see README).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PYTHON="${PYTHON:-python3}"

missing=()
for pkg in g++ cmake ninja-build; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
has_headers=$("$PYTHON" -c 'import os, sysconfig; print(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))')
if [ "$has_headers" != True ]; then missing+=(python3-dev); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "chorus install: apt-get install ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "chorus install: building the C++ extension (about a minute on 2 cores)"
"$PYTHON" -m pip install --disable-pip-version-check --progress-bar on "${@:-.}"
echo "chorus install: done; try: chorus launch -n 4 examples/allsum.py"
