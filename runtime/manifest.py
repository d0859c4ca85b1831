"""Engine manifests: what an engine was built from and for, checked before it is loaded.

A TensorRT plan is only valid for the GPU model and TensorRT version it was built with
(unless built hardware or version compatible), and a plan file that was truncated or
altered must never reach ``deserialize_cuda_engine``. ``engine.P.json`` records everything
needed to refuse such a plan with an actionable message; ``check_before_load`` does the
refusing, each mismatch with its own error. ``engine.P.ort.json`` does the same job for the
ONNX Runtime build artifact (an offline-optimised model), see ``select_ort_engine``.

Plain Python only (no numpy, no tensorrt): the checks run before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchforge.errors import ArtifactError, ConfigError, EngineCompatibilityError, IntegrityError
from batchforge.runtime.artifacts import ModelArtifacts, Precision, read_json, sha256_file, write_json_atomic
from batchforge.runtime.json_input import type_problems
from batchforge.runtime.spec import ProfileRange

MANIFEST_SCHEMA = 1
HARDWARE_LEVELS = ("none", "ampere_plus", "same_compute_capability")
AMPERE_MAJOR = 8  # ampere_plus engines run on compute capability 8.0 and newer
# Which runtime majors may load a version-compatible plan built with a given major. TensorRT
# 11.4.1 Support Matrix, "Engine Portability": "Two combinations are supported across major
# versions: TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime, and
# TensorRT 8 version-compatible engines can run with a TensorRT 10 runtime. No other combination".
# Any other major (9, 11, 12, ...) loads only on its own major.
VERSION_COMPATIBLE_MAJORS = {8: (8, 10), 10: (10, 11)}


@dataclass(frozen=True)
class InputProfile:
    """The min/opt/max shape of one engine input (TensorRT optimisation profile)."""

    name: str
    dtype: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class EngineManifest:
    """The sidecar ``engine.P.json`` of a TensorRT plan (SPEC §4 fields)."""

    model: str
    precision: str
    tensorrt_version: str
    cuda_runtime_version: str  # cuda-bindings' (static) CUDA runtime, not TensorRT's
    cuda_driver_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"
    hardware_compatibility: str  # one of HARDWARE_LEVELS
    version_compatible: bool
    profile: ProfileRange
    inputs: tuple[InputProfile, ...]
    onnx_file: str
    onnx_sha256: str
    plan_file: str
    plan_sha256: str
    plan_bytes: int
    calibration_sha256: str | None
    spec: Mapping[str, Any]  # the model spec: pre/post-processing parameters
    builder: Mapping[str, Any]  # builder options as given (workspace, level, timing cache)
    created: str  # ISO 8601 UTC
    tolerances: Mapping[str, Any] | None = None
    tensorrt_cuda: str = "unknown"  # CUDA major of the TensorRT wheel (tensorrt-cu12 -> "12")
    backend: str = "tensorrt"
    schema_version: int = MANIFEST_SCHEMA

    def __post_init__(self) -> None:
        if self.hardware_compatibility not in HARDWARE_LEVELS:
            raise ConfigError(f"engine manifest for {self.model!r}: hardware_compatibility must be one "
                              f"of {HARDWARE_LEVELS}, got {self.hardware_compatibility!r}")
        if self.precision not in {p.value for p in Precision}:
            raise ConfigError(f"engine manifest for {self.model!r}: unknown precision {self.precision!r}")

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def rebuild_hint(self) -> str:
        return (f"rebuild with `batchforge build {self.model} --precision {self.precision} "
                "--backend tensorrt` on this machine")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["profile"] = dataclasses.asdict(self.profile)
        data["inputs"] = [{**dataclasses.asdict(i), "min": list(i.min), "opt": list(i.opt),
                           "max": list(i.max)} for i in self.inputs]
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "engine manifest") -> EngineManifest:
        """Parses a dict written by ``to_dict``; unknown or missing keys raise ConfigError."""
        _check_keys(where, data, cls)
        if data.get("schema_version", MANIFEST_SCHEMA) != MANIFEST_SCHEMA:
            raise ConfigError(f"{where}: schema_version {data['schema_version']!r} is not supported "
                              f"(expected {MANIFEST_SCHEMA})")
        try:
            inputs = []
            for item in data["inputs"]:
                _check_keys(f"{where} input", item, InputProfile)
                inputs.append(InputProfile(item["name"], item["dtype"], tuple(item["min"]),
                                           tuple(item["opt"]), tuple(item["max"])))
            _check_keys(f"{where} profile", data["profile"], ProfileRange)
            return cls(**{**data, "profile": ProfileRange(**data["profile"]), "inputs": tuple(inputs)})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {where}", problems=[str(exc)]) from None


@dataclass(frozen=True)
class OrtEngineManifest:
    """The sidecar ``engine.P.ort.json`` of an offline-optimised ONNX Runtime model."""

    model: str
    precision: str
    onnxruntime_version: str
    providers: tuple[str, ...]
    provider_options: tuple[Mapping[str, Any], ...]
    graph_optimization: str
    source_file: str
    source_sha256: str
    engine_file: str
    engine_sha256: str
    calibration_sha256: str | None
    spec: Mapping[str, Any]
    created: str
    backend: str = "onnxruntime"
    # INT8 on the CPU: the optimised graph's fused int8 / FP32 conv-matmul / Q/DQ node counts
    fusion: Mapping[str, Any] | None = None
    # fp16/int8: throughput over fp32 measured at build time ({"ratio", "batch", "runs"})
    speed_vs_fp32: Mapping[str, Any] | None = None
    schema_version: int = MANIFEST_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["providers"] = list(self.providers)
        data["provider_options"] = [dict(o) for o in self.provider_options]
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "ORT engine manifest") -> OrtEngineManifest:
        _check_keys(where, data, cls)
        try:
            return cls(**{**data, "providers": tuple(data["providers"]),
                          "provider_options": tuple(dict(o) for o in data["provider_options"])})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {where}", problems=[str(exc)]) from None


@dataclass(frozen=True)
class EngineEnvironment:
    """What the loading machine offers: TensorRT version and the GPU's compute capability."""

    tensorrt_version: str
    compute_capability: str
    gpu_name: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")


