#!/usr/bin/env bash
# Install everything the test suite needs on Debian 12 (apt packages, then exactly
# the Python packages tests/requirements.lock pins, into the active Python), then
# run all checks (tests/check.sh): lint (ruff, mypy, clang-format), the C++ unit
# tests under ASan+UBSan, and the pytest suite with real processes.
# Safe to run again; idempotent. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

step "system packages (apt)"
# chromium: JupyterLab is tested in the real browser (never Playwright's own download).
# openmpi: ipyparallel's MPI engine launcher (and mpi4py) in the magics tests.
# tmux: jupyter console is typed at in a real terminal.
# openssh-server, iproute2: emulated hosts (network namespaces, one sshd each) for remote launch.
# graphviz: chorus config --dot FILE.svg renders pictures with its dot program.
# clang, libclang-rt-dev: libFuzzer and the sanitizer runtimes, for the fuzz targets of
# the TCP frame reader and handshake (clang alone, without its recommends, cannot link them).
APT_PACKAGES=(build-essential cmake ninja-build libgtest-dev procps chromium openmpi-bin libopenmpi-dev tmux
  openssh-server openssh-client iproute2 graphviz clang libclang-rt-dev)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
step "python packages from tests/requirements.lock, then chorus (editable build, warnings as errors)"
# A machine whose pip.conf names package folders that are not there warns once per
# package (hundreds of lines): keep that one warning out of the log.
pip_install() {
  "$PYTHON" -m pip install -q --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# torch's CPU build (pinned in the lock) is not on PyPI: this machine kind keeps it in
# /opt/wheels (pip's find-links); elsewhere it comes from PyTorch's own index.
torch_index=()
if ! compgen -G "/opt/wheels/torch-2.13.0+cpu-*.whl" > /dev/null; then
  torch_index=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
pip_install --require-hashes "${torch_index[@]}" -r tests/requirements.lock
pip_install --no-build-isolation --no-deps -Ccmake.define.CHORUS_WERROR=ON -e .

PYTHON="$PYTHON" exec bash tests/check.sh "$@"
