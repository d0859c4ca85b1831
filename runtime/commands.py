"""Handlers of ``batchforge run``, ``gallery`` and ``doctor`` (runtime only: no torch)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.errors import EngineUnhealthyError, InputValidationError, UsageError
from batchforge.lock import default_lock, drift, read_lock
from batchforge.progress import progress
from batchforge.runtime import environment
from batchforge.runtime.artifacts import atomic_path
from batchforge.runtime.backends import Backend, probe_backends, resolve_backend
from batchforge.runtime.gallery import Gallery
from batchforge.runtime.images import list_images
from batchforge.runtime.jsonl import JsonlWriter, check_output_file
from batchforge.runtime.loading import load_pipeline
from batchforge.runtime.pipelines import Pipeline
from batchforge.runtime.profiling import format_table
from batchforge.runtime.results import ErrorRecord, Result


def _announce_backend(requested: str) -> str:
    concrete = resolve_backend(requested)
    if requested == Backend.AUTO.value and concrete is not Backend.TENSORRT:
        why = next(s.detail for s in probe_backends() if s.backend is Backend.TENSORRT)
        print(f"backend auto -> {concrete.value} (tensorrt not used: {why})", file=sys.stderr)
    return concrete.value


def _sources(pattern: str, suffixes: tuple[str, ...]) -> list[Path]:
    sources = list_images(pattern, suffixes)
    if not sources:
        raise UsageError(f"no input files found in {pattern!r} (expected images or a glob)")
    return sources


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, so a `kill` unwinds through the
    writers' cleanup (no partial file) instead of ending the process where it stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# an executor runs the pipeline elsewhere (``batchforge.integrations.ray``): (pipeline, sources,
# load_pipeline keyword arguments) -> records in input order
Executor = Callable[[Pipeline, list[Path], dict[str, Any]], Iterator[Result | dict[str, Any]]]


def cmd_run(args: argparse.Namespace, executor: Executor | None = None) -> int:
    if args.model is None and args.bundle is None:
        raise UsageError("run needs a MODEL or --bundle PATH; got neither",
                         hint="e.g. `batchforge run reid_resnet50 --input DIR --output results.jsonl`")
    if executor is None and (args.ray_address or args.concurrency is not None):
        raise UsageError("--ray-address and --concurrency apply with --ray only", hint="add --ray")
    workers, profile_path = getattr(args, "workers", None), getattr(args, "profile", None)
    if executor is not None and (workers is not None or profile_path):
        raise UsageError("--workers and --profile apply to a local run, not with --ray",
                         hint="drop them, or drop --ray")
    check_output_file(args.output)  # before any work: a bad path must not cost a whole run
    if profile_path:
        check_output_file(profile_path, "--profile")
    backend = _announce_backend(args.backend)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    overrides: dict[str, object] = {}
    if args.include_embedding:
        overrides["include_embedding"] = True
    if args.infer_config:
        from batchforge.runtime.infer_config import load_infer_config

        config = load_infer_config(args.infer_config)
        if args.model is not None:
            config.check_model(args.model)
        overrides.update(config.overrides())
    load_kwargs: dict[str, Any] = dict(output_dir=args.output_dir, precision=args.precision, threads=args.threads,
                                       gallery=args.gallery, overrides=overrides or None,
                                       max_pixels=args.max_pixels, bundle=args.bundle)
    pipeline = load_pipeline(args.model, backend=backend, **load_kwargs)
    if args.model is None:  # a bundle's model; an infer config naming another one is refused
        args.model = pipeline.spec.name
        if args.infer_config:
            config.check_model(args.model)
    sources = _sources(args.input, pipeline.input_suffixes)
    overlays = None
    if getattr(args, "overlays", None):
        from batchforge.runtime.overlays import OverlayWriter

        overlays = OverlayWriter(args.overlays, pipeline.family)
    if executor is None and workers and not pipeline.overlaps_stages:
        print(f"{args.model}: every stage runs on one thread in input order; --workers {workers} does not apply",
              file=sys.stderr)
    if executor is None:
        side_outputs = pipeline.place_side_outputs(Path(args.output))
        if side_outputs is not None:
            print(f"{args.model}: side outputs -> {side_outputs}", file=sys.stderr)
        results: Iterator[Result | dict[str, Any]] = pipeline.run_sources(sources, args.batch_size,
                                                                          workers=workers)
        context: Any = pipeline
    else:  # the executor's workers load the pipeline; this one only listed the inputs
        results = executor(pipeline, sources, {"model": args.model, "backend": args.backend, **load_kwargs})
        context = contextlib.nullcontext()
    errors, done = 0, 0
    start = time.perf_counter()
    # closing the stream stops the pipeline's threads at once when the run is interrupted
    stream: Any = contextlib.closing(results) if hasattr(results, "close") else contextlib.nullcontext()
    try:
        with terminate_as_interrupt(), context, stream, JsonlWriter(args.output) as writer:
            for result in progress(results, desc=args.model, total=len(sources)):
                record = writer.write(result)  # what was written (a non-finite result becomes an error record)
                done += 1
                if overlays is not None and isinstance(result, Result) and record.get("ok") is not False:
                    overlays.write(result)
                if record.get("ok") is False:
                    errors += 1
                    print(f"  skipped {record['source']}: {record['error']['message']}", file=sys.stderr)
    except EngineUnhealthyError as exc:  # sticky: the writer has removed its partial file
        kept = f"; the {overlays.written} overlay(s) already in {args.overlays} are complete and kept" \
            if overlays is not None and overlays.written else ""
        raise EngineUnhealthyError(f"{exc.message}; the run stopped after {done} of {len(sources)} inputs "
                                   f"and wrote nothing to {args.output}{kept}",
                                   hint="check the device with `batchforge doctor`, then run again") from None
    seconds = time.perf_counter() - start
    print(f"{args.model}: {len(sources) - errors}/{len(sources)} inputs processed, {errors} error "
          f"record(s), {len(sources) / seconds:.1f} items/s on {backend if executor is None else 'ray'} "
          f"-> {args.output}" + (f"; {overlays.written} overlay(s) -> {args.overlays}" if overlays else ""))
    if profile_path and executor is None:
        _write_profile(pipeline.stats(), Path(profile_path))
    return 1 if errors else 0


def _write_profile(summary: dict[str, Any], path: Path) -> None:
    """The stage profile as JSON (atomically) and a short table on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(format_table(summary) + f"\nprofile -> {path}", file=sys.stderr)


