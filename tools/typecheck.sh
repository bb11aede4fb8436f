#!/usr/bin/env bash
# mypy --strict over the installed layout: kernel/ (and later magics/) become
# chorus.kernel (chorus.magics) in the wheel, which mypy cannot see through
# the editable install's import hook, so check a copy laid out like the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
tree=build/typecheck
rm -rf "$tree"
mkdir -p "$tree"
cp -r chorus "$tree/chorus"
for sub in kernel magics; do
  if [ -f "$sub/__init__.py" ]; then cp -r "$sub" "$tree/chorus/$sub"; fi
done
find "$tree" -name '__pycache__' -prune -exec rm -rf {} +
cd "$tree"
"$PYTHON" -m mypy --config-file ../../pyproject.toml -p chorus
