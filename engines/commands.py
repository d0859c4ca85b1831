"""Handler of ``batchforge build``: a TensorRT plan or the ONNX Runtime artifact, with a manifest."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from batchforge.errors import ArtifactError, BackendUnavailableError
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.backends import INSTALL_HINTS, Backend, probe_backends, resolve_backend
from batchforge.runtime.loading import ensemble_spec

TIMING_CACHE_NAME = "timing.cache"


def choose_build_backend(requested: str) -> Backend:
    """TENSORRT or ONNXRUNTIME for ``--backend auto|tensorrt|onnxruntime``.

    ``tensorrt`` without a usable TensorRT raises BackendUnavailableError (one line: what is
    missing, how to install it); ``auto`` falls back to ONNX Runtime and says so on stderr.
    """
    status = next(s for s in probe_backends() if s.backend is Backend.TENSORRT)
    if requested == Backend.TENSORRT.value:
        if not status.available:
            if importlib.util.find_spec("tensorrt") is None:
                message = "TensorRT is not installed (no tensorrt Python package): no plan can be built"
            else:
                message = f"TensorRT cannot build here: {status.detail}"
            raise BackendUnavailableError(message, hint=INSTALL_HINTS[Backend.TENSORRT])
        return Backend.TENSORRT
    if requested == Backend.AUTO.value:
        if status.available:
            return Backend.TENSORRT
        print(f"backend auto -> onnxruntime: TensorRT is not usable here ({status.detail}); building "
              "the ONNX Runtime artifact instead", file=sys.stderr)
    return Backend.ONNXRUNTIME


def cmd_build(args: argparse.Namespace) -> int:
    precision = Precision(args.precision)
    ensemble = ensemble_spec(args.output_dir, args.model)
    names = list(ensemble.member_names) if ensemble else [args.model]  # an ensemble builds its members
    for name in names:
        if not ModelArtifacts.at(args.output_dir, name).dir.is_dir():
            raise ArtifactError(f"no artifacts for model {name!r} under {Path(args.output_dir).resolve()}",
                                hint=f"create them with `batchforge export {name}`")
    backend = choose_build_backend(args.backend)
    if backend is not Backend.TENSORRT and any(
            getattr(args, f) is not None for f in ("min_batch", "opt_batch", "max_batch")):
        print("note: --min-batch/--opt-batch/--max-batch shape TensorRT profiles; the ONNX Runtime "
              "artifact keeps the spec's profile", file=sys.stderr)
    for name in names:
        artifacts = ModelArtifacts.at(args.output_dir, name)
        artifacts.check_writable_dir()
        if backend is Backend.TENSORRT:
            _build_tensorrt(args, artifacts, precision)
        else:
            from batchforge.engines.onnxruntime_builder import build_ort_engine

            build_ort_engine(artifacts, precision, backend=resolve_backend(Backend.ONNXRUNTIME),
                             speed_check=not args.no_speed_check)
    return 0


def _build_tensorrt(args: argparse.Namespace, artifacts: ModelArtifacts, precision: Precision) -> None:
    from batchforge.engines.profiles import derive_profile
    from batchforge.engines.tensorrt_builder import BuildConfig, HardwareCompat, build_tensorrt_engine
    from batchforge.runtime.runners import cuda_util
    from batchforge.runtime.runners.tensorrt import import_tensorrt

    trt = import_tensorrt()
    spec = artifacts.spec()
    profile = derive_profile(spec, min_batch=args.min_batch, opt_batch=args.opt_batch,
                             max_batch=args.max_batch)
    cache = Path(args.timing_cache) if args.timing_cache else Path(args.output_dir) / TIMING_CACHE_NAME
    config = BuildConfig(precision=precision, profile=profile, workspace_mib=args.workspace_mib,
                         optimization_level=args.opt_level, timing_cache=cache,
                         hardware_compat=HardwareCompat(args.hardware_compat),
                         version_compatible=args.version_compatible)
    device = cuda_util.device_info(0)
    versions = cuda_util.cuda_versions()
    environment = {"gpu_name": device.name, "compute_capability": device.compute_capability,
                   "cuda_runtime": versions["runtime"], "cuda_driver": versions["driver"]}
    build_tensorrt_engine(artifacts, config, trt=trt, environment=environment)
