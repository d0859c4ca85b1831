"""TensorRT runner: a strongly typed plan, checked against its manifest, run with cuda-python.

``tensorrt`` and cuda-python are imported only in ``activate`` (and ``import_tensorrt``), never
when this module is imported. Activation verifies the plan's bytes (size, sha256) and this
machine's TensorRT version / GPU against the manifest *before* deserialising exactly those bytes.

Execution: pinned host buffers and device buffers sized once for the profile's max batch, one
CUDA stream, ``set_input_shape`` + ``execute_async_v3`` per batch. Threads: the engine is shared;
execution contexts (each with its stream and buffers, and the activation memory TensorRT gives
it) come from a bounded pool of ``max_contexts``, made on demand and shared by all threads: a
call borrows one for its batch and hands it back, so memory is bounded by the pool, not by the
number of threads that ever called, and nothing stays tied to a finished thread. All are freed
by ``deactivate``. (Not measured on a GPU yet: scripts/gpu_check.sh is where to measure it.)

TensorRT's own messages go to the ``batchforge.tensorrt`` logger (warnings at WARNING), and
TensorRT's plugin library is registered before a plan is deserialised.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.errors import BackendUnavailableError, BatchforgeError, ConfigError, IntegrityError
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.backends import INSTALL_HINTS, Backend
from batchforge.runtime.manifest import EngineEnvironment, EngineManifest, check_before_load, read_manifest
from batchforge.runtime.runners import cuda_util
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec
from batchforge.runtime.typed_options import check_numbers, number_problem
from batchforge.runtime.validation import IOMeta


def import_tensorrt() -> Any:
    """Imports tensorrt or raises BackendUnavailableError saying how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(
            "TensorRT is not installed (the tensorrt Python package was not found)",
            hint=INSTALL_HINTS[Backend.TENSORRT]) from None
    return tensorrt


LOG = logging.getLogger("batchforge.tensorrt")
DEFAULT_MAX_CONTEXTS = 2
MAX_CONTEXTS = 256  # each context holds its own activation memory on the GPU
MAX_DEVICE = 1023  # CUDA device ordinals


def make_logger(trt: Any, log: logging.Logger = LOG) -> Any:
    """A ``tensorrt.ILogger`` that forwards TensorRT's messages to ``log``.

    Severities from ``ILogger::Severity`` (TensorRT 11.1 include/NvInferRuntime.h:1590: kINTERNAL_ERROR
    = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4), exposed as ``trt.ILogger.Severity``;
    a Python subclass must call ``ILogger.__init__`` and implement ``log(severity, msg)``.
    Keep the returned object alive as long as the builder/runtime that uses it.
    """
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.CRITICAL, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.INFO,
              severity.VERBOSE: logging.DEBUG}

    class ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            log.log(levels.get(level, logging.WARNING), "TensorRT: %s", msg)

    return ForwardingLogger()


def init_plugins(trt: Any, logger: Any) -> None:
    """Registers TensorRT's standard plugins (``init_libnvinfer_plugins(logger, "")``) once per call site."""
    if not trt.init_libnvinfer_plugins(logger, ""):
        LOG.warning("TensorRT: init_libnvinfer_plugins failed; plans or ONNX models that use the "
                    "standard plugins will not load")


def numpy_dtype(trt: Any, name: str, trt_dtype: Any) -> np.dtype:
    """The NumPy dtype of an engine I/O tensor; BF16/FP8/FP4 I/O (no NumPy type) is a clear error."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError:
        raise ConfigError(
            f"engine I/O tensor {name!r} is {getattr(trt_dtype, 'name', trt_dtype)}, which NumPy cannot "
            "hold (expected float32, float16, int8, int32, int64, uint8 or bool)",
            hint="export the model with float32/float16 inputs and outputs (cast inside the graph) "
                 "and rebuild the engine") from None


def current_environment(trt: Any, device: int = 0) -> EngineEnvironment:
    """This machine's TensorRT version and GPU, for ``check_before_load``."""
    if cuda_util.device_count() <= device:
        raise BackendUnavailableError(
            f"no CUDA device {device} found (cuda-python sees {cuda_util.device_count()})",
            hint="run `batchforge doctor`; TensorRT engines need an NVIDIA GPU and driver")
    info = cuda_util.device_info(device)
    return EngineEnvironment(str(trt.__version__), info.compute_capability, info.name)