def _check_keys(what: str, data: Any, cls: type) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    problems = [f"unknown key {k!r}" for k in sorted(set(data) - set(fields))]
    problems += [f"missing key {k!r}" for k in sorted(required - set(data))]
    problems += type_problems("", data, cls)  # a wrong-typed field: named here, not a TypeError later
    if problems:
        raise ConfigError(f"invalid {what}", problems=problems,
                          hint="the manifest was not written by this batchforge; rebuild the engine")


def write_manifest(path: str | os.PathLike[str], manifest: EngineManifest | OrtEngineManifest) -> None:
    """Writes a manifest atomically (complete or absent)."""
    write_json_atomic(path, manifest.to_dict())


def read_manifest(path: str | os.PathLike[str], *, hint: str | None = None) -> EngineManifest:
    """Reads ``engine.P.json``; missing -> ArtifactError, malformed or unknown keys -> ConfigError."""
    data = read_json(path, what="engine manifest", hint=hint)
    return EngineManifest.from_dict(data, where=f"engine manifest {path}")


def read_ort_manifest(path: str | os.PathLike[str]) -> OrtEngineManifest:
    data = read_json(path, what="ONNX Runtime engine manifest")
    return OrtEngineManifest.from_dict(data, where=f"ONNX Runtime engine manifest {path}")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; the first non-numeric part ends the tuple."""
    parts = []
    for part in str(version).split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def check_before_load(
    manifest: EngineManifest,
    plan_path: str | os.PathLike[str],
    environment: EngineEnvironment,
    *,
    onnx_path: str | os.PathLike[str] | None = None,
) -> bytes:
    """Every check that must pass before a plan is deserialised; returns the verified bytes.

    Checks, each with its own error: plan size and sha256 (a truncated or altered plan never
    reaches TensorRT), the source ONNX's sha256 (when ``onnx_path`` is given: a deployment may
    ship the plan alone), the TensorRT version and the GPU against the plan's compatibility
    level (``check_compatibility``).

    Args:
        manifest: the plan's manifest.
        plan_path: the plan file.
        environment: TensorRT version and compute capability of this machine.
        onnx_path: the ONNX file the plan was built from, if present.
    Returns:
        The plan's bytes: deserialise exactly these (no second read between check and load).
    Raises:
        IntegrityError for hash/size mismatches, EngineCompatibilityError for version, GPU or
        compatibility-level mismatches (both exit 2).
    """
    plan_path = Path(plan_path)
    hint = manifest.rebuild_hint()
    plan = verified_plan_bytes(manifest, plan_path)
    if onnx_path is not None and Path(onnx_path).is_file():
        actual = sha256_file(onnx_path)
        if actual != manifest.onnx_sha256:
            raise IntegrityError(
                f"{plan_path.name} was built from a {manifest.onnx_file} with sha256 "
                f"{manifest.onnx_sha256[:12]}, but {Path(onnx_path).name} is now {actual[:12]}: the "
                "plan is stale", hint=hint)
    check_compatibility(manifest, environment)
    return plan


def verified_plan_bytes(manifest: EngineManifest, plan_path: str | os.PathLike[str]) -> bytes:
    """The plan's bytes once its size and sha256 match the manifest (no compatibility check:
    a plan deployed elsewhere, e.g. to Triton, is checked here only for integrity)."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ArtifactError(f"TensorRT plan not found: {plan_path}", hint=manifest.rebuild_hint())
    plan = plan_path.read_bytes()
    _check_plan_bytes(manifest, plan_path, plan, manifest.rebuild_hint())
    return plan


