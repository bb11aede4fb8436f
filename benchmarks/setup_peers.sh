#!/usr/bin/env bash
# Create (or refresh) the benchmark's own virtual environment, build/bench-venv.
#
# The peers (PyTorch gloo, MLX's ring backend, mpi4py over Open MPI) and a
# snapshot of chorus are installed there, never into the environment the test
# suite uses.  chorus is built into its own build folder (build/bench-chorus)
# so it never races an editable build of the checkout.
#
#   bash benchmarks/setup_peers.sh            # create if missing, refresh chorus
#   BENCH_VENV=/tmp/v bash benchmarks/setup_peers.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BENCH_VENV:-$repo/build/bench-venv}"
python="${BENCH_PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup_peers: creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"

# This machine's pip configuration names index folders that may be missing;
# pip warns once per package about them. Keep the log readable.
pip() {
    "$py" -m pip "$@" 2> >(grep -v "is neither a file nor a directory" >&2)
}

# The peers and the build tools chorus needs for a no-isolation build.
# torch==2.13.0 is pinned: it resolves to a local CPU wheel here.
if ! "$py" -c "import torch, mlx.core, mpi4py, numpy, matplotlib" 2>/dev/null; then
    echo "setup_peers: installing the peers"
    pip install --quiet --upgrade pip
    pip install --quiet \
        "torch==2.13.0" "mlx[cpu]" mpi4py numpy matplotlib psutil \
        "scikit-build-core>=0.10" "pybind11>=2.12"
fi

# chorus itself, rebuilt incrementally from the checkout every time so the
# benchmark measures the code that is there now.
echo "setup_peers: installing chorus from $repo"
pip install --quiet --no-build-isolation --no-deps \
    --config-settings=build-dir="$repo/build/bench-chorus" "$repo"
pip install --quiet "numpy>=1.24" "ipykernel>=6.29" "jupyter_client>=8" "asyncssh>=2.14" \
    "graphviz>=0.20"
"$py" -c "import chorus, torch, mlx.core, mpi4py; print('setup_peers: ok', \
'torch', torch.__version__, 'mlx', mlx.core.__version__, 'mpi4py', mpi4py.__version__)"
