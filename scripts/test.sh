#!/usr/bin/env bash
# The test suite: CPU only, warnings are errors, coverage of the lean runtime reported (>= 85%).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export COVERAGE_FILE=${COVERAGE_FILE:-${TMPDIR:-/tmp}/batchforge-$$.coverage}  # keep the tree clean
.venv/bin/ruff check --quiet . --exclude .venv
exec .venv/bin/python -m pytest -q -p no:cacheprovider \
  --cov=batchforge.runtime --cov-report=term:skip-covered --cov-fail-under=85 "$@"