def _check_plan_bytes(manifest: EngineManifest, plan_path: Path, plan: bytes, hint: str) -> None:
    if len(plan) != manifest.plan_bytes:
        raise IntegrityError(
            f"{plan_path} is {len(plan)} bytes, its manifest records {manifest.plan_bytes}: the plan "
            "is truncated or was replaced; refusing to deserialise it", hint=hint)
    actual = hashlib.sha256(plan).hexdigest()
    if actual != manifest.plan_sha256:
        raise IntegrityError(
            f"{plan_path} does not match its manifest: sha256 expected {manifest.plan_sha256[:16]}..., "
            f"got {actual[:16]}... (corrupted or modified); refusing to deserialise it", hint=hint)


def check_compatibility(manifest: EngineManifest, env: EngineEnvironment) -> None:
    """The TensorRT version and hardware compatibility checks (no file I/O).

    Each rule mirrors what TensorRT promises, no more:
    - a plan without version compatibility loads only on the exact TensorRT it was built with;
      a version-compatible plan on the same or a later release (major.minor.patch), within the
      major transitions in ``VERSION_COMPATIBLE_MAJORS``;
    - level ``none`` promises only the GPU model the plan was built on: another model with the
      same compute capability is refused (TensorRT itself only warns and may then fail or be
      slow); ``same_compute_capability`` promises any GPU of that compute capability;
      ``ampere_plus`` any GPU of compute capability 8.0 or newer.

    Raises:
        EngineCompatibilityError, one line: what the plan needs, what this machine has, and the
        rebuild command.
    """
    hint = manifest.rebuild_hint()
    built_v, here_v = _versions(manifest.tensorrt_version, env.tensorrt_version)
    context = (f"built for {manifest.sm} with TensorRT {built_v}, this is {env.sm} with "
               f"{here_v}")
    if manifest.version_compatible:
        _check_version_compatible(manifest, env, context, hint)
    elif version_tuple(env.tensorrt_version) != version_tuple(manifest.tensorrt_version):
        raise EngineCompatibilityError(
            f"TensorRT version mismatch for {manifest.plan_file}: {context}; plans only load on the "
            "exact TensorRT they were built with unless built with --version-compatible", hint=hint)
    _check_hardware(manifest, env, context, hint)


def _check_version_compatible(manifest: EngineManifest, env: EngineEnvironment, context: str,
                              hint: str) -> None:
    built, here = version_tuple(manifest.tensorrt_version)[:3], version_tuple(env.tensorrt_version)[:3]
    built_text = ".".join(map(str, built))
    majors = VERSION_COMPATIBLE_MAJORS.get(built[0], (built[0],)) if built else ()
    if not here or here[0] not in majors:
        allowed = " or ".join(f"{m}.x" for m in majors) or "the same TensorRT"
        raise EngineCompatibilityError(
            f"version-compatible engine {manifest.plan_file} built with TensorRT {built_text} runs only "
            f"on TensorRT {allowed} (>= {built_text}), this is {env.tensorrt_version}: {context}",
            hint=hint + " (TensorRT supports no other major-version transition)")
    if here < built:
        raise EngineCompatibilityError(
            f"version-compatible engine {manifest.plan_file} needs TensorRT >= {built_text} (the same "
            f"or a later release), this is {env.tensorrt_version}: {context}",
            hint=hint + f" (or upgrade TensorRT to {built_text} or later)")


