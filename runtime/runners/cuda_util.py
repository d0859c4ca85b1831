"""Small cuda-python helpers for the TensorRT runner: devices, versions, buffers, streams.

cuda-python is imported lazily (``cuda.bindings.runtime``, or the older ``cuda.cudart``);
importing this module costs nothing and ``device_count()`` answers 0 when cuda-python or a GPU
is missing. Every CUDA call goes through ``check``, which turns an error code into one clear
line naming the call.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchforge.errors import BackendUnavailableError, BatchforgeError

INSTALL_HINT = ("install `pip install 'batchforge[tensorrt-cu13]'` (driver supporting CUDA 13) or "
                "`'batchforge[tensorrt-cu12]'` (CUDA 12 driver) on a machine with an NVIDIA GPU")
# The TensorRT wheel of each CUDA major and the extra that pairs it with cuda-python of that major
# (pyproject.toml; tests/engines/test_engines_pairing.py checks the requirement strings).
TENSORRT_EXTRAS = {12: "tensorrt-cu12", 13: "tensorrt-cu13"}


def load_cudart() -> Any | None:
    """The cuda-python runtime module, or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError:
            return None
    return cudart


def require_cudart() -> Any:
    """The cuda-python runtime module, or BackendUnavailableError with the install command."""
    cudart = load_cudart()
    if cudart is None:
        raise BackendUnavailableError("cuda-python is not installed (needed to run TensorRT engines)",
                                      hint=INSTALL_HINT)
    return cudart


def check(cudart: Any, result: Any, call: str) -> Any:
    """Unpacks a cuda-python ``(err, *values)`` result; a non-success code raises.

    Returns:
        None, the single value, or a tuple of values.
    Raises:
        BatchforgeError "CUDA call <call> failed: <name> (<description>)".
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = _error_text(cudart.cudaGetErrorName, err)
        text = _error_text(cudart.cudaGetErrorString, err)
        raise BatchforgeError(f"CUDA call {call} failed: {name} ({text})",
                              hint="check `batchforge doctor` and nvidia-smi for the GPU and driver")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _error_text(function: Any, err: Any) -> str:
    try:
        out = function(err)
        value = out[1] if isinstance(out, tuple) else out
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception:  # the description is best effort; the code itself is still reported
        return str(err)


def probe_devices() -> tuple[int, str]:
    """``(CUDA device count, why it is 0)``; never raises."""
    cudart = load_cudart()
    if cudart is None:
        return 0, "cuda-python is not installed"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # a broken driver install behaves like no GPU
        return 0, f"cudaGetDeviceCount raised {exc}"
    if err != cudart.cudaError_t.cudaSuccess:
        return 0, f"cudaGetDeviceCount: {_error_text(cudart.cudaGetErrorName, err)} " \
                  f"({_error_text(cudart.cudaGetErrorString, err)})"
    return int(count), "" if count else "no CUDA device"


def device_count() -> int:
    """Number of CUDA devices; 0 when cuda-python, the driver or a GPU is missing."""
    return probe_devices()[0]


def format_cuda_version(value: int) -> str:
    """CUDA encodes versions as 1000*major + 10*minor: 12040 -> "12.4"."""
    value = int(value)
    return f"{value // 1000}.{(value % 1000) // 10}"


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "major.minor"
    total_memory_mib: int

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")


def device_info(index: int = 0) -> DeviceInfo:
    """Name, compute capability and memory of one CUDA device."""
    cudart = require_cudart()
    prop = check(cudart, cudart.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(index, name.split("\x00", 1)[0], f"{prop.major}.{prop.minor}",
                      int(prop.totalGlobalMem) // (1 << 20))


def cuda_versions() -> dict[str, str]:
    """``{"runtime": "12.9", "driver": "12.9"}``: the CUDA runtime and the driver's CUDA version."""
    cudart = require_cudart()
    runtime = check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    driver = check(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    return {"runtime": format_cuda_version(runtime), "driver": format_cuda_version(driver)}


def native_handle(obj: Any) -> int:
    """The raw address behind a cuda-bindings object (``cudaStream_t``, ...).

    cuda-bindings 12.9.1 / 13.0.0 release notes: ``int(cuda_obj)`` is deprecated in favour of
    ``cuda.bindings.utils.get_cuda_native_handle``; older 12.x releases have no such module and
    ``__int__`` is their documented (and not deprecated) way.
    """
    if isinstance(obj, int):
        return obj  # already a raw address
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)  # cuda-bindings < 12.9.1
    return int(get_cuda_native_handle(obj))


