#!/usr/bin/env bash
# Creates (or refreshes) the git-ignored .venv at the repository root with everything the main
# job and the tests need. Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.batchforge-install
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (first run: a few minutes; torch ${TORCH_VERSION:-2.14.1} comes from pip)" >&2
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  # torch/torchvision pinned in pyproject's `export` extra (2.14.1 / 0.29.1)
  .venv/bin/python -m pip install --quiet -e ".[cpu,export,dev]" >&2
  echo "$want" > "$stamp"
fi