def cmd_gallery(args: argparse.Namespace) -> int:
    check_output_file(args.output)
    backend = _announce_backend(args.backend)
    pipeline = load_pipeline(args.model, output_dir=args.output_dir, precision=args.precision,
                             backend=backend, threads=args.threads)
    if pipeline.family != "reid":
        raise UsageError(f"galleries are for reid models; {args.model!r} is a {pipeline.family} model")
    sources = _sources(args.input, pipeline.input_suffixes)
    with pipeline:
        results = list(pipeline.run_sources(sources))
    bad = [r for r in results if isinstance(r, ErrorRecord)]
    if bad:
        listed = "; ".join(f"{r.source}: {r.message}" for r in bad[:5])
        raise InputValidationError(f"{len(bad)} gallery image(s) could not be embedded ({listed})",
                                   hint="fix or remove them; no gallery was written")
    labels = [Path(r.source).parent.name if args.label_from == "parent" else Path(r.source).stem
              for r in results]
    embeddings = np.stack([r.embedding for r in results])  # type: ignore[attr-defined]
    with terminate_as_interrupt():  # the atomic write removes its temp file on the way out
        Gallery.from_embeddings(embeddings, labels, args.model).save(args.output)
    print(f"gallery of {len(labels)} embeddings ({embeddings.shape[1]}-d) from {args.model} -> {args.output}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    info = {
        **environment.capture(),
        "backends": {s.backend.value: {"available": s.available, "detail": s.detail}
                     for s in probe_backends()},
    }
    try:
        info["auto_backend"] = resolve_backend("auto").value
    except Exception as exc:  # doctor reports, never fails on a missing backend
        info["auto_backend"] = f"none ({exc})"
    info["tensorrt_pairing"] = _pairing_report(info["cuda"])
    info["lock"] = _lock_report(args.lock)
    code = 1 if args.strict_lock and info["lock"].get("drift") else 0
    if args.json:
        print(json.dumps(info, indent=2))
        return code
    print(f"python {info['python']} on {info['platform']}")
    for dist, version in info["packages"].items():
        print(f"  {dist:24} {version}")
    print(f"TensorRT: {info['tensorrt']}")
    print("ONNX Runtime providers: " + (", ".join(info["onnxruntime_providers"]) or "none"))
    cuda = info["cuda"]
    line = f"CUDA: cuda-python {cuda['cuda_python']}"
    if cuda.get("cuda_runtime"):
        driver = cuda["cuda_driver"]
        line += f", runtime {cuda['cuda_runtime']}, driver " + (
            "not found" if driver == "0.0" else f"supports CUDA {driver}")
    print(line + (f"; {cuda['error']}" if cuda.get("error") else ""))
    for device in cuda["devices"]:
        print(f"  GPU {device['index']}: {device['name']} ({device['sm']}, {device['memory_mib']} MiB)")
    smi = "; ".join(info["gpus"]) if info["gpus"] else "none found (no nvidia-smi)"
    print(f"driver (nvidia-smi): {smi}")
    print(_pairing_line(info["tensorrt_pairing"]))
    print("backends:")
    for name, status in info["backends"].items():
        print(f"  {name:18} {'yes' if status['available'] else 'no ':3}  {status['detail']}")
    print(f"--backend auto resolves to: {info['auto_backend']}")
    lock = info["lock"]
    if lock["path"] is None:
        print("lock: none found (a checkout's constraints.txt, or --lock FILE)")
    elif lock["drift"]:
        print(f"lock {lock['path']}: {len(lock['drift'])} of {lock['pinned']} pinned packages differ: "
              + "; ".join(lock["drift"]) + " (scripts/setup_venv.sh re-installs from the lock; "
              "scripts/update_lock.sh re-locks after a deliberate upgrade)")
    else:
        print(f"lock {lock['path']}: all {lock['pinned']} pinned packages match")
    return code


