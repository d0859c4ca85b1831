"""What this machine offers: package versions, GPUs, CUDA, TensorRT, ONNX Runtime providers.

Shared by ``batchforge doctor`` and the environment record of a deployment bundle. Every probe
reports instead of failing: a missing or broken driver is a finding.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess

PACKAGES = ("batchforge", "numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "tensorrt",
            "cuda-python", "cuda-bindings", "torch", "torchvision", "onnx")


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return ["nvidia-smi present but failed"]
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def cuda_report() -> dict[str, object]:
    """CUDA devices and versions as cuda-python sees them."""
    from batchforge.runtime.runners import cuda_util

    if cuda_util.load_cudart() is None:
        return {"cuda_python": "not installed", "devices": []}
    count, why = cuda_util.probe_devices()
    report: dict[str, object] = {"cuda_python": "installed", "devices": [], "device_count": count}
    if why:
        report["error"] = why
    try:
        report.update({f"cuda_{k}": v for k, v in cuda_util.cuda_versions().items()})
        report["devices"] = [
            {"index": d.index, "name": d.name, "compute_capability": d.compute_capability,
             "sm": d.sm, "memory_mib": d.total_memory_mib}
            for d in (cuda_util.device_info(i) for i in range(count))]
    except Exception as exc:  # doctor reports, never fails: a broken driver is a finding
        report["error"] = str(exc)
    return report


def tensorrt_version() -> str:
    if importlib.util.find_spec("tensorrt") is None:
        return "not installed"
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception as exc:  # an installed but broken TensorRT is a finding, not a crash
        return f"installed but failed to import: {exc}"


def ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def capture() -> dict[str, object]:
    """Python, platform, package versions, ONNX Runtime providers, CUDA and GPUs, as doctor sees them."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": {d: package_version(d) for d in PACKAGES}, "tensorrt": tensorrt_version(),
            "onnxruntime_providers": ort_providers(), "cuda": cuda_report(), "gpus": gpus()}
