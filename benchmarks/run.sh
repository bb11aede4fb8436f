#!/usr/bin/env bash
# One command for the whole side-by-side benchmark: create the peers' venv
# (build/bench-venv) when it is missing, refresh chorus in it, then run.
#
#   bash benchmarks/run.sh            # full: N=2 and 4, all sizes (~10-20 min)
#   bash benchmarks/run.sh --quick    # smoke test (~1-2 min)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup_peers.sh"
exec "$here/../build/bench-venv/bin/python" "$here/collectives.py" "$@"
