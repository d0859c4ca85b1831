#!/usr/bin/env bash
# Regenerates constraints.txt (the tested lock) after a deliberate upgrade: installs the
# project's extras into a throw-away venv without the lock, newest versions pyproject.toml
# allows, and writes what pip resolved. Then run ./scripts/test.sh and ./scripts/main.sh (they
# re-install .venv from the new lock) and commit constraints.txt only if both pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "resolving .[cpu,export,dev] in a fresh venv (a few minutes)..." >&2
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$tmp/venv/bin/python" -m pip install --quiet ".[cpu,export,dev]" >&2
"$tmp/venv/bin/python" -m pip install --quiet --no-deps facenet-pytorch==2.6.0 rapidocr-onnxruntime==1.4.4 >&2  # see setup_venv.sh
{
  sed -n '/^#/p' constraints.txt
  "$tmp/venv/bin/python" -m pip freeze --all | grep -v -i -E '^(batchforge|setuptools|wheel)[=@ ]'
} > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned; git diff constraints.txt shows what moved" >&2
