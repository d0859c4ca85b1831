"""TensorRT runner.

Three layers, kept apart on purpose:
- import boundary and refusals that need no TensorRT (run everywhere);
- ``EmulatedTensorRT`` / ``EmulatedCudart``: an EMULATION DOUBLE of the few tensorrt and
  cuda-python calls the runner makes, backed by host memory and numpy. It checks the runner's
  own logic (check-before-deserialise, buffer sizes, pointers, shapes, copies, per-thread
  contexts, cleanup) on a CPU; it is never counted as a TensorRT verification;
- ``@pytest.mark.gpu`` tests that build and run a real engine and compare it with ONNX Runtime
  (skipped with the reason where TensorRT or a GPU is missing; scripts/gpu_check.sh runs them).
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import logging
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import tiny_embedder_onnx, tiny_spec, write_artifact
from onnx import numpy_helper

from batchforge.engines.profiles import input_profiles
from batchforge.engines.tensorrt_builder import BuildConfig, make_manifest
from batchforge.errors import (
    ArtifactError,
    BackendUnavailableError,
    ConfigError,
    EngineCompatibilityError,
    InputValidationError,
    IntegrityError,
)
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.batching import infer_in_chunks
from batchforge.runtime.manifest import write_manifest
from batchforge.runtime.runners import cuda_util
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner, OrtOptions
from batchforge.runtime.runners.tensorrt import TensorRTRunner
from batchforge.runtime.spec import ProfileRange, TensorSpec

FP32 = Precision.FP32
PLAN = b"EMULATED-PLAN:" + bytes(range(200))


def test_importing_the_runner_loads_neither_tensorrt_nor_cuda():
    code = ("import sys, batchforge.runtime, batchforge.runtime.runners.tensorrt, "
            "batchforge.runtime.runners.cuda_util, batchforge.runtime.manifest, batchforge.engines.commands; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorrt', 'cuda', 'torch', 'onnx'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_device_count_is_zero_without_a_gpu():
    count, why = cuda_util.probe_devices()
    if count:
        pytest.skip("this machine has a CUDA device")
    assert cuda_util.device_count() == 0 and why


# -- refusals that need no TensorRT ---------------------------------------------------------
@pytest.fixture
def artifacts(tmp_path):
    return write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())


def _manifest(artifacts, *, version="10.13.0.35", sm="9.0", precision=FP32, **options):
    config = BuildConfig(precision=precision, profile=ProfileRange(1, 4, 8), **options)
    plan_path = artifacts.plan(precision)
    plan_path.write_bytes(PLAN)
    manifest = make_manifest(artifacts, config, plan_path, PLAN, artifacts.onnx(FP32),
                             input_profiles(artifacts.spec(), config.profile), artifacts.spec().to_dict(),
                             version, {"compute_capability": sm, "gpu_name": "Emulated GPU"})
    write_manifest(artifacts.plan_manifest(precision), manifest)
    return manifest


def test_missing_plan_manifest_names_the_build_command(artifacts):
    with pytest.raises(ArtifactError, match="engine manifest not found") as info:
        TensorRTRunner.from_artifacts(artifacts, FP32)
    assert "batchforge build tiny --precision fp32 --backend tensorrt" in info.value.one_line()


def test_manifest_of_another_precision_is_refused(artifacts):
    manifest = _manifest(artifacts)
    artifacts.plan_manifest(Precision.FP16).write_text(artifacts.plan_manifest(FP32).read_text())
    with pytest.raises(IntegrityError, match="describes tensorrt engine 'tiny' at fp32, expected tensorrt "
                                             "'tiny' at fp16"):
        TensorRTRunner.from_artifacts(artifacts, Precision.FP16)
    assert manifest.precision == "fp32"


def test_spec_with_other_inputs_is_refused(artifacts):
    _manifest(artifacts)
    other = dataclasses.replace(tiny_spec(), inputs=(TensorSpec("pixels", ("batch", 3, 8, 8)),))
    with pytest.raises(ConfigError, match=r"has inputs \['images'\], the spec of 'tiny' names \['pixels'\]"):
        TensorRTRunner.from_artifacts(artifacts, FP32, spec=other)


def test_activation_without_tensorrt_says_how_to_install(artifacts, monkeypatch):
    _manifest(artifacts)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    runner = TensorRTRunner.from_artifacts(artifacts, FP32)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed") as info:
        runner.activate()
    assert "pip install 'batchforge[tensorrt]'" in info.value.one_line()
    assert not runner.is_active


# -- the emulation double -------------------------------------------------------------------
class EmulatedCudart(SimpleNamespace):
    """cuda-python's runtime module over host memory: malloc = ctypes buffers, memcpy = memmove."""

    def __init__(self, compute_capability=(9, 0)):
        ok = enum.Enum("cudaError_t", {"cudaSuccess": 0, "cudaErrorMemoryAllocation": 2})
        self.live: dict[int, ctypes.Array] = {}
        self.calls: list[str] = []
        major, minor = compute_capability

        def alloc(nbytes):
            buffer = (ctypes.c_byte * nbytes)()
            self.live[ctypes.addressof(buffer)] = buffer
            return ok.cudaSuccess, ctypes.addressof(buffer)

        def free(ptr):
            del self.live[ptr]
            return (ok.cudaSuccess,)

        def memcpy(dst, src, nbytes, kind, stream):
            self.calls.append(kind.name)
            ctypes.memmove(dst, src, nbytes)
            return (ok.cudaSuccess,)

        super().__init__(
            cudaError_t=ok, cudaMemcpyKind=enum.Enum("cudaMemcpyKind", "cudaMemcpyHostToDevice "
                                                                      "cudaMemcpyDeviceToHost"),
            cudaMallocHost=alloc, cudaMalloc=alloc, cudaFreeHost=free, cudaFree=free,
            cudaMemcpyAsync=memcpy, cudaStreamCreate=lambda: (ok.cudaSuccess, 7),
            cudaStreamSynchronize=lambda s: (ok.cudaSuccess,), cudaStreamDestroy=lambda s: (ok.cudaSuccess,),
            cudaSetDevice=lambda i: (ok.cudaSuccess,), cudaGetDeviceCount=lambda: (ok.cudaSuccess, 1),
            cudaGetDeviceProperties=lambda i: (ok.cudaSuccess, SimpleNamespace(
                name=b"Emulated GPU\x00", major=major, minor=minor, totalGlobalMem=1 << 30)),
            cudaRuntimeGetVersion=lambda: (ok.cudaSuccess, 12090),
            cudaDriverGetVersion=lambda: (ok.cudaSuccess, 12090),
            cudaGetErrorName=lambda e: (ok.cudaSuccess, e.name.encode()),
            cudaGetErrorString=lambda e: (ok.cudaSuccess, b"emulated error"))


