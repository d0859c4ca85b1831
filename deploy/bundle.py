"""``batchforge bundle``: a self-contained deployment bundle of verified artifacts (layout and read
side: ``batchforge.runtime.bundle``).

Every member's files are checked as the runtime checks them before they are copied; the bundle is
built in a hidden folder beside ``--out``, its SHA256SUMS verified like a reader would, then
renamed into place (a folder) or packed into a temp file renamed onto ``--out`` (a .tar.gz): the
output is complete or absent. bundle.json records every other file's size, and a tarball starts
with SHA256SUMS and bundle.json, so a reader refuses an unlisted or oversized member at its header.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchforge import __version__
from batchforge.deploy.artifacts import model_names, verified_onnx_files, verified_ort_engine, verified_plan
from batchforge.engines.records import tolerances_for
from batchforge.errors import BatchforgeError, IntegrityError, UsageError
from batchforge.runtime import environment
from batchforge.runtime.artifacts import ModelArtifacts, Precision, atomic_path, read_json, sha256_file
from batchforge.runtime.bundle import (
    ARTIFACTS_DIR,
    BUNDLE_FILE,
    BUNDLE_SCHEMA,
    INFER_CONFIG_FILE,
    SUMS_FILE,
    present_files,
    verify_files,
)
from batchforge.runtime.infer_config import load_infer_config
from batchforge.runtime.loading import ENSEMBLE_FILE, ensemble_spec
from batchforge.runtime.staging import make_staging
from batchforge.tolerances import known_failure

TAR_SUFFIXES = (".tar.gz", ".tgz")


@dataclass(frozen=True)
class BundleRequest:
    """What ``batchforge bundle`` was asked for."""

    model: str
    precision: Precision
    output_dir: Path
    out: Path
    infer_config: Path | None = None
    parity_report: Path | None = None

    @property
    def as_tar(self) -> bool:
        return self.out.name.endswith(TAR_SUFFIXES)


def member_files(artifacts: ModelArtifacts, precision: Precision) -> tuple[list[Path], str]:
    """The verified files one member ships at ``precision`` and the engine it carries."""
    files = [artifacts.export_record_path]
    if precision is not Precision.FP32:
        files.append(artifacts.sidecar(precision))  # the convert / calibration record
    files += verified_onnx_files(artifacts, precision)
    cpu = artifacts.verified_cpu_int8() if precision is Precision.INT8 else None
    if cpu is not None:  # what the CPU backend runs (the TensorRT Q/DQ model is for TensorRT)
        files.append(cpu[0])
    engine = "onnx"
    if artifacts.plan_manifest(precision).is_file():
        verified_plan(artifacts, precision)
        files += [artifacts.plan_manifest(precision), artifacts.plan(precision)]
        engine = "tensorrt"
    built = verified_ort_engine(artifacts, precision)
    if built:
        files += built
        engine = "tensorrt+onnxruntime" if engine == "tensorrt" else "onnxruntime"
    return files, engine


def passed_parity(path: Path, names: list[str], precision: Precision) -> dict[str, Any]:
    """The parity report's runs of ``names`` at ``precision``; each must have PASSED."""
    report = read_json(path, what="parity report", hint="write one with `batchforge parity ... --report FILE`")
    runs = {r.get("model"): r for r in report.get("reports", [])
            if isinstance(r, dict) and r.get("precision") == precision.value}
    missing = [n for n in names if n not in runs]
    if missing:
        raise UsageError(f"parity report {path} has no {precision.value} run of {', '.join(missing)}",
                         hint=f"run `batchforge parity {names[-1]} --precision {precision.value} --report FILE`")
    # a run that passed is written with status "passed" (ModelReport.status); "PASSED" is the verdict
    failed = [f"{n} ({runs[n].get('status')})" for n in names if runs[n].get("status") != "passed"]
    if failed:
        raise UsageError(f"parity report {path} shows {', '.join(failed)} at {precision.value}, expected passed",
                         hint="a bundle carries only what passed the gate; fix the model or leave --parity-report out")
    return {"source": str(path), "source_sha256": sha256_file(path), "verdict": "PASSED",
            "backend": report.get("backend"), "versions": report.get("versions"),
            "reports": [runs[n] for n in names]}


