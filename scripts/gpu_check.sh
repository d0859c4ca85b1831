#!/usr/bin/env bash
# The whole GPU check in one call, for a machine with an NVIDIA GPU, its driver and TensorRT:
# doctor, TensorRT builds of every zoo model at fp32/fp16/int8, `batchforge parity --all
# --backend tensorrt --precision fp32,fp16,int8`, Polygraphy's own `polygraphy run --trt --onnxrt`
# comparison as an independent cross-check, the gpu-marked tests, a TensorRT vs ONNX
# Runtime bench, and a short table last. Where TensorRT, cuda-python or the GPU is missing it
# prints doctor's report, says what is missing and exits 2.
#   scripts/gpu_check.sh [--output-dir artifacts] [--work-dir gpu_check] [--precisions fp32,fp16,int8]
#                        [--models a,b] [--skip-tests]
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
  echo "gpu_check: $PYTHON not found; create the environment with scripts/setup_venv.sh" \
       "(then \`.venv/bin/pip install 'batchforge[tensorrt-cu13]'\` or [tensorrt-cu12] and polygraphy on the GPU machine)" >&2
  exit 2
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
