"""TensorRT runner: a strongly typed plan, checked against its manifest, run with cuda-python.

``tensorrt`` and cuda-python are imported only in ``activate`` (and ``import_tensorrt``), never
when this module is imported. Activation verifies the plan's bytes (size, sha256) and this
machine's TensorRT version / GPU against the manifest *before* deserialising exactly those bytes.

Execution: pinned host buffers and device buffers sized once for the profile's max batch, one
CUDA stream, ``set_input_shape`` + ``execute_async_v3`` per batch. Threads: the engine is shared
and every thread that calls ``infer`` gets its own execution context, stream and buffers
(created on its first call, all freed by ``deactivate``), so concurrent ``infer`` calls from
different threads do not serialise on a lock and never share buffers.
"""

from __future__ import annotations

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


def current_environment(trt: Any, device: int = 0) -> EngineEnvironment:
    """This machine's TensorRT version and GPU, for ``check_before_load``."""
    if cuda_util.device_count() <= device:
        raise BackendUnavailableError(
            f"no CUDA device {device} found (cuda-python sees {cuda_util.device_count()})",
            hint="run `batchforge doctor`; TensorRT engines need an NVIDIA GPU and driver")
    info = cuda_util.device_info(device)
    return EngineEnvironment(str(trt.__version__), info.compute_capability, info.name)


@dataclass
class _ThreadState:
    """One thread's execution context, stream and buffers."""

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
                 name: str | None = None) -> None:
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
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._states_lock = threading.Lock()

    @classmethod
    def from_artifacts(cls, artifacts: ModelArtifacts, precision: Precision | str, *,
                       spec: ModelSpec | None = None) -> TensorRTRunner:
        """A runner for ``engine.P.plan`` in a model folder (its manifest is read and matched).

        Args:
            artifacts: the model folder.
            precision: which plan (fp32, fp16, int8).
            spec: the model spec; its input names must be the engine's.
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
                   name=f"{artifacts.model}:{precision.value}:tensorrt")

    # -- lifecycle -------------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = import_tensorrt()
        cuda_util.require_cudart()
        environment = current_environment(trt, self.device)
        plan = check_before_load(self.manifest, self.plan_path, environment, onnx_path=self.onnx_path)
        cuda_util.set_device(self.device)
        logger = trt.Logger(trt.Logger.ERROR)  # warnings would leak onto users' stderr
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
        self._trt, self._runtime, self._engine = trt, runtime, engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._outputs = tuple(n for n in names if n not in self._inputs)
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._local = threading.local()

    def deactivate_impl(self) -> None:
        with self._states_lock:
            states, self._states = self._states, []
        for state in states:
            state.free()
        self._local = threading.local()
        self._engine = self._runtime = self._trt = None

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
    def _thread_state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._new_state()
            self._local.state = state
            with self._states_lock:
                self._states.append(state)
        return state

    def _new_state(self) -> _ThreadState:
        cuda_util.set_device(self.device)  # the runtime API's current device is per thread
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
        state = _ThreadState(context, cuda_util.Stream(), {}, {})
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize
            state.host[name] = cuda_util.PinnedBuffer(nbytes)
            state.device[name] = cuda_util.DeviceBuffer(nbytes)
            if not context.set_tensor_address(name, state.device[name].ptr):
                raise BatchforgeError(f"TensorRT refused the device address of {name!r}")
        return state

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = self._thread_state()
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