def _collect(request: BundleRequest) -> tuple[dict[str, Path], dict[str, Any]]:
    """Bundle path -> verified source file, and the JSON documents to write beside them."""
    ensemble = ensemble_spec(request.output_dir, request.model)
    members = model_names(request.output_dir, request.model)
    files: dict[str, Path] = {}
    engines, tolerances = {}, {}
    for name in members:
        artifacts = ModelArtifacts.at(request.output_dir, name)
        paths, engines[name] = member_files(artifacts, request.precision)
        files.update({f"{ARTIFACTS_DIR}/{name}/{p.name}": p for p in paths})
        family = artifacts.spec().family
        tolerances[name] = {"family": family, "limits": tolerances_for(family, request.precision),
                            "known_failure": known_failure(name, request.precision)}
    if ensemble is not None:
        files[f"{ARTIFACTS_DIR}/{request.model}/{ENSEMBLE_FILE}"] = request.output_dir / request.model / ENSEMBLE_FILE
    family = ensemble.family if ensemble else tolerances[members[0]]["family"]
    if request.infer_config is not None:
        if family != "anomaly":
            raise UsageError(f"--infer-config applies to anomaly models; {request.model!r} is a {family} model")
        load_infer_config(request.infer_config).check_model(request.model)
        files[INFER_CONFIG_FILE] = request.infer_config
    documents: dict[str, Any] = {
        "environment.json": environment.capture(),
        "tolerances.json": {"precision": request.precision.value, "members": tolerances},
    }
    if request.parity_report is not None:
        names = [*members, request.model] if ensemble else members
        documents["parity.json"] = passed_parity(request.parity_report, names, request.precision)
    documents[BUNDLE_FILE] = {
        "schema_version": BUNDLE_SCHEMA, "model": request.model, "precision": request.precision.value,
        "family": family, "members": members, "ensemble": ensemble is not None, "engines": engines,
        "infer_config": request.infer_config is not None, "parity_report": "parity.json" in documents,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batchforge_version": __version__,
    }
    return files, documents


def write_bundle(request: BundleRequest) -> tuple[Path, int, int]:
    """Writes the bundle; returns (path, file count, bytes)."""
    if request.out.exists() and not request.as_tar and (not request.out.is_dir() or any(request.out.iterdir())):
        raise UsageError(f"--out {request.out} already exists; expected a new folder (or a .tar.gz file)",
                         hint="remove it or choose another path")
    files, documents = _collect(request)  # every check before anything is written
    request.out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging(request.out.parent, request.out.name, "bundle")  # a SIGKILLed one's goes next time
    try:
        for rel, source in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / rel)
        record = documents.pop(BUNDLE_FILE)
        _check_copies(staging, record["members"], request)
        for rel, document in documents.items():
            (staging / rel).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        # every other file's size, so a reader refuses an oversized member before writing it
        record["sizes"] = {n: (staging / n).stat().st_size for n in sorted(present_files(staging)[0])}
        (staging / BUNDLE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        names = sorted(present_files(staging)[0])
        (staging / SUMS_FILE).write_text("".join(f"{sha256_file(staging / n)}  {n}\n" for n in names),
                                         encoding="utf-8")
        verify_files(staging, request.out)  # what a reader will check
        size = sum((staging / n).stat().st_size for n in [*names, SUMS_FILE])
        if request.as_tar:
            # the list and the record first: a reader checks every later header against them
            _pack(staging, [SUMS_FILE, BUNDLE_FILE, *(n for n in names if n != BUNDLE_FILE)], request.out)
        else:
            os.chmod(staging, 0o755)
            if request.out.is_dir():
                request.out.rmdir()  # the empty folder checked above
            os.replace(staging, request.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return request.out, len(names) + 1, size


def _check_copies(staging: Path, members: list[str], request: BundleRequest) -> None:
    """The copies checked as the originals were (issue #29: a file replaced between its check and
    its copy was shipped with a fresh sha256 in SHA256SUMS). Raises IntegrityError naming it."""
    for name in members:
        try:
            member_files(ModelArtifacts.at(staging / ARTIFACTS_DIR, name), request.precision)
        except BatchforgeError as exc:
            raise IntegrityError(f"{request.model}: the artifacts under {request.output_dir} changed while they were "
                                 f"being bundled; the copy failed its check: {exc.message}",
                                 hint="something is replacing the artifacts: stop it, then bundle again") from None


def _pack(staging: Path, names: list[str], out: Path) -> None:
    """A reproducible .tar.gz of plain files (no owners, times or folders recorded)."""
    with atomic_path(out) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(str(staging / name), arcname=name)
            info.uid = info.gid = info.mtime = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(staging / name, "rb") as fh:
                tar.addfile(info, fh)
