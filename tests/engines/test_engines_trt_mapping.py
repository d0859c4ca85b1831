"""BuildConfig -> TensorRT calls, checked with a RECORDING DOUBLE of the few TensorRT calls used.

``RecordingTensorRTDouble`` is NOT TensorRT and passing these tests is never a TensorRT
verification: it records which documented calls the builder makes, with which arguments, and
refuses any name not in ``DOCUMENTED_API`` (transcribed from the TensorRT 10.x Python API
reference: Core/Builder, Core/BuilderConfig, Core/OptimizationProfile, Core/TimingCache,
Parsers/Onnx/pyOnnx). Its enum values are those of the real headers, per major version (cited
beside ``ENUMS``). Real builds run in the gpu-marked tests (tests/runtime/test_runtime_tensorrt.py)
and scripts/gpu_check.sh.
"""

from __future__ import annotations

import enum
import logging
from types import SimpleNamespace

import pytest
from helpers import tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.engines.profiles import input_profiles
from batchforge.engines.tensorrt_builder import (
    BuildConfig,
    HardwareCompat,
    build_plan,
    build_tensorrt_engine,
    network_flags,
)
from batchforge.errors import BuildError, ConfigError
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.manifest import EngineEnvironment, check_before_load, read_manifest
from batchforge.runtime.spec import ProfileRange

# class -> the members the builder may touch, as named in the TensorRT 10.x Python API docs
DOCUMENTED_API = {
    "Builder": {"create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"},
    "IBuilderConfig": {"set_memory_pool_limit", "builder_optimization_level",
                       "hardware_compatibility_level", "set_flag", "clear_flag",
                       "add_optimization_profile", "create_timing_cache", "set_timing_cache",
                       "get_timing_cache"},
    "IOptimizationProfile": {"set_shape"},
    "ITimingCache": {"serialize"},
    "OnnxParser": {"parse_from_file", "num_errors", "get_error"},
    "ParserError": {"node", "node_name", "node_operator", "desc"},  # Python name of IParserError
}

# Enum values as the headers define them (NVIDIA/TensorRT release/10.16 and main = 11.1):
# NetworkDefinitionCreationFlag: 10.16 include/NvInfer.h:12102 kEXPLICIT_BATCH = 0 (deprecated),
#   kSTRONGLY_TYPED = 1; 11.1 include/NvInfer.h:11462 kSTRONGLY_TYPED = 0 (deprecated, ignored),
#   kPREFER_JIT_PYTHON_PLUGINS = 1, kPREFER_AOT_PYTHON_PLUGINS = 2.
# BuilderFlag: 10.16 include/NvInfer.h:10464 kTF32 = 6, kVERSION_COMPATIBLE = 13;
#   11.1 include/NvInfer.h:9958 kTF32 = 6, kVERSION_COMPATIBLE = 12 (kFP16/kINT8 removed).
# HardwareCompatibilityLevel: 10.16 include/NvInfer.h:10957, 11.1 include/NvInfer.h:10396
#   kNONE = 0, kAMPERE_PLUS = 1, kSAME_COMPUTE_CAPABILITY = 2.
# ILogger::Severity: 11.1 include/NvInferRuntime.h:1590 kINTERNAL_ERROR = 0 ... kVERBOSE = 4.
ENUMS = {
    10: {"NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
         "BuilderFlag": {"TF32": 6, "VERSION_COMPATIBLE": 13}},
    11: {"NetworkDefinitionCreationFlag": {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1,
                                           "PREFER_AOT_PYTHON_PLUGINS": 2},
         "BuilderFlag": {"TF32": 6, "VERSION_COMPATIBLE": 12}},
}
HARDWARE_LEVELS = {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2}
SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}


class DoubleILogger:
    """``trt.ILogger``: subclasses call ``ILogger.__init__`` and implement ``log(severity, msg)``."""

    Severity = enum.IntEnum("Severity", SEVERITY)

    def __init__(self) -> None:
        pass


class RecordingObject:
    """Records every documented call/assignment into the shared log; refuses undocumented names."""

    def __init__(self, kind: str, log: list, behaviour: dict | None = None) -> None:
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_behaviour", behaviour or {})

    def _check(self, name: str) -> None:
        if name not in DOCUMENTED_API[self._kind]:
            raise AttributeError(f"{self._kind}.{name} is not in the documented API the double knows")

    def __getattr__(self, name: str):
        self._check(name)
        value = self._behaviour.get(name)
        if name in {"num_errors"}:
            return value
        def call(*args):
            self._log.append((f"{self._kind}.{name}", *args))
            return value(*args) if callable(value) else value
        return call

    def __setattr__(self, name: str, value) -> None:
        self._check(name)
        self._log.append((f"{self._kind}.{name} =", value))


