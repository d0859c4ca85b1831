"""Which backends are installed, and what ``--backend auto`` resolves to.

``auto`` prefers tensorrt > onnxruntime-cuda > onnxruntime-cpu. An explicitly requested backend
that is missing fails fast with BackendUnavailableError naming what is installed.
"""

from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass
from functools import lru_cache

from batchforge.errors import BackendUnavailableError, UsageError


class Backend(str, enum.Enum):
    AUTO = "auto"
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime on the best device it has (CUDA, else CPU)
    ONNXRUNTIME_CPU = "onnxruntime-cpu"
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"
    ONNXRUNTIME_TRT = "onnxruntime-trt"  # ONNX Runtime's TensorRT execution provider

    @classmethod
    def parse(cls, text: str) -> Backend:
        try:
            return cls(text)
        except ValueError:
            known = ", ".join(b.value for b in cls)
            raise UsageError(f"unknown backend {text!r}; expected one of: {known}") from None

    @property
    def is_onnxruntime(self) -> bool:
        return self.value.startswith("onnxruntime")

    @property
    def ort_device(self) -> str:
        """cpu / cuda / tensorrt for the ONNX Runtime backends."""
        return {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-trt": "tensorrt"}[
            self.value
        ]


INSTALL_HINTS = {
    Backend.TENSORRT: "install TensorRT on an NVIDIA GPU machine: `pip install 'batchforge[tensorrt]'` "
    "for a CUDA 13 driver, `pip install 'batchforge[tensorrt-cu12]'` for CUDA 12 (`batchforge doctor` "
    "says which the driver supports)",
    Backend.ONNXRUNTIME_CPU: "install `pip install 'batchforge[cpu]'`",
    Backend.ONNXRUNTIME_CUDA: "install `pip install 'batchforge[gpu]'` on a CUDA machine "
    "(and uninstall the CPU-only onnxruntime)",
    Backend.ONNXRUNTIME_TRT: "install `pip install 'batchforge[gpu]'` and TensorRT on a CUDA machine",
}


@dataclass(frozen=True)
class BackendStatus:
    backend: Backend
    available: bool
    detail: str


def _ort_providers() -> tuple[str | None, list[str]]:
    if importlib.util.find_spec("onnxruntime") is None:
        return None, []
    import onnxruntime

    return onnxruntime.__version__, list(onnxruntime.get_available_providers())


def _tensorrt_status() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt Python package is not installed"
    if importlib.util.find_spec("cuda") is None:
        return False, "tensorrt is installed but cuda-python (cuda.bindings) is not"
    try:
        import tensorrt

        from batchforge.runtime.runners.cuda_util import device_count
    except Exception as exc:  # an installed but broken TensorRT is "not available"
        return False, f"tensorrt failed to import: {exc}"
    if not hasattr(tensorrt, "__version__"):  # e.g. a stubs-only or half-removed package
        where = list(getattr(tensorrt, "__path__", []))
        return False, f"the tensorrt package at {where} is not TensorRT (no __version__)"
    count = device_count()
    if count == 0:
        return False, f"tensorrt {tensorrt.__version__} is installed but no CUDA device was found"
    return True, f"tensorrt {tensorrt.__version__}, {count} CUDA device(s)"


@lru_cache(maxsize=1)
def probe_backends() -> tuple[BackendStatus, ...]:
    """What is installed, probed once per process."""
    version, providers = _ort_providers()
    trt_ok, trt_detail = _tensorrt_status()
    ort_detail = (
        f"onnxruntime {version}, providers: {', '.join(providers)}"
        if version
        else "the onnxruntime package is not installed"
    )
    return (
        BackendStatus(Backend.TENSORRT, trt_ok, trt_detail),
        BackendStatus(Backend.ONNXRUNTIME_CUDA, "CUDAExecutionProvider" in providers, ort_detail),
        BackendStatus(Backend.ONNXRUNTIME_TRT, "TensorrtExecutionProvider" in providers, ort_detail),
        BackendStatus(Backend.ONNXRUNTIME_CPU, "CPUExecutionProvider" in providers, ort_detail),
    )


def describe_installed() -> str:
    """One line listing the usable backends, for error messages."""
    usable = [s.backend.value for s in probe_backends() if s.available]
    return "usable backends here: " + (", ".join(usable) if usable else "none")


def resolve_backend(requested: Backend | str) -> Backend:
    """Turns auto/onnxruntime into a concrete backend; checks an explicit one is installed.

    Returns:
        One of TENSORRT, ONNXRUNTIME_CUDA, ONNXRUNTIME_TRT, ONNXRUNTIME_CPU.
    Raises:
        BackendUnavailableError naming what is installed and how to get the missing one.
    """
    requested = Backend.parse(requested) if isinstance(requested, str) else requested
    status = {s.backend: s for s in probe_backends()}
    if requested is Backend.AUTO:
        order = [Backend.TENSORRT, Backend.ONNXRUNTIME_CUDA, Backend.ONNXRUNTIME_CPU]
    elif requested is Backend.ONNXRUNTIME:
        order = [Backend.ONNXRUNTIME_CUDA, Backend.ONNXRUNTIME_CPU]
    else:
        order = [requested]
    for backend in order:
        if status[backend].available:
            return backend
    missing = order[-1]
    raise BackendUnavailableError(
        f"backend {requested.value!r} is not available: {status[missing].detail}; "
        + describe_installed(),
        hint=INSTALL_HINTS[missing],
    )
