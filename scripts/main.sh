#!/usr/bin/env bash
# The main job: export the zoo, calibrate FP16/INT8, build for the best backend, run the parity
# gate, run batched inference on sample data, print a summary. Sets up .venv when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
exec .venv/bin/python scripts/main_job.py "$@"