class RecordingTensorRTDouble(SimpleNamespace):
    """A stand-in ``tensorrt`` module built from enums and RecordingObjects."""

    def __init__(self, *, version: str = "10.13.0.35",
                 levels: tuple[str, ...] = ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"),
                 parse_ok: bool = True, parser_errors: tuple = (), plan: bytes | None = b"PLAN-BYTES",
                 cache_fits: bool = True, set_shape=None, builder_warning: str | None = None) -> None:
        log: list = []
        enums = ENUMS[int(version.split(".")[0])]
        caches: list = []

        def create_timing_cache(blob):
            cache = RecordingObject("ITimingCache", log, {"serialize": lambda: b"CACHE:" + bytes(blob)})
            caches.append(cache)
            return cache

        config = RecordingObject("IBuilderConfig", log, {
            "add_optimization_profile": 0, "create_timing_cache": create_timing_cache,
            "set_timing_cache": lambda cache, ignore: cache_fits or cache is not caches[0],
            "get_timing_cache": lambda: caches[-1]})
        errors = [RecordingObject("ParserError", log, e) for e in parser_errors]
        parser = RecordingObject("OnnxParser", log, {
            "parse_from_file": parse_ok, "num_errors": len(errors), "get_error": lambda i: errors[i]})
        loggers: list = []

        def build_serialized_network(network, cfg):
            if builder_warning:
                loggers[-1].log(DoubleILogger.Severity.WARNING, builder_warning)
            return plan

        builder = RecordingObject("Builder", log, {
            "create_network": "NETWORK", "create_builder_config": config,
            "create_optimization_profile": RecordingObject("IOptimizationProfile", log,
                                                           {"set_shape": set_shape}),
            "build_serialized_network": build_serialized_network})

        def make_builder(logger):
            assert isinstance(logger, DoubleILogger)
            loggers.append(logger)
            return builder

        def init_libnvinfer_plugins(logger, namespace):
            log.append(("init_libnvinfer_plugins", namespace))
            return True

        super().__init__(
            __version__=version, log=log, ILogger=DoubleILogger, init_libnvinfer_plugins=init_libnvinfer_plugins,
            Builder=make_builder, OnnxParser=lambda network, logger: parser,
            NetworkDefinitionCreationFlag=enum.IntEnum("NetworkDefinitionCreationFlag",
                                                       enums["NetworkDefinitionCreationFlag"]),
            MemoryPoolType=enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0}),
            HardwareCompatibilityLevel=enum.IntEnum("HardwareCompatibilityLevel",
                                                    {n: HARDWARE_LEVELS[n] for n in levels}),
            BuilderFlag=enum.IntEnum("BuilderFlag", enums["BuilderFlag"]),
        )

    def calls(self, prefix: str = "") -> list:
        return [c for c in self.log if c[0].startswith(prefix)]


SHAPES = input_profiles(tiny_spec(), ProfileRange(1, 4, 8))


def _build(trt, tmp_path, cache=b"", **options):
    config = BuildConfig(precision=Precision.FP16, profile=ProfileRange(1, 4, 8), **options)
    return build_plan(trt, tmp_path / "model.fp16.onnx", config, SHAPES, cache)


