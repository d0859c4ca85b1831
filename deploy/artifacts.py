"""The verified files of a model's artifacts that a deployment ships (shared by Triton and bundles)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from batchforge.errors import ArtifactError, IntegrityError
from batchforge.runtime.artifacts import ModelArtifacts, Precision, read_json, sha256_file
from batchforge.runtime.loading import ensemble_spec
from batchforge.runtime.manifest import EngineManifest, read_manifest, read_ort_manifest, verified_plan_bytes


def model_names(output_dir: str | Path, model: str) -> list[str]:
    """The model folders ``model`` stands for (an ensemble's members), each checked to exist."""
    ensemble = ensemble_spec(output_dir, model)
    names = list(ensemble.member_names) if ensemble else [model]
    for name in names:
        if not ModelArtifacts.at(output_dir, name).dir.is_dir():
            raise ArtifactError(f"no artifacts for model {name!r} under {Path(output_dir).resolve()}",
                                hint=f"create them with `batchforge export {name}` (see `batchforge models`)")
    return names


def verified_onnx_files(artifacts: ModelArtifacts, precision: Precision) -> list[Path]:
    """The precision's ONNX and its external data files, after ``verified_onnx``'s checks."""
    return list(recorded_onnx_digests(artifacts, precision))


def recorded_onnx_digests(artifacts: ModelArtifacts, precision: Precision) -> dict[Path, str]:
    """{path: recorded sha256} of the precision's ONNX and its external data, after ``verified_onnx``'s
    checks: what a copy of them must hash to (``copy_checked``)."""
    onnx_path = artifacts.verified_onnx(precision)
    record = read_json(artifacts.sidecar(precision), what=f"{precision.value} record")["onnx"]
    data = record.get("external_data") or {}
    return {onnx_path: record["sha256"], **{artifacts.dir / name: data[name] for name in sorted(data)}}


def copy_checked(source: Path, target: Path, sha256: str) -> None:
    """Copies ``source`` to a new ``target`` through its hash: the copy must be the verified bytes
    (issue #29: a file replaced between its check and the copy was shipped). Raises IntegrityError
    and removes the copy when it is not."""
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
        while block := src.read(1 << 20):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != sha256:
        target.unlink()
        raise IntegrityError(f"{source} changed after it was verified (sha256 {digest.hexdigest()[:12]}..., "
                             f"recorded {sha256[:12]}...); nothing was written",
                             hint="something is replacing the artifacts: stop it, then run the command again")


def verified_plan(artifacts: ModelArtifacts, precision: Precision) -> EngineManifest:
    """The TensorRT plan's manifest once the plan's size and sha256 match it and it was built from
    the current ONNX (no GPU/version check: the plan is shipped elsewhere)."""
    hint = (f"build it with `batchforge build {artifacts.model} --precision {precision.value} "
            "--backend tensorrt` with the TensorRT of the machine that will load it")
    manifest_path = artifacts.plan_manifest(precision)
    manifest = read_manifest(manifest_path, hint=hint)
    if (manifest.model, manifest.precision) != (artifacts.model, precision.value):
        raise IntegrityError(f"{manifest_path} describes {manifest.model!r} at {manifest.precision}, "
                             f"expected {artifacts.model!r} at {precision.value}", hint=hint)
    verified_plan_bytes(manifest, artifacts.plan(precision))
    source = read_json(artifacts.sidecar(precision), what=f"{precision.value} record")["onnx"]["sha256"]
    if source != manifest.onnx_sha256:
        raise IntegrityError(f"{artifacts.plan(precision).name} was built from an ONNX with sha256 "
                             f"{manifest.onnx_sha256[:12]}, the current {artifacts.onnx(precision).name} is "
                             f"{source[:12]}: the plan is stale", hint=hint)
    return manifest


def verified_ort_engine(artifacts: ModelArtifacts, precision: Precision) -> list[Path]:
    """``engine.P.ort.onnx`` and its manifest when `build --backend onnxruntime` made them (checked
    against the manifest and the current ONNX), else nothing."""
    manifest_path = artifacts.ort_manifest(precision)
    if not manifest_path.is_file():
        return []
    manifest = read_ort_manifest(manifest_path)
    engine = artifacts.ort_engine(precision)
    hint = f"rebuild with `batchforge build {artifacts.model} --precision {precision.value} --backend onnxruntime`"
    if not engine.is_file() or sha256_file(engine) != manifest.engine_sha256:
        raise IntegrityError(f"{engine} is missing or does not match {manifest_path.name}", hint=hint)
    if sha256_file(artifacts.onnx(precision)) != manifest.source_sha256:
        raise IntegrityError(f"{engine.name} was built from another {artifacts.onnx(precision).name}: it is stale",
                             hint=hint)
    return [manifest_path, engine]