def _check_hardware(manifest: EngineManifest, env: EngineEnvironment, context: str, hint: str) -> None:
    level = manifest.hardware_compatibility
    if level == "ampere_plus":
        major = version_tuple(env.compute_capability)[:1] or (0,)
        if major[0] < AMPERE_MAJOR:
            raise EngineCompatibilityError(
                f"compatibility level ampere_plus of {manifest.plan_file} needs an Ampere or newer "
                f"GPU (sm_80+): {context}", hint=hint)
        return
    if env.compute_capability != manifest.compute_capability:
        raise EngineCompatibilityError(
            f"GPU compute capability mismatch for {manifest.plan_file} (compatibility level {level}): "
            f"{context}", hint=hint + " (or build with --hardware-compat ampere_plus to share plans "
            "across Ampere+ GPUs)")
    if level == "none":
        built_gpu, here_gpu = _gpu_model(manifest.gpu_name), _gpu_model(env.gpu_name)
        if built_gpu is None or built_gpu != here_gpu:
            raise EngineCompatibilityError(
                f"compatibility level none of {manifest.plan_file} holds only on the GPU model it was "
                f"built on: built on {built_gpu or 'an unrecorded GPU'}, this is "
                f"{here_gpu or 'an unnamed GPU'} (both {env.sm})",
                hint=hint + " (or build with --hardware-compat same_compute_capability to share the "
                f"plan across {manifest.sm} GPU models)")


def _gpu_model(name: str) -> str | None:
    """The GPU model as cudaGetDeviceProperties names it; None when it was not recorded."""
    name = (name or "").strip()
    return None if name in {"", "unknown"} else name


def _versions(built: str, here: str) -> tuple[str, str]:
    """Short versions for messages: major.minor unless only the patch/build differs."""
    b, h = version_tuple(built), version_tuple(here)
    if b[:2] != h[:2]:
        return ".".join(map(str, b[:2])), ".".join(map(str, h[:2]))
    return built, here


def offline_level(online: str) -> str:
    """The graph optimisation level an ORT artifact is saved at for a given online level.

    ONNX Runtime documents that the layout optimisations of level "all" make a saved model
    specific to the hardware it was saved on; they are left to the online session instead.
    """
    return "extended" if online == "all" else online


def select_ort_engine(
    artifacts: ModelArtifacts,
    precision: Precision | str,
    *,
    source_path: Path,
    providers: tuple[str, ...],
    onnxruntime_version: str,
    graph_optimization: str,
) -> Path | None:
    """The built ONNX Runtime engine for this precision, or None to use the plain ONNX.

    A built artifact is used only when it was made by this onnxruntime version for the same
    provider chain and graph optimisation level (an offline-optimised model can hold provider-
    or level-specific fused nodes); other artifacts are skipped. One that fits but whose hashes
    do not match is refused.

    Args:
        artifacts: the model folder.
        precision: the precision being loaded.
        source_path: the verified plain ONNX (the artifact must have been built from it).
        providers: the provider chain the runner will use.
        onnxruntime_version: ``onnxruntime.__version__`` here.
        graph_optimization: the offline level that fits the runner (``offline_level``).
    Returns:
        The verified ``engine.P.ort.onnx`` path, or None.
    Raises:
        IntegrityError when the artifact or its source changed after the build.
    """
    precision = Precision(precision)
    manifest_path = artifacts.ort_manifest(precision)
    engine_path = artifacts.ort_engine(precision)
    if not manifest_path.is_file():
        return None
    manifest = read_ort_manifest(manifest_path)
    hint = (f"rebuild with `batchforge build {artifacts.model} --precision {precision.value} "
            "--backend onnxruntime` (or delete " + manifest_path.name + ")")
    built_for = {"onnxruntime": manifest.onnxruntime_version, "providers": list(manifest.providers),
                 "graph optimisation": manifest.graph_optimization, "precision": manifest.precision,
                 "source": manifest.source_file}
    here = {"onnxruntime": onnxruntime_version, "providers": list(providers),
            "graph optimisation": graph_optimization, "precision": precision.value, "source": source_path.name}
    differ = [f"{k} {built_for[k]} (here {here[k]})" for k in built_for if built_for[k] != here[k]]
    if differ:  # said, not silent: the user built it to be used
        print(f"note: {engine_path.name} not used: it was built for {'; '.join(differ)}; running "
              f"{source_path.name} instead ({hint})", file=sys.stderr)
        return None
    if not engine_path.is_file():
        raise ArtifactError(f"{manifest_path} names {engine_path.name}, which is missing", hint=hint)
    source = sha256_file(source_path)
    if source != manifest.source_sha256:
        raise IntegrityError(
            f"{engine_path.name} was built from a {source_path.name} with sha256 "
            f"{manifest.source_sha256[:12]}, which is now {source[:12]}: the artifact is stale", hint=hint)
    actual = sha256_file(engine_path)
    if actual != manifest.engine_sha256:
        raise IntegrityError(
            f"{engine_path} does not match its manifest: sha256 expected {manifest.engine_sha256[:16]}..., "
            f"got {actual[:16]}...", hint=hint)
    return engine_path
