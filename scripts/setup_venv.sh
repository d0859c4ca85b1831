#!/usr/bin/env bash
# Creates (or refreshes) the git-ignored .venv at the repository root with everything the main
# job and the tests need, at the exact versions of the tested lock (constraints.txt). Re-installs
# only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.batchforge-install
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (first run: a few minutes; torch ${TORCH_VERSION:-2.14.1} comes from pip)" >&2
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip -c constraints.txt >&2
  # every version from the lock; torch/torchvision are also pinned in pyproject (2.14.1 / 0.29.1)
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[cpu,export,dev]" >&2
  # the MTCNN weights and reference detector; its metadata pins torch<2.3 and numpy<2 (it runs
  # with the locked ones), so it comes without dependencies, on the export/parity side only
  .venv/bin/python -m pip install --quiet --no-deps -c constraints.txt facenet-pytorch==2.6.0 >&2
  # the main job's trained network from outside the zoo: PP-OCR's ONNX files ship in this wheel; its
  # dependencies (opencv-python, shapely, pyclipper, ...) are for rapidocr's own pipeline, never used
  .venv/bin/python -m pip install --quiet --no-deps -c constraints.txt rapidocr-onnxruntime==1.4.4 >&2
  # TensorRT 10.13's API as .pyi (tests/engines/test_engines_trt_stubs.py parses it) in a side folder never on
  # sys.path: in site-packages its tensorrt/ would look like TensorRT (find_spec) and its metadata needs TensorRT
  .venv/bin/python -m pip install --quiet --no-deps --upgrade --target .venv/tensorrt-stubs tensorrt-stubs==10.13.0.35.1 >&2
  echo "$want" > "$stamp"
fi
# an existing .venv (stamp up to date) gets the stub folder too; --upgrade replaces a partial one
if [ ! -f .venv/tensorrt-stubs/tensorrt_bindings/tensorrt.pyi ]; then
  .venv/bin/python -m pip install --quiet --no-deps --upgrade --target .venv/tensorrt-stubs tensorrt-stubs==10.13.0.35.1 >&2
fi