def test_default_build_maps_to_the_documented_calls_in_order(tmp_path):
    trt = RecordingTensorRTDouble()
    plan, cache, reused = _build(trt, tmp_path)
    names = [c[0] for c in trt.log]
    assert names == [
        "init_libnvinfer_plugins", "Builder.create_network", "OnnxParser.parse_from_file",
        "Builder.create_builder_config",
        "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.builder_optimization_level =",
        "IBuilderConfig.hardware_compatibility_level =", "IBuilderConfig.clear_flag",
        "Builder.create_optimization_profile", "IOptimizationProfile.set_shape",
        "IBuilderConfig.add_optimization_profile", "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.set_timing_cache", "Builder.build_serialized_network",
        "IBuilderConfig.get_timing_cache", "ITimingCache.serialize",
    ]
    log = dict((c[0], c[1:]) for c in trt.log)
    assert log["init_libnvinfer_plugins"] == ("",)
    assert log["Builder.create_network"] == (1 << 1,)  # STRONGLY_TYPED = 1 in TensorRT 10
    assert log["OnnxParser.parse_from_file"] == (str(tmp_path / "model.fp16.onnx"),)
    assert log["IBuilderConfig.set_memory_pool_limit"] == (trt.MemoryPoolType.WORKSPACE, 4096 << 20)
    assert log["IBuilderConfig.builder_optimization_level ="] == (3,)
    assert log["IBuilderConfig.hardware_compatibility_level ="] == (trt.HardwareCompatibilityLevel.NONE,)
    assert log["IBuilderConfig.clear_flag"] == (trt.BuilderFlag.TF32,)
    assert log["IOptimizationProfile.set_shape"] == ("images", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    assert log["IBuilderConfig.create_timing_cache"] == (b"",)
    assert log["IBuilderConfig.set_timing_cache"][1] is False  # ignore_mismatch
    assert (plan, cache, reused) == (b"PLAN-BYTES", b"CACHE:", False)
    assert not trt.calls("IBuilderConfig.set_flag")  # no weakly typed FP16/INT8 flags, ever


def test_options_map_to_workspace_level_compatibility_and_flags(tmp_path):
    trt = RecordingTensorRTDouble()
    _build(trt, tmp_path, workspace_mib=512, optimization_level=5,
           hardware_compat=HardwareCompat.AMPERE_PLUS, version_compatible=True, allow_tf32=True)
    log = dict((c[0], c[1:]) for c in trt.log)
    assert log["IBuilderConfig.set_memory_pool_limit"] == (trt.MemoryPoolType.WORKSPACE, 512 << 20)
    assert log["IBuilderConfig.builder_optimization_level ="] == (5,)
    assert log["IBuilderConfig.hardware_compatibility_level ="] == (
        trt.HardwareCompatibilityLevel.AMPERE_PLUS,)
    assert trt.calls("IBuilderConfig.set_flag") == [
        ("IBuilderConfig.set_flag", trt.BuilderFlag.VERSION_COMPATIBLE)]
    assert not trt.calls("IBuilderConfig.clear_flag")


def test_timing_cache_is_loaded_and_reused(tmp_path):
    trt = RecordingTensorRTDouble()
    _, cache, reused = _build(trt, tmp_path, cache=b"OLD")
    assert trt.calls("IBuilderConfig.create_timing_cache") == [("IBuilderConfig.create_timing_cache", b"OLD")]
    assert reused and cache == b"CACHE:OLD"


def test_a_timing_cache_from_another_gpu_is_replaced_not_fatal(tmp_path):
    trt = RecordingTensorRTDouble(cache_fits=False)
    _, cache, reused = _build(trt, tmp_path, cache=b"OTHER-GPU")
    blobs = [c[1] for c in trt.calls("IBuilderConfig.create_timing_cache")]
    assert blobs == [b"OTHER-GPU", b""]
    assert not reused and cache == b"CACHE:"


def test_tensorrt_11_keeps_the_ignored_strongly_typed_flag_and_builds_with_no_flags(tmp_path):
    """TensorRT 11 keeps kSTRONGLY_TYPED = 0 but ignores it (always strongly typed): no flag passed."""
    trt = RecordingTensorRTDouble(version="11.1.0.106")
    assert trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED == 0
    assert network_flags(trt) == 0
    _build(trt, tmp_path)
    assert trt.calls("Builder.create_network") == [("Builder.create_network", 0)]


def test_version_compatible_flag_is_set_by_name_on_10_and_11(tmp_path):
    for version, value in (("10.13.0.35", 13), ("11.1.0.106", 12)):
        trt = RecordingTensorRTDouble(version=version)
        _build(trt, tmp_path, version_compatible=True)
        assert [int(c[1]) for c in trt.calls("IBuilderConfig.set_flag")] == [value]


def test_doubles_enum_values_match_the_headers():
    """The values cited in ENUMS (10.16 and 11.1 headers); a double of a TensorRT that never existed is worse
    than none."""
    ten, eleven = RecordingTensorRTDouble(version="10.16.1.11"), RecordingTensorRTDouble(version="11.1.0.106")
    assert (ten.BuilderFlag.VERSION_COMPATIBLE, eleven.BuilderFlag.VERSION_COMPATIBLE) == (13, 12)
    flags = (ten.NetworkDefinitionCreationFlag, eleven.NetworkDefinitionCreationFlag)
    assert tuple(f.STRONGLY_TYPED for f in flags) == (1, 0)
    assert {m.name: m.value for m in eleven.HardwareCompatibilityLevel} == HARDWARE_LEVELS
    assert "ParserError" in DOCUMENTED_API and "IParserError" not in DOCUMENTED_API


def test_parser_errors_fail_the_parse_even_when_it_returned_true(tmp_path):
    errors = ({"node": 2, "node_name": "resize", "node_operator": "Resize", "desc": "falls back"},)
    trt = RecordingTensorRTDouble(parse_ok=True, parser_errors=errors)
    with pytest.raises(BuildError, match=r"could not parse model.fp16.onnx: node resize \(Resize\): falls back"):
        _build(trt, tmp_path)
    assert not trt.calls("Builder.build_serialized_network")


def test_a_rejected_profile_shape_is_one_line_not_a_bare_runtime_error(tmp_path):
    def set_shape(name, low, opt, high):
        raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

    trt = RecordingTensorRTDouble(set_shape=set_shape)
    with pytest.raises(BuildError, match=r"rejected the profile of input 'images': expected min <= opt <= max") as info:
        _build(trt, tmp_path)
    line = info.value.one_line()
    assert "\n" not in line and "inconsistent with other shapes" in line and "--max-batch" in line


def test_tensorrt_warnings_reach_our_logger_at_warning(tmp_path, caplog):
    trt = RecordingTensorRTDouble(builder_warning="Unknown embedded device detected")
    with caplog.at_level(logging.WARNING, logger="batchforge.tensorrt"):
        _build(trt, tmp_path)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("batchforge.tensorrt", logging.WARNING, "TensorRT: Unknown embedded device detected")]


