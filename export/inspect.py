"""``batchforge inspect``: what an ONNX file, an engine manifest or a model folder holds."""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

import onnx

from batchforge.errors import ArtifactError, BatchforgeError
from batchforge.export import checks
from batchforge.onnx_external import checked_external_files, external_refs
from batchforge.runtime.artifacts import SIDECAR_NAMES, ModelArtifacts, Precision, read_json


def describe_onnx(path: Path, trace_batch: int = 2) -> dict[str, Any]:
    """I/O with dynamic dims, opsets, op counts, external data and lint findings.

    The file is first read by batchforge's bounded wire reader (``external_refs``): one that is
    over 2 GiB or not protobuf at all is refused there, in seconds, before onnx parses it.
    """
    external_refs(path)  # ArtifactError: not an ONNX model, refused before onnx.load
    try:
        external = checked_external_files(path)
        external_error = None
    except ArtifactError as exc:
        external, external_error = None, exc.message
    try:
        # external data is read (relative to the model's folder) only after its locations passed
        model = onnx.load(str(path), load_external_data=external is not None)
    except Exception as exc:  # protobuf raises several types for a non-ONNX file
        raise ArtifactError(f"{path} is not a readable ONNX model: {exc}") from None

    def io(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
                        "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
                        "dynamic_dims": [i for i, d in enumerate(t.shape.dim) if d.dim_param or not d.dim_value]})
        return out

    info: dict[str, Any] = {
        "path": str(path),
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": io(model.graph.input), "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "ops": dict(collections.Counter(n.op_type for n in model.graph.node).most_common(12)),
    }
    if external_error is None:
        info["external_data"] = external
    else:
        info["external_data_error"] = external_error
    try:
        checks.check_symbolic_batch(model)
        info["symbolic_batch"] = "ok"
    except BatchforgeError as exc:
        info["symbolic_batch"] = exc.message
    info["batch_lint"] = [str(f) for f in checks.lint_batch_specialisation(model, trace_batch)]
    return info


def describe_folder(folder: Path) -> dict[str, Any]:
    """Each artifact of a model folder with its integrity status."""
    artifacts = ModelArtifacts(folder.parent, folder.name)
    status: dict[str, Any] = {"model": folder.name, "artifacts": {}}
    for precision in Precision:
        if not artifacts.sidecar(precision).is_file() and not artifacts.onnx(precision).is_file():
            continue
        try:
            artifacts.verified_onnx(precision)
            status["artifacts"][precision.value] = "ok (sha256 matches its record)"
        except BatchforgeError as exc:
            status["artifacts"][precision.value] = f"REFUSED: {exc.message}"
    for manifest in sorted(folder.glob("engine.*.json")):
        status["artifacts"][manifest.name] = read_json(manifest, what="engine manifest")
    if artifacts.export_record_path.is_file():
        record = artifacts.export_record()
        status["export"] = {k: record.get(k) for k in ("exporter", "versions", "created")}
    return status


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        info = describe_folder(path)
        onnx_path = path / "model.fp32.onnx"
        if onnx_path.is_file():
            try:
                info["fp32_onnx"] = describe_onnx(onnx_path, _trace_batch(path))
            except ArtifactError as exc:  # the folder report already says REFUSED
                info["fp32_onnx"] = f"unreadable: {exc.message}"
    elif path.suffix == ".onnx":
        info = describe_onnx(path, _trace_batch(path.parent))
    elif path.suffix in (".json", ".plan"):
        manifest = path if path.suffix == ".json" else path.with_suffix(".json")
        info = read_json(manifest, what="engine manifest")
    elif not path.exists():
        raise ArtifactError(f"{path} does not exist")
    else:
        raise ArtifactError(f"cannot inspect {path}: expected an .onnx file, an engine .plan/.json or a "
                            "model folder")
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print(info)
    return 0


def _trace_batch(folder: Path) -> int:
    record_path = folder / SIDECAR_NAMES[Precision.FP32]
    if record_path.is_file():
        return int(json.loads(record_path.read_text()).get("exporter", {}).get("trace_batch", 2))
    return 2


def _print(info: dict[str, Any], indent: str = "") -> None:
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print(value, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{indent}{key}:")
            for item in value:
                print(f"{indent}  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        else:
            print(f"{indent}{key}: {value}")
