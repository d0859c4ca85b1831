"""Strongly typed TensorRT builds from the fp32 / fp16 / int8 (Q/DQ) ONNX, with a manifest.

TensorRT 10 deprecated and TensorRT 11 removed implicit INT8 calibration and the weakly typed
precision flags (FP16, INT8). Precision is therefore decided in the ONNX (calibration/) and the
network is created strongly typed: every tensor keeps the type the ONNX gives it. The mapping
from ``BuildConfig`` to TensorRT calls lives in ``configure_builder`` alone, so a recording
double of those few calls can check it without TensorRT (tests/engines).

Written against the TensorRT 10.x / 11.x Python API documentation: Builder.create_network,
OnnxParser, IBuilderConfig (set_memory_pool_limit, builder_optimization_level,
hardware_compatibility_level, set_flag/clear_flag, create_timing_cache/set_timing_cache/
get_timing_cache), IOptimizationProfile.set_shape, Builder.build_serialized_network,
init_libnvinfer_plugins. TensorRT's messages go to the ``batchforge.tensorrt`` logger.
"""

from __future__ import annotations

import enum
import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchforge.engines.profiles import input_profiles
from batchforge.engines.records import calibration_sha256, tolerances_for, write_bytes_atomic
from batchforge.errors import BuildError, ConfigError
from batchforge.onnx_external import checked_external_files
from batchforge.runtime.artifacts import ModelArtifacts, Precision, sha256_file
from batchforge.runtime.manifest import EngineManifest, InputProfile, version_tuple, write_manifest
from batchforge.runtime.runners.cuda_util import installed_cuda_majors
from batchforge.runtime.runners.tensorrt import init_plugins, make_logger
from batchforge.runtime.spec import ProfileRange

MAX_LISTED_PARSER_ERRORS = 10


