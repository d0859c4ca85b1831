"""A Triton Inference Server model repository for one model.

Layout written by ``write_model_repository`` (Triton's "model repository" documentation)::

    REPO/MODEL/config.pbtxt
    REPO/MODEL/1/model.onnx          platform onnxruntime_onnx
    REPO/MODEL/1/model.onnx/...      the same when the ONNX has external data (a folder)
    REPO/MODEL/1/model.plan          platform tensorrt_plan

``config.pbtxt`` is a ``ModelConfig`` message of Triton's own schema (``tritonclient``'s
``model_config_pb2``) written with protobuf ``text_format``: the schema, not string formatting,
decides what is valid. Inputs, outputs, dims and data types come from the ONNX graph the model
(or the plan) was built from; the batch sizes from the profile the artifact serves.
"""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchforge.deploy.artifacts import copy_checked, recorded_onnx_digests, verified_plan
from batchforge.errors import BackendUnavailableError, ConfigError, UsageError
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.spec import ProfileRange

VERSION = "1"  # the model version folder Triton serves

# ONNX TensorProto data type name -> Triton data type (without the TYPE_ prefix)
ONNX_TO_TRITON = {
    "FLOAT": "FP32", "FLOAT16": "FP16", "DOUBLE": "FP64", "BFLOAT16": "BF16", "BOOL": "BOOL",
    "STRING": "STRING", "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64",
    "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32", "UINT64": "UINT64",
}


class Platform(str, enum.Enum):
    """Triton's platform names; AUTO takes the TensorRT plan when one was built."""

    AUTO = "auto"
    ONNX = "onnxruntime_onnx"
    PLAN = "tensorrt_plan"


class InstanceKind(str, enum.Enum):
    AUTO = "auto"  # Triton's KIND_AUTO: a GPU when there is one
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class TritonOptions:
    """What ``batchforge deploy triton`` may set beyond what the artifact decides."""

    platform: Platform = Platform.AUTO
    max_queue_delay_us: int = 100
    instances: int = 1
    instance_kind: InstanceKind = InstanceKind.AUTO

    def __post_init__(self) -> None:
        if self.max_queue_delay_us < 0:
            raise UsageError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if self.instances < 1:
            raise UsageError(f"--instances must be >= 1, got {self.instances}")


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output: ``dims`` without the batch axis, -1 for a dynamic dim."""

    name: str
    onnx_type: str  # TensorProto data type name, e.g. "FLOAT"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class DeploySource:
    """The verified file Triton will serve and what describes it."""

    platform: Platform
    model_file: Path
    external_data: tuple[Path, ...]
    onnx_path: Path  # the graph whose inputs and outputs the config declares
    profile: ProfileRange
    sha256: Mapping[Path, str] = field(default_factory=dict)  # what each copied file must hash to


def import_model_config() -> Any:
    """``tritonclient.grpc.model_config_pb2``, or one line saying which extra installs it."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as exc:  # tritonclient without grpc raises RuntimeError
        raise BackendUnavailableError(
            f"`deploy triton` needs tritonclient[grpc] (Triton's config schema), which is not usable here: {exc}",
            hint="install it with `pip install 'batchforge[triton]'`") from None
    return model_config_pb2


def choose_source(artifacts: ModelArtifacts, precision: Precision, platform: Platform) -> DeploySource:
    """The artifact to serve after its integrity checks: the TensorRT plan (``tensorrt_plan``,
    or ``auto`` when one was built) or the precision's ONNX model and its external data."""
    digests = recorded_onnx_digests(artifacts, precision)
    onnx_path, *data = digests
    if platform is Platform.PLAN or (platform is Platform.AUTO and artifacts.plan_manifest(precision).is_file()):
        manifest = verified_plan(artifacts, precision)
        plan = artifacts.plan(precision)
        return DeploySource(Platform.PLAN, plan, (), onnx_path, manifest.profile, {plan: manifest.plan_sha256})
    return DeploySource(Platform.ONNX, onnx_path, tuple(data), onnx_path, artifacts.spec().profile, digests)


