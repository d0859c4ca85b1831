"""Handlers of ``batchforge convert`` (FP16) and ``batchforge calibrate`` (INT8)."""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchforge.errors import UsageError, storage_error
from batchforge.memory import release_memory
from batchforge.onnx_external import checked_external_files
from batchforge.runtime.artifacts import ModelArtifacts, Precision, file_record, write_json_atomic
from batchforge.runtime.loading import ensemble_spec, load_pipeline
from batchforge.runtime.staging import staging, temporary_files_in

SCHEMA_VERSION = 1
STAGED = {Precision.FP16: "convert", Precision.INT8: "calibrate"}  # staging folder kind per command
SYNTHETIC_WARNING = ("CALIBRATED ON SYNTHETIC DATA (--allow-synthetic): ranges reflect the generator, "
                     "not your deployment inputs; recalibrate with --data before shipping")


def _model_names(args: argparse.Namespace) -> list[str]:
    if args.all:
        if args.models:
            raise UsageError("give model names or --all, not both")
        root = Path(args.output_dir)
        names = sorted(p.parent.name for p in root.glob("*/export.json"))
        if not names:
            raise UsageError(f"no exported models under {root}", hint="run `batchforge export --all` first")
        return names
    if not args.models:
        raise UsageError("no model given: name one or more models, or pass --all")
    names: list[str] = []
    for name in args.models:
        ensemble = ensemble_spec(args.output_dir, name)
        names += list(ensemble.member_names) if ensemble else [name]
    return list(dict.fromkeys(names))


def _data_path(args: argparse.Namespace, model: str, family: str) -> str | None:
    if args.data is None:
        return None
    root = Path(args.data)
    for sub in (root / model, root / family):
        if sub.is_dir():
            return str(sub)
    return args.data


def _staged_source(fp32: Path, stage: Path) -> Path:
    """The FP32 model (and its external data) linked into ``stage``, so what libraries write
    beside their input (onnxruntime.quantization's ``model.fp32-inferred.onnx``) is staged too;
    copied where the file system has no hard links."""
    for name in [fp32.name, *checked_external_files(fp32)]:
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(fp32.parent / name, stage / name)
        except OSError:
            shutil.copyfile(fp32.parent / name, stage / name)
    return stage / fp32.name


def _raise_if_disk_full(exc: Exception, stage: Path, needed: int) -> None:
    """A library error met with the disk full is the full disk's: onnx's shape inference writes a
    truncated ``model.fp32-inferred.onnx`` without an error, and onnxruntime.quantization then
    fails to parse it (measured on a 2 MB tmpfs: a protobuf DecodeError traceback). With less free
    space left than the FP32 model takes, that is what is reported, as one line."""
    free = shutil.disk_usage(stage).free
    if free < max(needed, 2**20):
        full = storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stage)))
        raise type(full)(f"{full.message}: {free:,} bytes free when {type(exc).__name__} was raised "
                         f"({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else 'no message'})",
                         hint=full.hint) from None


def _publish(artifacts: ModelArtifacts, precision: Precision, stage: Path, temps: dict[str, Path],
             finals: dict[str, Path], fields: dict[str, Any]) -> None:
    """Writes the record in ``stage`` (each adopted file hashed there under its role), then moves the
    files into the model folder, the record last: a full disk fails before anything is moved."""
    adopted = [role for role in finals if role == "onnx" or temps[role].is_file()]  # else the record says why
    schema = {k: fields.pop(k) for k in ("schema_version", "model", "precision")}
    record = {**schema, **{role: file_record(temps[role], stage) for role in adopted}, **fields}
    sidecar = stage / artifacts.sidecar(precision).name
    try:
        write_json_atomic(sidecar, record)
    except OSError as exc:
        raise storage_error(exc, sidecar) from None
    for role, path in finals.items():
        if role in adopted:
            temps[role].replace(path)
        else:
            path.unlink(missing_ok=True)
    sidecar.replace(artifacts.sidecar(precision))  # the record last: it vouches for the rest