class HardwareCompat(str, enum.Enum):
    """TensorRT hardware compatibility level (``--hardware-compat``)."""

    # HardwareCompatibilityLevel kNONE = 0, kAMPERE_PLUS = 1, kSAME_COMPUTE_CAPABILITY = 2
    # (TensorRT 10.16 include/NvInfer.h:10957, TensorRT 11.1 include/NvInfer.h:10396)
    NONE = "none"  # only the GPU model it was built on (fastest)
    AMPERE_PLUS = "ampere_plus"  # any Ampere or newer GPU (fewer tactics)
    SAME_COMPUTE_CAPABILITY = "same_compute_capability"  # any GPU model of the same sm

    @property
    def trt_name(self) -> str:
        return self.name  # trt.HardwareCompatibilityLevel.NONE / AMPERE_PLUS / SAME_COMPUTE_CAPABILITY


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a TensorRT build besides the ONNX itself.

    ``allow_tf32`` stays False by default: TF32 would compute the FP32 parts of a network with a
    10-bit mantissa, which is not what the ONNX (and its ONNX Runtime parity) says.
    """

    precision: Precision
    profile: ProfileRange
    workspace_mib: int = 4096
    optimization_level: int = 3
    timing_cache: Path | None = None
    hardware_compat: HardwareCompat = HardwareCompat.NONE
    version_compatible: bool = False
    allow_tf32: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            problems.append(f"workspace must be >= 1 MiB, got {self.workspace_mib}")
        if self.optimization_level not in range(6):
            problems.append(f"optimisation level must be 0..5, got {self.optimization_level}")
        if problems:
            raise ConfigError("invalid TensorRT build options", problems=problems)
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "hardware_compat", HardwareCompat(self.hardware_compat))

    def record(self) -> dict[str, Any]:
        """The builder options as the manifest records them."""
        return {"strongly_typed": True, "workspace_mib": self.workspace_mib,
                "optimization_level": self.optimization_level,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "hardware_compat": self.hardware_compat.value,
                "version_compatible": self.version_compatible, "tf32": self.allow_tf32}


def network_flags(trt: Any) -> int:
    """``create_network`` flags: STRONGLY_TYPED on TensorRT 10, none on 11 and later.

    NetworkDefinitionCreationFlag: TensorRT 10.16 include/NvInfer.h:12102 has kEXPLICIT_BATCH = 0
    (deprecated), kSTRONGLY_TYPED = 1; TensorRT 11.1 include/NvInfer.h:11462 keeps
    kSTRONGLY_TYPED = 0, "deprecated in TensorRT 11.0. Strongly typed mode is always enabled ...
    retained for API compatibility but is ignored" -- so 11+ needs no flag and gets none.
    """
    major = (version_tuple(trt.__version__) or (0,))[0]
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None or major >= 11 else 1 << int(flag)


def configure_builder(trt: Any, builder: Any, config: BuildConfig, inputs: Sequence[InputProfile],
                      timing_cache: bytes) -> tuple[Any, bool]:
    """The one mapping from BuildConfig to TensorRT builder-config calls.

    Args:
        trt: the tensorrt module.
        builder: a ``tensorrt.Builder``.
        config: the build options.
        inputs: min/opt/max shapes of every input (one optimisation profile).
        timing_cache: a serialised timing cache to reuse (b"" for a new one).
    Returns:
        ``(IBuilderConfig, reused)``; ``reused`` is False when the given cache did not fit this
        TensorRT/GPU and a new one was started.
    """
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    cfg.builder_optimization_level = config.optimization_level
    level = getattr(trt.HardwareCompatibilityLevel, config.hardware_compat.trt_name, None)
    if level is None:
        raise BuildError(f"this TensorRT {trt.__version__} has no hardware compatibility level "
                         f"{config.hardware_compat.trt_name}",
                         hint="upgrade TensorRT or choose another --hardware-compat")
    cfg.hardware_compatibility_level = level
    if config.version_compatible:
        # BuilderFlag kVERSION_COMPATIBLE is 13 in TensorRT 10.16 (include/NvInfer.h:10531) and 12
        # in 11.1 (include/NvInfer.h:10006): always by name, never by number
        cfg.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None and not config.allow_tf32:
        cfg.clear_flag(tf32)
    profile = builder.create_optimization_profile()
    for item in inputs:
        try:  # the binding raises RuntimeError (no status) for inconsistent shapes
            profile.set_shape(item.name, item.min, item.opt, item.max)
        except (RuntimeError, TypeError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BuildError(f"TensorRT rejected the profile of input {item.name!r}: expected min <= "
                             f"opt <= max of one rank, got min {item.min} opt {item.opt} max {item.max} "
                             f"({reason})",
                             hint="fix --min-batch/--opt-batch/--max-batch or the spec's input shape") from None
    if cfg.add_optimization_profile(profile) < 0:
        shapes = [(i.name, i.min, i.opt, i.max) for i in inputs]
        raise BuildError(f"TensorRT rejected the optimisation profile {shapes}")
    reused = bool(timing_cache)
    cache = cfg.create_timing_cache(timing_cache)
    if cache is None or not cfg.set_timing_cache(cache, False):
        # a cache from another TensorRT version or GPU: start a new one rather than fail
        reused = False
        cfg.set_timing_cache(cfg.create_timing_cache(b""), False)
    return cfg, reused


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    """Parses the ONNX into the network; every parser error is listed (BuildError).

    The errors are read after every parse, and any error fails it even when ``parse_from_file``
    returned True (as Polygraphy's loader does).
    """
    if Path(onnx_path).is_file():  # the parser reads external data wherever it points
        checked_external_files(onnx_path)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))
    if parsed and parser.num_errors == 0:
        return
    errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    listed = errors[:MAX_LISTED_PARSER_ERRORS]
    if len(errors) > MAX_LISTED_PARSER_ERRORS:
        listed.append(f"... {len(errors) - MAX_LISTED_PARSER_ERRORS} more")
    raise BuildError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(listed or ["no details"]),
                     hint="check the ops against the TensorRT ONNX operator support matrix")


def _describe_parser_error(error: Any) -> str:
    """``node NAME (OP): description`` from a ``trt.ParserError`` (node() is -1 for model-level errors).

    The C++ ``IParserError`` (TensorRT 11.1 include/NvOnnxParser.h:127) is bound to Python as
    ``ParserError`` (python/src/parsers/pyOnnx.cpp:240).
    """
    if error.node() < 0:
        return f"model: {error.desc()}"
    return f"node {error.node_name() or error.node()} ({error.node_operator()}): {error.desc()}"


def build_plan(trt: Any, onnx_path: Path, config: BuildConfig, inputs: Sequence[InputProfile],
               timing_cache: bytes) -> tuple[bytes, bytes, bool]:
    """Builds a serialised plan.

    Returns:
        ``(plan, timing cache to save back, whether the given cache was reused)``.
    Raises:
        BuildError with the parser errors or the builder's failure.
    """
    logger = make_logger(trt)
    init_plugins(trt, logger)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parse_onnx(trt, network, logger, onnx_path)
    cfg, reused = configure_builder(trt, builder, config, inputs, timing_cache)
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise BuildError(f"TensorRT could not build {onnx_path.name} (see the TensorRT log above)",
                         hint="try a larger --workspace-mib or another --opt-level")
    cache = cfg.get_timing_cache()
    return bytes(serialized), (bytes(cache.serialize()) if cache is not None else b""), reused


def build_tensorrt_engine(artifacts: ModelArtifacts, config: BuildConfig, *, trt: Any,
                          environment: dict[str, str]) -> EngineManifest:
    """Builds ``engine.P.plan`` + ``engine.P.json`` for one model folder.

    Args:
        artifacts: the model folder (its ONNX for the precision is verified first).
        config: the build options.
        trt: the tensorrt module.
        environment: ``gpu_name``, ``compute_capability``, ``cuda_runtime`` (cuda-bindings'),
            ``cuda_driver``; ``tensorrt_cuda`` (the TensorRT wheel's CUDA major) is read here
            when absent.
    Returns:
        The manifest written beside the plan.
    """
    onnx_path = artifacts.verified_onnx(config.precision)
    if "tensorrt_cuda" not in environment:
        cuda = installed_cuda_majors()["tensorrt"]
        environment = {**environment, "tensorrt_cuda": str(cuda) if cuda else "unknown"}
    spec = artifacts.spec()
    inputs = input_profiles(spec, config.profile)
    cache_path = config.timing_cache
    old_cache = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    start = time.perf_counter()
    plan, cache, reused = build_plan(trt, onnx_path, config, inputs, old_cache)
    if cache_path and cache:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(cache_path, cache)
    if old_cache and not reused:
        print(f"note: timing cache {cache_path} did not fit this TensorRT/GPU; started a new one",
              file=sys.stderr)
    plan_path = artifacts.plan(config.precision)
    write_bytes_atomic(plan_path, plan)
    manifest = make_manifest(artifacts, config, plan_path, plan, onnx_path, inputs, spec.to_dict(),
                             str(trt.__version__), environment)
    write_manifest(artifacts.plan_manifest(config.precision), manifest)
    print(f"{artifacts.model} [{config.precision.value}]: TensorRT {trt.__version__} built "
          f"{plan_path} ({len(plan) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s"
          + (" (timing cache reused)" if reused else ""))
    return manifest


def make_manifest(artifacts: ModelArtifacts, config: BuildConfig, plan_path: Path, plan: bytes,
                  onnx_path: Path, inputs: Sequence[InputProfile], spec: dict[str, Any],
                  tensorrt_version: str, environment: dict[str, str]) -> EngineManifest:
    """The manifest of a freshly built plan (also used by tests with a synthetic plan)."""
    return EngineManifest(
        model=artifacts.model, precision=config.precision.value, tensorrt_version=tensorrt_version,
        cuda_runtime_version=environment.get("cuda_runtime", "unknown"),
        tensorrt_cuda=environment.get("tensorrt_cuda", "unknown"),
        cuda_driver_version=environment.get("cuda_driver", "unknown"),
        gpu_name=environment.get("gpu_name", "unknown"),
        compute_capability=environment["compute_capability"],
        hardware_compatibility=config.hardware_compat.value,
        version_compatible=config.version_compatible, profile=config.profile, inputs=tuple(inputs),
        onnx_file=onnx_path.name, onnx_sha256=sha256_file(onnx_path), plan_file=plan_path.name,
        plan_sha256=hashlib.sha256(plan).hexdigest(), plan_bytes=len(plan),
        calibration_sha256=calibration_sha256(artifacts, config.precision), spec=spec,
        builder=config.record(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tolerances=tolerances_for(spec["family"], config.precision),
    )