class EmulatedEngine:
    """The tiny embedder (spatial mean, then x @ W + B) over raw device pointers."""

    def __init__(self, trt, weight, bias, profile=((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))):
        self.trt, self.weight, self.bias, self.profile = trt, weight, bias, profile
        self.contexts = 0
        self.num_io_tensors = 2

    def get_tensor_name(self, index):
        return ("images", "embedding")[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "images" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.io_dtype

    def get_tensor_shape(self, name):
        return (-1, 3, 8, 8) if name == "images" else (-1, 5)

    def get_tensor_profile_shape(self, name, profile_index):
        assert (name, profile_index) == ("images", 0)
        return list(self.profile)

    def create_execution_context(self):
        self.contexts += 1
        return EmulatedContext(self)


class EmulatedContext:
    def __init__(self, engine):
        self.engine, self.shape, self.addresses = engine, None, {}

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.profile
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape if name == "images" else (self.shape[0], 5)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        count = int(np.prod(self.shape))
        x = np.frombuffer((ctypes.c_float * count).from_address(self.addresses["images"]), np.float32)
        y = x.reshape(self.shape).mean(axis=(2, 3)) @ self.engine.weight + self.engine.bias
        out = (ctypes.c_float * y.size).from_address(self.addresses["embedding"])
        np.frombuffer(out, np.float32)[:] = y.astype(np.float32).ravel()
        return True


def emulated_tensorrt(version="10.13.0.35"):
    model = tiny_embedder_onnx()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    def nptype(dtype):
        if dtype == "bfloat16":  # like trt.nptype: BF16/FP8 have no NumPy type
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return np.dtype(dtype).type

    class ILogger:
        Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3,
                                             "VERBOSE": 4})

        def __init__(self):
            pass

    trt = SimpleNamespace(__version__=version, deserialized=[], runtimes=[], plugins=[], warn_on_load=None,
                          io_dtype="float32", TensorIOMode=enum.Enum("TensorIOMode", "INPUT OUTPUT"),
                          nptype=nptype, ILogger=ILogger,
                          init_libnvinfer_plugins=lambda logger, ns: trt.plugins.append(ns) or True)

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, ILogger)
            self.logger = logger
            self.engine_host_code_allowed = False
            trt.runtimes.append(self)

        def deserialize_cuda_engine(self, plan):
            assert trt.plugins == [""], "plugins must be registered before deserialising"
            if trt.warn_on_load:
                self.logger.log(ILogger.Severity.WARNING, trt.warn_on_load)
            trt.deserialized.append(bytes(plan))
            trt.engine = EmulatedEngine(trt, weights["W"], weights["B"])
            return trt.engine

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def emulated(monkeypatch):
    trt, cudart = emulated_tensorrt(), EmulatedCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_util, "load_cudart", lambda: cudart)
    return trt, cudart