def _run(args: argparse.Namespace, precision: Precision,
         work: Callable[[Path, dict[str, Path], Any, Any], dict[str, Any]]) -> int:
    """``work(fp32, outputs, data, spec)`` writes each output file (role -> temporary path; ``onnx`` is
    the precision's model) and returns the record's fields; each finished file is renamed into
    place and hashed into the record under its role. Everything is written in a staging folder
    inside the model folder (``runtime.staging``, temporary files included): a failure, a full disk
    or a SIGKILL followed by the next run leaves nothing behind."""
    from batchforge.calibration.data import load_calibration_data
    from batchforge.export.exporter import library_versions

    for name in _model_names(args):
        start = time.perf_counter()
        artifacts = ModelArtifacts.at(args.output_dir, name)
        artifacts.check_writable_dir()
        fp32 = artifacts.verified_onnx(Precision.FP32)
        pipeline = load_pipeline(name, output_dir=args.output_dir, backend="onnxruntime-cpu")
        data = load_calibration_data(pipeline, _data_path(args, name, pipeline.spec.family),
                                     samples=args.samples, allow_synthetic=args.allow_synthetic,
                                     allow_random=args.allow_random_data)
        out = artifacts.onnx(precision)
        finals = {"onnx": out, **({"cpu_onnx": artifacts.cpu_int8_onnx} if precision is Precision.INT8 else {})}
        with staging(artifacts.dir, name, STAGED[precision]) as stage, temporary_files_in(stage):
            temps = {role: stage / path.name for role, path in finals.items()}
            try:
                details = work(_staged_source(fp32, stage), temps, data, pipeline.spec)
            except OSError as exc:  # a full disk: the file and errno in one line
                raise storage_error(exc, stage) from None
            except Exception as exc:
                _raise_if_disk_full(exc, stage, fp32.stat().st_size)
                raise
            _publish(artifacts, precision, stage, temps, finals, {
                "schema_version": SCHEMA_VERSION, "model": name, "precision": precision.value,
                "source_sha256": artifacts.export_record()["onnx"]["sha256"],
                "data": data.record(),
                **({"warning": SYNTHETIC_WARNING} if data.synthetic else {}),
                **details,
                "versions": library_versions(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            })
        if data.synthetic:
            print(f"WARNING {name}: {SYNTHETIC_WARNING}", file=sys.stderr)
        if details.get("effect", {}).get("quantize_nodes") == 0:
            print(f"WARNING {name}: every quantizable node stayed FP32 for the gate's checks to pass on the "
                  f"calibration items, so {out.name} computes in FP32: int8 gains nothing over fp32 here",
                  file=sys.stderr)
        print(f"{precision.value} {name:24} {time.perf_counter() - start:6.1f}s  {_summary(details)} "
              f"-> {out}", flush=True)
        del data, pipeline
        release_memory()  # the next model starts from what the command needs, not from this one's peak
    return 0


def _summary(details: dict[str, Any]) -> str:
    if "kept_fp32" in details:
        return f"{len(details['kept_fp32'])} of {details['nodes']} nodes kept FP32"
    effect = details["effect"]
    failed = effect.get("failed") or {}
    line = (f"{details['method']}, {details['weights']} weights; "
            f"{len(details['excluded_by_sensitivity'])} node(s) kept FP32 by sensitivity; output cosine "
            f"vs FP32 min {effect['final_min_cosine']:.4f} (all-int8 {effect['full_int8_min_cosine']:.4f}); "
            + ("the gate's checks pass on the calibration items" if not failed else
               "FAILS on the calibration items: " + ", ".join(f"{k} {v}" for k, v in failed.items())))
    if "cpu" in details:
        from batchforge.calibration.int8_cpu import fusion_summary

        cpu = details["cpu"]
        line += (f"; CPU artifact ({cpu['target']}) min {cpu['effect']['min_cosine']:.4f}, "
                 f"{fusion_summary(cpu['fusion'])}"
                 + ("" if cpu["adopted"] else " -- NOT ADOPTED: the CPU backend runs model.int8.onnx as written"))
    return line


def cmd_convert(args: argparse.Namespace) -> int:
    from batchforge.calibration.fp16 import convert_to_fp16

    return _run(args, Precision.FP16, lambda src, dst, data, spec: convert_to_fp16(src, dst["onnx"], data, args.block))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from batchforge.calibration.criterion import GateCriterion
    from batchforge.calibration.int8 import Int8Options, calibrate_int8

    kwargs = {} if args.max_excluded is None else {"max_excluded": args.max_excluded}
    options = Int8Options(method=args.method, target_cosine=args.target_cosine,
                          user_excluded=tuple(args.exclude), cpu_target=args.cpu_target,
                          cpu_form=args.cpu_form, weights=args.weights, **kwargs)

    def work(src: Path, dst: dict[str, Path], data: Any, spec: Any) -> dict[str, Any]:
        criterion = GateCriterion.for_spec(spec, Precision.INT8, options.target_cosine)
        return calibrate_int8(src, dst["onnx"], data, options, dst["cpu_onnx"], criterion)

    return _run(args, Precision.INT8, work)