def installed_cuda_majors() -> dict[str, int | None]:
    """CUDA major of the installed TensorRT wheel and of cuda-python / cuda-bindings (None: absent)."""
    def major(dist: str) -> int | None:
        try:
            return int(importlib.metadata.version(dist).split(".")[0])
        except (importlib.metadata.PackageNotFoundError, ValueError):
            return None

    tensorrt = next((cuda for cuda, dist in TENSORRT_EXTRAS.items() if major(dist) is not None), None)
    return {"tensorrt": tensorrt, "cuda_python": major("cuda-bindings") or major("cuda-python")}


def tensorrt_pairing(driver_cuda: str | None) -> dict[str, Any]:
    """Which ``batchforge[tensorrt-cuXX]`` extra this driver supports, and whether the installed pair fits.

    A driver runs CUDA majors up to the one it reports (``cudaDriverGetVersion``); the newest
    pairing it supports is the one to pick.

    Args:
        driver_cuda: the driver's CUDA version (``"12.9"``), or None/"0.0" when unknown.
    Returns:
        ``{"driver_cuda", "supported": [extras], "recommended", "installed", "problems": [...]}``.
    """
    driver_major = int(driver_cuda.split(".")[0]) if driver_cuda and driver_cuda != "0.0" else None
    supported = [extra for cuda, extra in sorted(TENSORRT_EXTRAS.items())
                 if driver_major is not None and cuda <= driver_major]
    installed = installed_cuda_majors()
    problems = []
    if installed["tensorrt"] and installed["cuda_python"] and installed["tensorrt"] != installed["cuda_python"]:
        problems.append(f"TensorRT for CUDA {installed['tensorrt']} with cuda-python "
                        f"{installed['cuda_python']}.x: install one pairing, "
                        f"`pip install 'batchforge[{TENSORRT_EXTRAS[installed['tensorrt']]}]'`")
    for what in ("tensorrt", "cuda_python"):
        if driver_major is not None and (installed[what] or 0) > driver_major:
            problems.append(f"{what} is built for CUDA {installed[what]}, the driver supports CUDA "
                            f"{driver_cuda}: no device will be seen")
    return {"driver_cuda": driver_cuda if driver_major is not None else None, "supported": supported,
            "recommended": supported[-1] if supported else None, "installed": installed,
            "problems": problems}


def set_device(index: int) -> None:
    cudart = require_cudart()
    check(cudart, cudart.cudaSetDevice(index), f"cudaSetDevice({index})")


class PinnedBuffer:
    """Page-locked host memory (fast, truly asynchronous copies), viewable as a numpy array."""

    def __init__(self, nbytes: int) -> None:
        self._cudart = require_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(self._cudart, self._cudart.cudaMallocHost(self.nbytes),
                             f"cudaMallocHost({self.nbytes} bytes)"))

    def view(self, dtype: Any, count: int) -> np.ndarray:
        """A numpy array of ``count`` items of ``dtype`` over the first bytes of the buffer."""
        dtype = np.dtype(dtype)
        if count * dtype.itemsize > self.nbytes:
            raise BatchforgeError(f"pinned buffer of {self.nbytes} bytes cannot hold {count} x {dtype}")
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count)

    def free(self) -> None:
        if self.ptr:
            check(self._cudart, self._cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceBuffer:
    """Device memory of a fixed size (allocated once for the profile's max batch)."""

    def __init__(self, nbytes: int) -> None:
        self._cudart = require_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(self._cudart, self._cudart.cudaMalloc(self.nbytes),
                             f"cudaMalloc({self.nbytes} bytes)"))

    def free(self) -> None:
        if self.ptr:
            check(self._cudart, self._cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class Stream:
    """One CUDA stream: copies and the engine run in order on it; ``synchronize`` waits."""

    def __init__(self) -> None:
        self._cudart = require_cudart()
        self._stream = check(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = native_handle(self._stream)  # the raw cudaStream_t execute_async_v3 takes

    def copy_to_device(self, device_ptr: int, host_ptr: int, nbytes: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self._cudart, self._cudart.cudaMemcpyAsync(device_ptr, host_ptr, nbytes, kind, self._stream),
              f"cudaMemcpyAsync(host->device, {nbytes} bytes)")

    def copy_to_host(self, host_ptr: int, device_ptr: int, nbytes: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self._cudart, self._cudart.cudaMemcpyAsync(host_ptr, device_ptr, nbytes, kind, self._stream),
              f"cudaMemcpyAsync(device->host, {nbytes} bytes)")

    def synchronize(self) -> None:
        check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self._stream is not None:
            check(self._cudart, self._cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None
