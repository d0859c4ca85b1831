"""``batchforge export``: one model -> model.fp32.onnx + export.json (+ reference weights).

Everything is written into a staging folder beside the model folder (``runtime.staging``: the
same file system, removed at the end and, after a SIGKILL, by the next export of the model) and
moved into place only when every check passed, so a failed export leaves no partial files behind.
A write that fails (a full disk) is one line naming the file and the errno.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import batchforge
from batchforge.errors import ExportError, storage_error
from batchforge.export import checks
from batchforge.export.onnx_export import ExportInfo, ExportOptions, FailureCategory, example_inputs, export_onnx
from batchforge.export.reference import TorchRunner, build_module
from batchforge.export.registry import ZooEntry, is_zoo_factory
from batchforge.export.torch_log import EXPORT_LOG, ExportLog
from batchforge.export.weights import load_weights, save_weights, state_dict_sha256
from batchforge.metrics import ParityRow, compare_arrays
from batchforge.runtime.artifacts import ModelArtifacts, Precision, file_record, sha256_file, write_json_atomic
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner
from batchforge.runtime.spec import ModelSpec, ProfileRange
from batchforge.runtime.staging import make_staging

EXPORT_SCHEMA_VERSION = 1
# FP32 ONNX vs PyTorch on the same CPU: measured max_rel <= 2e-6 and cosine >= 0.9999999 on the
# reid zoo; 1e-4 / 0.99999 leaves room for other kernels while still catching a wrong graph.
EXPORT_MAX_REL = 1e-4
EXPORT_MIN_COSINE = 0.99999

LIBRARIES = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "numpy",
             "opencv-python-headless", "safetensors")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an export (absent ones are left out)."""
    versions = {"batchforge": batchforge.__version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def export_model(entry: ZooEntry, output_dir: str | os.PathLike[str], *,
                 weights: str | os.PathLike[str] | None = None,
                 options: ExportOptions = ExportOptions(),
                 profile: ProfileRange | None = None) -> dict[str, Any]:
    """Exports one model and returns its export record (also written as export.json).

    Args:
        entry: zoo entry (or a user model wrapped as one).
        output_dir: the artifacts root; the model goes to ``<output_dir>/<name>/``.
        weights: safetensors or torch state dict; None = the zoo entry's shipped weights if it has
            any (MTCNN: facenet-pytorch's files), else the zoo's seeded calibrated init.
        options: exporter options.
        profile: batch profile override (default: the spec's).
    """
    spec = entry.spec if profile is None else replace(entry.spec, profile=profile)
    if weights is None and entry.weights is not None:  # trained zoo models: their shipped weights
        weights = entry.default_weights()
    artifacts = ModelArtifacts.at(output_dir, spec.name)
    artifacts.root.mkdir(parents=True, exist_ok=True)
    artifacts.check_writable_dir()
    module = build_module(entry.factory, initialise=weights is None)
    if weights is not None:
        load_weights(module, weights)
    module.eval()

    staging = make_staging(artifacts.root, spec.name, "export")
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    log = ExportLog(artifacts.dir / EXPORT_LOG, header=f"batchforge export of {spec.name!r} "
                    f"(factory {entry.factory}), started {started}: torch's own output and tracebacks")
    try:
        return _export_staged(module, spec, entry, artifacts, staging, weights, options, log)
    except ExportError:
        _keep_failure_log(log)
        raise
    except OSError as exc:  # a full disk, a quota: the file it was writing, not a traceback
        raise storage_error(exc, staging) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _keep_failure_log(log: ExportLog) -> None:
    """A failed export leaves no model files, only its log (complete, written atomically) in the
    model folder, where the error message points; a log that cannot be written is not the error
    the user needs to see, so the export's own error is raised either way."""
    if not log.sections:
        return
    try:
        log.path.parent.mkdir(parents=True, exist_ok=True)
        log.write()
    except OSError:
        pass


def _export_staged(module: torch.nn.Module, spec: ModelSpec, entry: ZooEntry, artifacts: ModelArtifacts,
                   staging: Path, weights: str | os.PathLike[str] | None, options: ExportOptions,
                   log: ExportLog) -> dict[str, Any]:
    """Writes everything into ``staging``, checks it, then moves it into the model folder."""
    onnx_path = staging / artifacts.onnx(Precision.FP32).name
    info = export_onnx(module, spec, onnx_path, options, log)
    checks.run_checker(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    checks.check_external_data(model, staging)
    # a shape constant equal to the trace batch is evidence, not a verdict: it names the cause
    # when the graph fails its batch checks, and is a warning when the numbers say it is a
    # model constant (torchvision swin_t: [2, 7, 2, 7] is two attention windows)
    findings = checks.lint_batch_specialisation(model, options.trace_batch)
    batches = verification_batches(spec.profile, options.trace_batch)
    try:
        checks.check_symbolic_batch(model)
        checks.check_symbolic_dims(model, spec)
        parity = _export_parity(module, spec, onnx_path, batches)
        checks.check_export_parity(parity, EXPORT_MAX_REL, EXPORT_MIN_COSINE)
    except ExportError as exc:
        if not findings:
            raise
        raise baked_batch_error(findings, exc, info, log, options.trace_batch) from None
    warnings = [f"{f}; kept as a model constant: ONNX matches PyTorch at batch "
                f"{', '.join(map(str, batches))} (export with another --trace-batch to confirm)"
                for f in findings]
    weights_sha = save_weights(module, staging / artifacts.reference_weights.name)
    record = {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "model": spec.name,
        "spec": spec.to_dict(),
        "factory": entry.factory,
        "onnx": file_record(onnx_path, staging),
        "exporter": {"name": info.exporter, "fallback_reason": info.fallback_reason,
                     "fallback_category": info.fallback_category,
                     "opset": options.opset, "trace_batch": options.trace_batch,
                     "external_data": info.external_data, "log": EXPORT_LOG},
        "io": _io_record(model),
        "weights": {**weights_source(entry, module, weights),
                    "file": artifacts.reference_weights.name, "sha256": weights_sha},
        "checks": {"onnx_checker": "passed (full_check)", "symbolic_batch": "passed",
                   "symbolic_dims": {d: [r.min, r.opt, r.max] for d, r in spec.dims.items()} or "none",
                   "batch_lint": "warned" if warnings else "passed",
                   "parity": [r.as_dict() for r in parity],
                   "parity_limits": {"max_rel": EXPORT_MAX_REL, "min_cosine": EXPORT_MIN_COSINE}},
        "warnings": warnings,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    log.write(staging / EXPORT_LOG)
    write_json_atomic(staging / artifacts.export_record_path.name, record)
    artifacts.dir.mkdir(parents=True, exist_ok=True)
    for stale in artifacts.dir.glob(artifacts.onnx(Precision.FP32).name + ".data*"):
        stale.unlink()
    for item in sorted(staging.iterdir(), key=lambda p: p.name == "export.json"):
        os.replace(item, artifacts.dir / item.name)  # export.json last: it vouches for the rest
    return record


def baked_batch_error(findings: list[checks.LintFinding], failed: ExportError, info: ExportInfo,
                      log: ExportLog, trace_batch: int) -> ExportError:
    """The batch-check failure ``failed`` of a graph with trace-batch constants (``findings``),
    named by the exporter that baked them. The TorchScript trace records every size it sees as a
    constant, so after a fallback the advice is to fix what torch.export refused (the module may
    well run at any batch in PyTorch); after torch.export itself, the module fixed the batch."""
    where = "; ".join(map(str, findings))
    if info.fallback_reason is None:
        return ExportError(f"batch size baked into the graph: {where} (so {failed.message})",
                           hint="use shape-derived sizes (x.shape[0] / -1) instead of constants in forward()")
    category = FailureCategory(info.fallback_category)
    if category is FailureCategory.SHAPE_CONSTRAINT:  # torch.export found the module fixes the batch
        advice = category.advice
    else:
        advice = (f"the TorchScript trace records a size that forward() reads as a Python number as a "
                  f"constant, even where the module runs at any batch in PyTorch; fix what torch.export "
                  f"refused so its exporter, which keeps the batch symbolic, is used: {category.advice}; "
                  f"another --trace-batch only moves the constant")
    return ExportError(
        f"batch size baked into the graph by the TorchScript trace at batch {trace_batch}, the "
        f"fallback taken because torch.export failed ({category.value}: {info.fallback_reason}): "
        f"{where} (so {failed.message}); torch's output: {log.path}",
        hint=advice)


def weights_source(entry: ZooEntry, module: torch.nn.Module,
                   weights: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Where the exported weights came from: the ``--weights`` file and its sha256; a zoo
    model's seeded init; or, for a user factory that loads its own weights, the factory and a
    hash of the state dict it returned (``weights.state_dict_sha256``)."""
    if weights:
        return {"source": str(weights), "source_sha256": sha256_file(weights)}
    if is_zoo_factory(entry.factory):
        return {"source": "seeded activation-calibrated init", "source_sha256": None}
    return {"source": f"factory {entry.factory}", "source_sha256": None,
            "state_dict_sha256": state_dict_sha256(module)}


def verification_batches(profile: ProfileRange, trace_batch: int) -> list[int]:
    """Where export checks ONNX against PyTorch: 1, opt, max and one odd size other than those
    and the trace batch (a batch baked in as a constant cannot match at all of them). The trace
    batch itself is left out: a graph always matches where it was traced."""
    sizes = {1, profile.opt, profile.max}
    odd = next((b for b in range(3, profile.max + 1, 2) if b not in sizes | {trace_batch}), None)
    return sorted(sizes | ({odd} if odd else set()))


def verification_sizes(spec: ModelSpec) -> list[dict[str, int]]:
    """Where export checks the named dims: every dim at its min, at its max, and at an odd size
    between (dims differing from each other, so a swapped height/width cannot pass). Empty for
    a spec without named dims."""
    if not spec.dims:
        return []
    ranges = list(spec.dims.items())
    odd = {d: min(r.max, max(r.min, (r.min + r.opt) // 2 | 1) + 2 * i) for i, (d, r) in enumerate(ranges)}
    return [{d: r.min for d, r in ranges}, odd, {d: r.max for d, r in ranges}]


def _sizes_text(sizes: dict[str, int] | None) -> str:
    return ", " + " ".join(f"{d}={v}" for d, v in sizes.items()) if sizes else ""


def _export_parity(module: torch.nn.Module, spec, onnx_path: Path, batches: list[int]) -> list[ParityRow]:
    rows = []
    reference = TorchRunner(module, spec)
    engine = OnnxRuntimeRunner(onnx_path, name=f"{spec.name}:export-check")
    cases = [(b, None) for b in batches] + [(2, sizes) for sizes in verification_sizes(spec)]
    with reference, engine:
        for batch, sizes in cases:
            inputs = example_inputs(spec, batch, seed=batch, sizes=sizes)
            feed = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)}
            ref_out = reference.infer(feed)
            try:
                got = engine.infer(feed)
            except Exception as exc:  # onnxruntime's own errors: a shape the graph cannot take
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"ONNX Runtime cannot run the exported graph at batch {batch}"
                                  f"{_sizes_text(sizes)}: {first[:300]}") from None
            for name in spec.outputs:
                if got[name].shape != ref_out[name].shape:
                    raise ExportError(
                        f"output {name!r} at batch {batch}{_sizes_text(sizes)}: ONNX shape "
                        f"{got[name].shape}, PyTorch {ref_out[name].shape}"
                    )
                label = f"{name}@{_sizes_text(sizes).strip(' ,')}" if sizes else name
                rows.append(ParityRow(batch, label, *compare_arrays(ref_out[name], got[name])))
    return rows


def _io_record(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        return {
            "name": value.name,
            "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
            "dtype": str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))),
        }

    return {"inputs": [describe(v) for v in model.graph.input],
            "outputs": [describe(v) for v in model.graph.output]}