def graph_io(onnx_path: Path) -> tuple[list[TensorIO], list[TensorIO]]:
    """The graph's inputs (initializers excluded) and outputs, each with a dynamic batch axis.

    Raises:
        ConfigError naming a tensor that is not a tensor, has no batch axis, a fixed one, or a
        data type Triton has no name for.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    sides = (("input", [v for v in graph.input if v.name not in initializers]), ("output", list(graph.output)))
    found: tuple[list[TensorIO], list[TensorIO]] = ([], [])
    for (kind, values), out in zip(sides, found):
        for value in values:
            out.append(_tensor_io(onnx, onnx_path, kind, value))
    return found


def _tensor_io(onnx: Any, path: Path, kind: str, value: Any) -> TensorIO:
    where = f"{path.name}: {kind} {value.name!r}"
    if not value.type.HasField("tensor_type"):
        raise ConfigError(f"{where} is not a tensor; Triton's config declares tensors only")
    tensor = value.type.tensor_type
    dims = list(tensor.shape.dim)
    if not dims or dims[0].HasField("dim_value"):
        first = dims[0].dim_value if dims else "none (a scalar)"
        raise ConfigError(f"{where} needs a dynamic batch axis first for Triton's batching, got {first}",
                          hint="re-export the model: batchforge exports a symbolic 'batch' axis")
    type_name = onnx.TensorProto.DataType.Name(tensor.elem_type)
    if type_name not in ONNX_TO_TRITON:
        raise ConfigError(f"{where} has ONNX type {type_name}, which Triton has no data type for; "
                          f"expected one of {', '.join(ONNX_TO_TRITON)}")
    return TensorIO(value.name, type_name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]))


def preferred_batch_sizes(profile: ProfileRange) -> list[int]:
    """The profile's opt and max: the sizes the engine was tuned for and the largest it takes."""
    return sorted({profile.opt, profile.max})


def model_config(name: str, source: DeploySource, inputs: Sequence[TensorIO], outputs: Sequence[TensorIO],
                 options: TritonOptions) -> Any:
    """The ``ModelConfig`` message for one model.

    Args:
        name: the model name (the repository folder).
        source: the verified artifact (platform, profile).
        inputs, outputs: the graph's tensors (``graph_io``).
        options: queue delay and instances.
    """
    pb = import_model_config()
    kinds = {InstanceKind.AUTO: pb.ModelInstanceGroup.KIND_AUTO, InstanceKind.CPU: pb.ModelInstanceGroup.KIND_CPU,
             InstanceKind.GPU: pb.ModelInstanceGroup.KIND_GPU}
    kind = options.instance_kind
    if source.platform is Platform.PLAN:
        if kind is InstanceKind.CPU:
            raise UsageError("a TensorRT plan runs on a GPU only; --instance-kind cpu was given",
                             hint="use --instance-kind gpu, or --platform onnxruntime_onnx for CPU instances")
        kind = InstanceKind.GPU
    config = pb.ModelConfig(name=name, platform=source.platform.value, max_batch_size=source.profile.max)
    for tensor, add in [*((t, config.input.add) for t in inputs), *((t, config.output.add) for t in outputs)]:
        add(name=tensor.name, data_type=pb.DataType.Value("TYPE_" + ONNX_TO_TRITON[tensor.onnx_type]),
            dims=list(tensor.dims))
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(source.profile))
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    config.instance_group.add(count=options.instances, kind=kinds[kind])
    return config


def check_folder_name(name: str) -> str:
    """``name`` as one folder name (a model name never leaves the output folder)."""
    if not name or name in {".", ".."} or Path(name).name != name or "\\" in name:
        raise UsageError(f"model name {name!r} is not a plain folder name (expected letters, digits, '_', '-')")
    return name


def write_model_repository(repo: Path, name: str, source: DeploySource, config: Any) -> Path:
    """Writes ``repo/name`` (config.pbtxt and version 1) complete or not at all; an existing
    folder of that name is replaced only once the new one is complete. Returns it."""
    from google.protobuf import text_format

    repo.mkdir(parents=True, exist_ok=True)
    target = repo / check_folder_name(name)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (staging / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
        version = staging / VERSION
        version.mkdir()
        if source.platform is Platform.PLAN:
            copy_checked(source.model_file, version / "model.plan", source.sha256[source.model_file])
        elif source.external_data:  # Triton: "a directory named model.onnx" holding the graph and its data
            (version / "model.onnx").mkdir()
            for path in (source.model_file, *source.external_data):
                name_inside = "model.onnx" if path == source.model_file else path.name
                copy_checked(path, version / "model.onnx" / name_inside, source.sha256[path])
        else:
            copy_checked(source.model_file, version / "model.onnx", source.sha256[source.model_file])
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Renames ``staging`` onto ``target``; a previous ``target`` is moved aside first, then removed."""
    os.chmod(staging, 0o755)
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