def _pairing_report(cuda: dict[str, object]) -> dict[str, object]:
    """Which TensorRT/cuda-python pairing (extra) this driver supports, and whether the installed one fits."""
    from batchforge.runtime.runners import cuda_util

    driver = cuda.get("cuda_driver")
    return cuda_util.tensorrt_pairing(driver if isinstance(driver, str) else None)


def _pairing_line(pairing: dict[str, object]) -> str:
    if pairing["driver_cuda"] is None:
        line = ("TensorRT pairing: driver CUDA version unknown (needs cuda-python and a driver); "
                "`nvidia-smi` shows it: CUDA 13.x -> batchforge[tensorrt-cu13], 12.x -> batchforge[tensorrt-cu12]")
    elif not pairing["supported"]:
        line = f"TensorRT pairing: the driver supports CUDA {pairing['driver_cuda']}, too old for either extra"
    else:
        line = (f"TensorRT pairing: the driver supports CUDA {pairing['driver_cuda']}: install "
                f"`pip install 'batchforge[{pairing['recommended']}]'`"
                + (f" (also works: {', '.join(pairing['supported'][:-1])})" if len(pairing["supported"]) > 1
                   else ""))
    problems = pairing["problems"]
    return line + ("; " + "; ".join(problems) if problems else "")  # type: ignore[arg-type]


def _lock_report(path: str | None) -> dict[str, object]:
    """Where the installed set differs from the tested lock (constraints.txt)."""
    lock_path = Path(path) if path else default_lock()
    if lock_path is None:
        return {"path": None, "pinned": 0, "drift": []}
    pins = read_lock(lock_path)
    return {"path": str(lock_path), "pinned": len(pins), "drift": [d.describe() for d in drift(pins)]}
