"""Shared fixtures. Tests run on CPU, write only under tmp_path, and treat warnings as errors."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    gpu_ready, reason = _gpu_ready()
    if gpu_ready:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _gpu_ready() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False, "needs TensorRT and a CUDA GPU: the tensorrt package is not installed here"
    from batchforge.runtime.backends import Backend, probe_backends

    status = {s.backend: s for s in probe_backends()}[Backend.TENSORRT]
    return status.available, f"needs TensorRT and a CUDA GPU: {status.detail}"
