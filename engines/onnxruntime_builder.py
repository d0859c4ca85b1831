"""``batchforge build --backend onnxruntime``: the ONNX Runtime equivalent of an engine build.

ONNX Runtime's "engine" is its graph-optimised model, saved offline with
``SessionOptions.optimized_model_filepath`` as ``engine.P.ort.onnx``, plus the provider chain
and options it was optimised for and a manifest ``engine.P.ort.json`` (sha256 of the source ONNX
and of the optimised file, onnxruntime version, providers). ``open_runner`` prefers it when it
fits the runner's onnxruntime version and providers (runtime/manifest.py ``select_ort_engine``).

The offline level is the runner's online level capped at "extended" (``offline_level``): ONNX
Runtime documents that the layout optimisations of level "all" make a saved model specific to
the hardware it was saved on, so the runner applies them online at load time, where they are
cheap; INT8 on CPUs without VNNI stays at "basic" (``cpu_graph_optimization``).

INT8 on the CPU provider is built from ``model.int8.cpu.onnx``, the form its int8 kernels fuse
(``runtime.loading.ort_source`` picks the same file the runner would run); the manifest records
how many nodes were fused and how many convolutions/matrix products stayed FP32.
"""

from __future__ import annotations

import dataclasses
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchforge.engines.records import calibration_sha256
from batchforge.errors import BuildError
from batchforge.runtime.artifacts import ModelArtifacts, Precision, sha256_file
from batchforge.runtime.backends import Backend
from batchforge.runtime.loading import ort_provider_setup, ort_source
from batchforge.runtime.manifest import OrtEngineManifest, offline_level, write_manifest
from batchforge.runtime.runners.onnxruntime import OrtOptions, import_onnxruntime, inference_session

SPEED_RUNS = 3  # timed runs of each side (after one warm-up), interleaved


def speed_against_fp32(artifacts: ModelArtifacts, precision: Precision, backend: Backend,
                       runs: int = SPEED_RUNS) -> dict[str, Any]:
    """Throughput of ``precision``'s runner over FP32's (each as ``run`` would load it) at the
    profile's opt batch: ``{"ratio", "batch", "runs"}`` (median of ``runs`` interleaved runs)."""
    import statistics

    import numpy as np

    from batchforge.runtime.loading import open_runner

    spec = artifacts.spec()
    batch = spec.profile.opt
    rng = np.random.default_rng(0)
    feed = {t.name: rng.normal(size=(batch, *[int(d) for d in spec.input_shapes(t)[1][1:]])).astype(t.dtype)
            for t in spec.inputs}
    runners = [open_runner(artifacts, precision=p, backend=backend, spec=spec) for p in (Precision.FP32, precision)]
    times: list[list[float]] = [[], []]
    for runner in runners:
        runner.activate()
    try:
        for runner in runners:
            runner.infer(feed)
        for _ in range(runs):
            for side, runner in enumerate(runners):
                start = time.perf_counter()
                runner.infer(feed)
                times[side].append(time.perf_counter() - start)
    finally:
        for runner in runners:
            runner.deactivate()
    return {"ratio": round(statistics.median(times[0]) / statistics.median(times[1]), 3), "batch": batch,
            "runs": runs}


def build_ort_engine(artifacts: ModelArtifacts, precision: Precision | str, *,
                     backend: Backend = Backend.ONNXRUNTIME_CPU, threads: int = 0,
                     speed_check: bool = False) -> OrtEngineManifest:
    """Writes ``engine.P.ort.onnx`` and its manifest for one model folder.

    Args:
        artifacts: the model folder (the precision's ONNX is verified first).
        precision: fp32, fp16 or int8.
        backend: the concrete ONNX Runtime backend (cpu or cuda) the artifact is optimised for.
        threads: intra-op threads for the optimising session (0 = ONNX Runtime's default).
        speed_check: fp16/int8 with an FP32 export: time the built artifact against FP32
            (``speed_against_fp32``), record it and say in one line when it is slower.
    Returns:
        The manifest written beside the optimised model.
    """
    precision = Precision(precision)
    if backend not in (Backend.ONNXRUNTIME_CPU, Backend.ONNXRUNTIME_CUDA):
        # TensorRT EP compiles subgraphs, and compiled nodes cannot be saved as ONNX
        raise BuildError(f"an ONNX Runtime artifact can be optimised for onnxruntime-cpu or -cuda, "
                         f"not {backend.value}")
    ort = import_onnxruntime()
    source, online_level, _ = ort_source(artifacts, precision, backend)
    spec = artifacts.spec()
    providers, provider_options = ort_provider_setup(artifacts, spec, precision, backend)
    level = offline_level(online_level)
    target = artifacts.ort_engine(precision)
    scratch = target.with_name(f".{target.name}.partial")
    scratch.unlink(missing_ok=True)
    options = OrtOptions(providers=providers, provider_options=provider_options, intra_op_threads=threads,
                         graph_optimization=level, optimized_model_path=str(scratch))
    start = time.perf_counter()
    try:
        inference_session(ort, str(source), options)
    except Exception as exc:  # ONNX Runtime raises its own exception types
        scratch.unlink(missing_ok=True)
        raise BuildError(f"ONNX Runtime could not optimise {source.name}: {exc}") from None
    if not scratch.is_file():
        raise BuildError(f"ONNX Runtime {ort.__version__} did not write the optimised model {scratch}")
    os.replace(scratch, target)
    fusion = None
    if precision is Precision.INT8 and backend is Backend.ONNXRUNTIME_CPU:
        from batchforge.calibration.int8_cpu import fusion_counts

        fusion = fusion_counts(target, level=online_level)  # as the runner will load it
    manifest = OrtEngineManifest(
        model=artifacts.model, precision=precision.value, onnxruntime_version=ort.__version__,
        providers=tuple(providers), provider_options=tuple(dict(o) for o in provider_options),
        graph_optimization=level, source_file=source.name, source_sha256=sha256_file(source),
        engine_file=target.name, engine_sha256=sha256_file(target),
        calibration_sha256=calibration_sha256(artifacts, precision), spec=spec.to_dict(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), fusion=fusion)
    write_manifest(artifacts.ort_manifest(precision), manifest)
    speed = None
    if speed_check and precision is not Precision.FP32:
        speed = speed_against_fp32(artifacts, precision, backend)  # the artifact just written is what loads
        manifest = dataclasses.replace(manifest, speed_vs_fp32=speed)
        write_manifest(artifacts.ort_manifest(precision), manifest)
    fused = ""
    if fusion is not None:
        from batchforge.calibration.int8_cpu import fusion_summary

        fused = f" from {source.name}; {fusion_summary(fusion)}"
    print(f"{artifacts.model} [{precision.value}]: ONNX Runtime {ort.__version__} optimised "
          f"({level}, {', '.join(providers)}) -> {_rel(target)} in "
          f"{time.perf_counter() - start:.1f} s{fused}")
    if speed is not None:
        verdict = "SLOWER than" if speed["ratio"] < 1.0 else "faster than"
        print(f"{artifacts.model} [{precision.value}]: {speed['ratio']:.2f}x the throughput of fp32 on "
              f"{backend.value} at batch {speed['batch']} ({verdict} fp32; median of {speed['runs']} interleaved "
              f"runs; `batchforge bench {artifacts.model} --precision fp32,{precision.value}` measures more)")
    return manifest


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
