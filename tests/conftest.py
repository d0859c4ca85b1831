"""Shared fixtures. Tests run on CPU, write only under tmp_path, and treat warnings as errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

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


@pytest.fixture(scope="session")
def user_tiny_artifacts(tmp_path_factory):
    """The tiny user model (tests/user_models.py) exported once: (output_dir, name)."""
    from user_models import spec_dict

    from batchforge.cli import main

    root = tmp_path_factory.mktemp("user_tiny")
    spec = root / "spec.json"
    spec.write_text(json.dumps(spec_dict()))
    with coverage_paused():
        assert main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec),
                     "--output-dir", str(root / "artifacts")]) == 0
    return root / "artifacts", "user_tiny"


@contextlib.contextmanager
def coverage_paused():
    """Coverage measures the runtime; torch.onnx.export runs millions of Python calls of torch's
    own, and tracing them made each zoo export ~60% slower (measured: the five-model fixture
    111 s -> 176 s) while measuring nothing of the runtime."""
    try:
        import coverage
    except ImportError:
        cov = None
    else:
        cov = coverage.Coverage.current()
    if cov is None:
        yield
        return
    cov.stop()
    try:
        yield
    finally:
        cov.start()


def _export_zoo(tmp_path_factory, folder: str, *models: str):
    from batchforge.cli import main

    root = tmp_path_factory.mktemp(folder) / "artifacts"
    with coverage_paused():
        assert main(["export", *models, "--output-dir", str(root)]) == 0
    return root


@pytest.fixture(scope="session")
def resnet_artifacts(tmp_path_factory):
    """reid_resnet50 from the zoo, exported once for the slow parity tests."""
    return _export_zoo(tmp_path_factory, "zoo", "reid_resnet50")


@pytest.fixture(scope="session")
def resnet_calibrated(resnet_artifacts, tmp_path_factory):
    """A folder where the README Quick tour ran up to ``calibrate`` (export: ``resnet_artifacts``):
    reid_resnet50 with its FP16 and INT8 models, calibrated on the tour's samples."""
    from helpers import quick_tour, tour_argv

    from batchforge.cli import main

    root = tmp_path_factory.mktemp("tour")
    shutil.copytree(resnet_artifacts, root / "artifacts")
    tour = quick_tour()
    names = [c[0] for c in tour]
    here = os.getcwd()
    os.chdir(root)  # the tour's paths are relative
    try:
        for argv in tour[names.index("export") + 1: names.index("calibrate") + 1]:
            assert main(tour_argv(argv)) == 0, argv
    finally:
        os.chdir(here)
    return root


@pytest.fixture(scope="session")
def detection_artifacts(tmp_path_factory):
    """The detector and facepose zoo models, exported once (shared by export and parity tests)."""
    return _export_zoo(tmp_path_factory, "detection", "detector", "facepose")


@pytest.fixture(scope="session")
def anomaly_artifacts(tmp_path_factory):
    """The anomaly zoo model, exported once."""
    return _export_zoo(tmp_path_factory, "anomaly", "anomaly")


@pytest.fixture(scope="session")
def dense_artifacts(tmp_path_factory):
    """keypoints and ptycho exported once."""
    return _export_zoo(tmp_path_factory, "dense", "keypoints", "ptycho")