def test_missing_hardware_level_is_a_build_error(tmp_path):
    trt = RecordingTensorRTDouble(version="10.4.0.26", levels=("NONE", "AMPERE_PLUS"))
    with pytest.raises(BuildError, match=r"TensorRT 10\.4\.0\.26 has no hardware compatibility level "
                                         "SAME_COMPUTE_CAPABILITY"):
        _build(trt, tmp_path, hardware_compat=HardwareCompat.SAME_COMPUTE_CAPABILITY)


def test_parser_errors_are_all_listed(tmp_path):
    errors = ({"node": 4, "node_name": "conv1", "node_operator": "Conv", "desc": "unsupported pads"},
              {"node": -1, "node_name": "", "node_operator": "", "desc": "bad opset"})
    trt = RecordingTensorRTDouble(parse_ok=False, parser_errors=errors)
    with pytest.raises(BuildError, match=r"could not parse model.fp16.onnx: node conv1 \(Conv\): "
                                         r"unsupported pads; model: bad opset"):
        _build(trt, tmp_path)
    assert not trt.calls("Builder.build_serialized_network")


def test_failed_build_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match=r"could not build model\.fp16\.onnx"):
        _build(RecordingTensorRTDouble(plan=None), tmp_path)


@pytest.mark.parametrize(("options", "message"), [({"workspace_mib": 0}, "workspace must be >= 1 MiB"),
                                                  ({"optimization_level": 6}, "level must be 0..5")])
def test_build_config_validation(options, message):
    with pytest.raises(ConfigError, match=message):
        BuildConfig(precision=Precision.FP32, profile=ProfileRange(1, 1, 1), **options)


def test_engine_build_writes_plan_manifest_and_reuses_the_timing_cache(tmp_path, capsys):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    cache_path = tmp_path / "timing.cache"
    config = BuildConfig(precision=Precision.FP32, profile=ProfileRange(1, 2, 6), timing_cache=cache_path)
    environment = {"gpu_name": "GPU", "compute_capability": "8.6", "cuda_runtime": "12.9",
                   "cuda_driver": "12.9"}
    first = RecordingTensorRTDouble()
    build_tensorrt_engine(artifacts, config, trt=first, environment=environment)
    assert cache_path.read_bytes() == b"CACHE:"
    second = RecordingTensorRTDouble()
    manifest = build_tensorrt_engine(artifacts, config, trt=second, environment=environment)
    assert second.calls("IBuilderConfig.create_timing_cache")[0][1] == b"CACHE:"
    assert "timing cache reused" in capsys.readouterr().out
    assert artifacts.plan(Precision.FP32).read_bytes() == b"PLAN-BYTES"
    assert read_manifest(artifacts.plan_manifest(Precision.FP32)) == manifest
    assert manifest.profile == ProfileRange(1, 2, 6)
    assert manifest.inputs[0].max == (6, 3, 8, 8)
    plan = check_before_load(manifest, artifacts.plan(Precision.FP32),
                             EngineEnvironment("10.13.0.35", "8.6", "GPU"), onnx_path=artifacts.onnx(Precision.FP32))
    assert plan == b"PLAN-BYTES"


def test_the_double_refuses_undocumented_names():
    trt = RecordingTensorRTDouble()
    with pytest.raises(AttributeError, match=r"IBuilderConfig\.max_workspace_size is not in the documented"):
        trt.Builder(DoubleILogger()).create_builder_config().max_workspace_size = 1