def _ort():
    return OnnxRuntimeRunner(tiny_embedder_onnx().SerializeToString(), profile=ProfileRange(1, 4, 8),
                             options=OrtOptions(intra_op_threads=1))


def _batch(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


def test_emulated_engine_matches_onnx_runtime_through_the_runner_plumbing(artifacts, emulated):
    trt, cudart = emulated
    _manifest(artifacts)
    with TensorRTRunner.from_artifacts(artifacts, FP32, spec=tiny_spec()) as runner, _ort() as ort:
        assert trt.deserialized == [PLAN]
        assert runner.output_names == ("embedding",)
        for n in (1, 3, 8, 2):  # shrinking again checks no stale data survives in the buffers
            got = runner.infer({"images": _batch(n, seed=n)})["embedding"]
            assert got.shape == (n, 5)
            np.testing.assert_allclose(got, ort.infer({"images": _batch(n, seed=n)})["embedding"],
                                       rtol=1e-5, atol=1e-6)
        whole = infer_in_chunks(runner, {"images": _batch(11, seed=5)})["embedding"]
        np.testing.assert_allclose(whole, infer_in_chunks(ort, {"images": _batch(11, seed=5)})["embedding"],
                                   rtol=1e-5, atol=1e-6)
        assert cudart.calls[:2] == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"]
    assert cudart.live == {}  # every pinned and device buffer freed on deactivate


@pytest.mark.parametrize(("feed", "message"), [
    ({"images": _batch(9)}, "outside the engine profile"),
    ({"images": _batch(2).astype(np.float64)}, "expected dtype float32, got float64"),
    ({"images": np.zeros((2, 4, 8, 8), np.float32)}, "dim 1 expected 3, got 4"),
    ({"pixels": _batch(2)}, "input names do not match"),
])
def test_same_validation_as_the_onnxruntime_runner(artifacts, emulated, feed, message):
    _manifest(artifacts)
    with TensorRTRunner.from_artifacts(artifacts, FP32) as runner, _ort() as ort:
        for r in (runner, ort):
            with pytest.raises(InputValidationError, match=message):
                r.infer(feed)


def test_bit_flipped_plan_never_reaches_deserialize(artifacts, emulated):
    trt, _ = emulated
    _manifest(artifacts)
    artifacts.plan(FP32).write_bytes(PLAN[:-1] + bytes([PLAN[-1] ^ 0x10]))
    runner = TensorRTRunner.from_artifacts(artifacts, FP32)
    with pytest.raises(IntegrityError, match="refusing to deserialise"):
        runner.activate()
    assert trt.deserialized == [] and not runner.is_active


def test_other_tensorrt_version_never_reaches_deserialize(artifacts, emulated):
    trt, _ = emulated
    _manifest(artifacts, version="10.9.0.34")
    with pytest.raises(EngineCompatibilityError, match=r"built for sm_90 with TensorRT 10\.9, this is sm_90 "
                                                       r"with 10\.13"):
        TensorRTRunner.from_artifacts(artifacts, FP32).activate()
    assert trt.deserialized == []


def test_plan_for_another_gpu_never_reaches_deserialize(artifacts, emulated):
    trt, _ = emulated
    _manifest(artifacts, sm="8.6")
    with pytest.raises(EngineCompatibilityError, match=r"built for sm_86 .* this is sm_90"):
        TensorRTRunner.from_artifacts(artifacts, FP32).activate()
    assert trt.deserialized == []


def test_version_compatible_plan_allows_its_embedded_lean_runtime(artifacts, emulated):
    trt, _ = emulated
    _manifest(artifacts, version="10.12.0.1", version_compatible=True)
    with TensorRTRunner.from_artifacts(artifacts, FP32):
        assert trt.runtimes[-1].engine_host_code_allowed is True


@pytest.mark.parametrize("max_contexts", [1, 2, 4])
def test_threads_share_a_bounded_pool_of_contexts(artifacts, emulated, max_contexts):
    """Contexts (and their activation memory) are bounded by the pool, not by the threads that called.

    Emulated: the memory held per context was not measured on a GPU.
    """
    trt, cudart = emulated
    _manifest(artifacts)
    results, errors = {}, []
    with TensorRTRunner.from_artifacts(artifacts, FP32, max_contexts=max_contexts) as runner, _ort() as ort:
        expected = {i: ort.infer({"images": _batch(4, seed=i)})["embedding"] for i in range(6)}

        def work(i):
            try:
                for _ in range(20):
                    results[i] = runner.infer({"images": _batch(4, seed=i)})["embedding"]
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert 1 <= trt.engine.contexts <= max_contexts
        for i in range(6):
            np.testing.assert_allclose(results[i], expected[i], rtol=1e-5, atol=1e-6)
        before = (trt.engine.contexts, len(cudart.live))
        late = threading.Thread(target=lambda: runner.infer({"images": _batch(2)}))  # a new thread reuses one
        late.start()
        late.join()
        assert (trt.engine.contexts, len(cudart.live)) == before
    assert cudart.live == {}


def test_max_contexts_must_be_positive(artifacts):
    _manifest(artifacts)
    with pytest.raises(ConfigError, match="max_contexts: expected an integer from 1 to 256, got int 0"):
        TensorRTRunner.from_artifacts(artifacts, FP32, max_contexts=0)


def test_plugins_are_registered_and_tensorrt_warnings_reach_our_logger(artifacts, emulated, caplog):
    trt, _ = emulated
    trt.warn_on_load = "Using an engine plan file across different models of devices is not recommended"
    _manifest(artifacts)
    with caplog.at_level(logging.WARNING, logger="batchforge.tensorrt"), TensorRTRunner.from_artifacts(artifacts, FP32):
        pass
    assert trt.plugins == [""]
    assert [(r.name, r.levelno) for r in caplog.records] == [("batchforge.tensorrt", logging.WARNING)]
    assert "across different models of devices" in caplog.records[0].getMessage()


def test_bf16_io_is_a_clear_error_not_a_type_error(artifacts, emulated):
    trt, _ = emulated
    trt.io_dtype = "bfloat16"
    _manifest(artifacts)
    runner = TensorRTRunner.from_artifacts(artifacts, FP32)
    with pytest.raises(ConfigError, match="engine I/O tensor 'images' is bfloat16, which NumPy cannot hold") as info:
        runner.activate()
    assert "float32/float16 inputs and outputs" in info.value.one_line()


def test_stream_handle_uses_get_cuda_native_handle_when_cuda_bindings_has_it(monkeypatch):
    cudart = EmulatedCudart()
    stream = SimpleNamespace(__int__=None)
    cudart.cudaStreamCreate = lambda: (cudart.cudaError_t.cudaSuccess, stream)
    monkeypatch.setattr(cuda_util, "load_cudart", lambda: cudart)
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # cuda-bindings < 12.9.1: no utils
    with pytest.raises(TypeError):  # the 12.x fallback is int(obj), which this stand-in refuses
        cuda_util.Stream()
    seen = []
    utils = SimpleNamespace(get_cuda_native_handle=lambda obj: seen.append(obj) or 0x7F00)
    monkeypatch.setitem(sys.modules, "cuda", SimpleNamespace(__path__=[]))
    monkeypatch.setitem(sys.modules, "cuda.bindings", SimpleNamespace(__path__=[], utils=utils))
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    assert cuda_util.Stream().handle == 0x7F00 and seen == [stream]


def test_no_int_of_a_cuda_object_outside_the_12x_fallback():
    from pathlib import Path

    source = Path(cuda_util.__file__).read_text() + Path(sys.modules[TensorRTRunner.__module__].__file__).read_text()
    assert "int(self._stream)" not in source and "int(stream)" not in source
    assert source.count("int(obj)") == 1  # native_handle's fallback for cuda-bindings < 12.9.1


def test_cuda_errors_name_the_call():
    cudart = EmulatedCudart()
    with pytest.raises(Exception, match=r"CUDA call cudaMalloc\(64 bytes\) failed: "
                                        r"cudaErrorMemoryAllocation \(emulated error\)"):
        cuda_util.check(cudart, (cudart.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(64 bytes)")
    assert cuda_util.format_cuda_version(12090) == "12.9"


# -- real TensorRT (GPU machines) -----------------------------------------------------------
@pytest.mark.gpu
def test_real_engine_matches_onnx_runtime(tmp_path):
    import tensorrt as trt

    from batchforge.engines.tensorrt_builder import build_tensorrt_engine

    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    info, versions = cuda_util.device_info(0), cuda_util.cuda_versions()
    environment = {"gpu_name": info.name, "compute_capability": info.compute_capability,
                   "cuda_runtime": versions["runtime"], "cuda_driver": versions["driver"]}
    config = BuildConfig(precision=FP32, profile=ProfileRange(1, 4, 8), workspace_mib=256,
                         timing_cache=tmp_path / "timing.cache")
    build_tensorrt_engine(artifacts, config, trt=trt, environment=environment)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    with TensorRTRunner.from_artifacts(artifacts, FP32, spec=tiny_spec()) as runner, _ort() as ort:
        for n in (1, 4, 8, 3):
            x = _batch(n, seed=n)
            np.testing.assert_allclose(runner.infer({"images": x})["embedding"],
                                       ort.infer({"images": x})["embedding"], rtol=1e-4, atol=1e-5)
        with pytest.raises(InputValidationError, match="outside the engine profile"):
            runner.infer({"images": _batch(9)})


@pytest.mark.gpu
def test_real_truncated_plan_is_refused(tmp_path):
    import tensorrt as trt

    from batchforge.engines.tensorrt_builder import build_tensorrt_engine

    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    info = cuda_util.device_info(0)
    config = BuildConfig(precision=FP32, profile=ProfileRange(1, 2, 4), workspace_mib=256)
    build_tensorrt_engine(artifacts, config, trt=trt,
                          environment={"compute_capability": info.compute_capability})
    plan = artifacts.plan(FP32)
    plan.write_bytes(plan.read_bytes()[:-64])
    with pytest.raises(IntegrityError, match="truncated"):
        TensorRTRunner.from_artifacts(artifacts, FP32).activate()