@dataclass(eq=False)
class _ExecState:
    """One pooled execution context with its stream and buffers."""

    context: Any
    stream: cuda_util.Stream
    host: dict[str, cuda_util.PinnedBuffer]
    device: dict[str, cuda_util.DeviceBuffer]

    def free(self) -> None:
        for buffer in (*self.host.values(), *self.device.values()):
            buffer.free()
        self.stream.destroy()
        self.context = None


class TensorRTRunner(Runner):
    """Runs a TensorRT plan built by ``batchforge build --backend tensorrt``."""

    backend = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike[str], manifest: EngineManifest, *,
                 onnx_path: str | os.PathLike[str] | None = None, device: int = 0,
                 name: str | None = None, max_contexts: int = DEFAULT_MAX_CONTEXTS) -> None:
        super().__init__(name=name or f"{manifest.model}:{manifest.precision}:tensorrt",
                         profile=manifest.profile)
        self.plan_path = Path(plan_path)
        self.manifest = manifest
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        self.device = device
        self._trt: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._inputs: tuple[str, ...] = ()
        self._outputs: tuple[str, ...] = ()
        self._dtypes: dict[str, np.dtype] = {}
        check_numbers("TensorRTRunner", [number_problem("max_contexts", max_contexts, 1, MAX_CONTEXTS, integer=True),
                                         number_problem("device", device, 0, MAX_DEVICE, integer=True)])
        self.max_contexts = max_contexts
        self._logger: Any = None
        self._local = threading.local()  # only remembers that this thread has set the device
        self._states: list[_ExecState] = []  # every context made (idle or borrowed)
        self._idle: list[_ExecState] = []
        self._making = 0  # contexts being made right now (they count against max_contexts)
        self._pool = threading.Condition()

    @classmethod
    def from_artifacts(cls, artifacts: ModelArtifacts, precision: Precision | str, *,
                       spec: ModelSpec | None = None,
                       max_contexts: int = DEFAULT_MAX_CONTEXTS) -> TensorRTRunner:
        """A runner for ``engine.P.plan`` in a model folder (its manifest is read and matched).

        Args:
            artifacts: the model folder.
            precision: which plan (fp32, fp16, int8).
            spec: the model spec; its input names must be the engine's.
            max_contexts: execution contexts shared by all calling threads.
        """
        precision = Precision(precision)
        hint = (f"build it with `batchforge build {artifacts.model} --precision {precision.value} "
                "--backend tensorrt` on the GPU machine")
        manifest = read_manifest(artifacts.plan_manifest(precision), hint=hint)
        if (manifest.model, manifest.precision, manifest.backend) != (
                artifacts.model, precision.value, "tensorrt"):
            raise IntegrityError(
                f"{artifacts.plan_manifest(precision)} describes {manifest.backend} engine "
                f"{manifest.model!r} at {manifest.precision}, expected tensorrt {artifacts.model!r} at "
                f"{precision.value}", hint=hint)
        if spec is not None:
            engine_inputs = sorted(i.name for i in manifest.inputs)
            if sorted(spec.input_names) != engine_inputs:
                raise ConfigError(f"engine {manifest.plan_file} has inputs {engine_inputs}, the spec "
                                  f"of {spec.name!r} names {sorted(spec.input_names)}", hint=hint)
        onnx = artifacts.onnx(precision)
        return cls(artifacts.plan(precision), manifest, onnx_path=onnx if onnx.is_file() else None,
                   name=f"{artifacts.model}:{precision.value}:tensorrt", max_contexts=max_contexts)

    # -- lifecycle -------------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = import_tensorrt()
        cuda_util.require_cudart()
        environment = current_environment(trt, self.device)
        plan = check_before_load(self.manifest, self.plan_path, environment, onnx_path=self.onnx_path)
        cuda_util.set_device(self.device)
        logger = make_logger(trt)
        init_plugins(trt, logger)
        runtime = trt.Runtime(logger)
        if self.manifest.version_compatible:
            # A version-compatible plan embeds its lean runtime: host code TensorRT must be
            # allowed to load. The sha256 check above is what makes that acceptable.
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BatchforgeError(
                f"TensorRT {trt.__version__} could not deserialise {self.plan_path} although its "
                "manifest checks passed", hint=self.manifest.rebuild_hint())
        self._trt, self._runtime, self._engine, self._logger = trt, runtime, engine, logger
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._outputs = tuple(n for n in names if n not in self._inputs)
        self._dtypes = {n: numpy_dtype(trt, n, engine.get_tensor_dtype(n)) for n in names}
        self._local = threading.local()

    def deactivate_impl(self) -> None:
        with self._pool:
            states, self._states, self._idle = self._states, [], []
        for state in states:
            state.free()
        self._local = threading.local()
        self._engine = self._runtime = self._trt = self._logger = None

    @property
    def output_names(self) -> tuple[str, ...]:
        self._require_active("output_names")
        return self._outputs

    def input_metadata_impl(self) -> dict[str, IOMeta]:
        metas = {}
        for name in self._inputs:
            shape = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
            metas[name] = IOMeta(name, shape, self._dtypes[name])
        return metas

    # -- execution -------------------------------------------------------------------------
    def _borrow(self) -> _ExecState:
        """An idle pooled context, a new one while fewer than ``max_contexts`` exist, else wait."""
        if not getattr(self._local, "device_set", False):
            cuda_util.set_device(self.device)  # the runtime API's current device is per thread
            self._local.device_set = True
        with self._pool:
            while not self._idle and len(self._states) + self._making >= self.max_contexts:
                self._pool.wait()
            if self._idle:
                return self._idle.pop()
            self._making += 1
        try:
            state = self._new_state()
        finally:
            with self._pool:
                self._making -= 1
                self._pool.notify()
        with self._pool:
            self._states.append(state)
        return state

    def _give_back(self, state: _ExecState) -> None:
        with self._pool:
            if state in self._states:  # not when deactivate already freed it
                self._idle.append(state)
                self._pool.notify()

    def _new_state(self) -> _ExecState:
        context = self._engine.create_execution_context()
        if context is None:
            raise BatchforgeError(f"TensorRT could not create an execution context for {self.name} "
                                  "(out of GPU memory?)")
        for name in self._inputs:  # max shapes size every buffer once
            max_shape = tuple(self._engine.get_tensor_profile_shape(name, 0)[2])
            if not context.set_input_shape(name, max_shape):
                raise BatchforgeError(f"TensorRT refused the profile max shape {max_shape} for {name!r}")
        shapes = {n: tuple(context.get_tensor_shape(n)) for n in (*self._inputs, *self._outputs)}
        dynamic = {n: s for n, s in shapes.items() if any(d < 0 for d in s)}
        if dynamic:
            raise BatchforgeError(f"engine {self.name} has data-dependent output shapes {dynamic}, "
                                  "which this runner does not support")
        state = _ExecState(context, cuda_util.Stream(), {}, {})
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize
            state.host[name] = cuda_util.PinnedBuffer(nbytes)
            state.device[name] = cuda_util.DeviceBuffer(nbytes)
            if not context.set_tensor_address(name, state.device[name].ptr):
                raise BatchforgeError(f"TensorRT refused the device address of {name!r}")
        return state

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = self._borrow()
        try:
            return self._run(state, feed)
        finally:
            self._give_back(state)

    def _run(self, state: _ExecState, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self._inputs:
            array = np.ascontiguousarray(feed[name])
            state.host[name].view(array.dtype, array.size)[...] = array.reshape(-1)
            if not state.context.set_input_shape(name, array.shape):
                raise BatchforgeError(f"TensorRT refused input shape {array.shape} for {name!r} "
                                      f"(profile {self.manifest.profile})")
            state.stream.copy_to_device(state.device[name].ptr, state.host[name].ptr, array.nbytes)
        shapes = {n: tuple(int(d) for d in state.context.get_tensor_shape(n)) for n in self._outputs}
        if not state.context.execute_async_v3(state.stream.handle):
            raise BatchforgeError(f"TensorRT execute_async_v3 failed for {self.name}")
        sizes = {n: int(np.prod(s, dtype=np.int64)) for n, s in shapes.items()}
        for name in self._outputs:
            nbytes = sizes[name] * self._dtypes[name].itemsize
            state.stream.copy_to_host(state.host[name].ptr, state.device[name].ptr, nbytes)
        state.stream.synchronize()
        # copy out of the pinned buffers: the next batch overwrites them
        return {n: state.host[n].view(self._dtypes[n], sizes[n]).reshape(shapes[n]).copy()
                for n in self._outputs}
