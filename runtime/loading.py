"""From an artifact folder to an active-ready Runner or Pipeline (integrity checked first)."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchforge.errors import ArtifactError, ConfigError, IntegrityError, UsageError
from batchforge.runtime.artifacts import DEFAULT_OUTPUT_DIR, ModelArtifacts, Precision, read_json
from batchforge.runtime.backends import Backend, resolve_backend
from batchforge.runtime.bundle import open_bundle
from batchforge.runtime.gallery import Gallery
from batchforge.runtime.images import DEFAULT_MAX_PIXELS
from batchforge.runtime.infer_config import load_infer_config
from batchforge.runtime.manifest import offline_level, select_ort_engine
from batchforge.runtime.pipelines import ENSEMBLE_PIPELINES, PIPELINES, Pipeline
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.runners.onnxruntime import (
    OnnxRuntimeRunner,
    OrtOptions,
    import_onnxruntime,
    provider_chain,
)
from batchforge.runtime.spec import EnsembleSpec, ModelSpec, parse_options
from batchforge.safe_paths import check_name

ENSEMBLE_FILE = "ensemble.json"
LOG = logging.getLogger("batchforge.onnxruntime")
_SAID: set[str] = set()  # each fallback note once per process


def ensemble_spec(output_dir: str | os.PathLike[str], name: str) -> EnsembleSpec | None:
    """The ensemble recorded under ``<output_dir>/<name>/ensemble.json``, or None."""
    check_name(name)
    path = Path(output_dir) / name / ENSEMBLE_FILE
    if not path.is_file():
        return None
    return EnsembleSpec.from_dict(read_json(path, what=f"ensemble record for {name!r}"))


def cpu_has_vnni() -> bool:
    """True when the CPU has an int8 dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def cpu_graph_optimization(precision: Precision, backend: Backend) -> str:
    """Graph optimisation level for ONNX Runtime on this CPU.

    INT8 Q/DQ models are evaluated as written ("basic": Q/DQ are not fused) on x86 CPUs without
    VNNI: there ONNX Runtime's fused int8 kernels saturate 16-bit partial sums (vpmaddubsw).
    Measured on reid_resnet50 (AMD EPYC, AVX2): output cosine vs FP32 min 0.945 fused vs 0.992
    as written, and the fused model was no faster (0.88 s vs 0.80 s FP32 for 16 images).
    TensorRT accumulates int8 in int32, so the as-written result is also the faithful one.
    """
    if precision is Precision.INT8 and backend is Backend.ONNXRUNTIME_CPU and not cpu_has_vnni():
        return "basic"
    return "all"


def ort_source(artifacts: ModelArtifacts, precision: Precision, backend: Backend) -> tuple[Path, str, str]:
    """The verified ONNX an ONNX Runtime backend runs, the level it loads it at, and which
    artifact that is (``model``, ``int8-cpu-vnni``, ``int8-cpu-no-vnni`` or ``int8-qdq-as-written``).

    INT8 on the CPU provider runs ``model.int8.cpu.onnx`` (fused into int8 kernels) when the
    calibration wrote one that this CPU can run fused: a "vnni" artifact (8-bit weights) on a CPU
    without VNNI would saturate, so there the TensorRT Q/DQ model runs as written instead (accurate,
    not fast) and a note says how to get a fused one.
    """
    if precision is Precision.INT8 and backend is Backend.ONNXRUNTIME_CPU:
        cpu = artifacts.verified_cpu_int8()
        if cpu is not None:
            path, target = cpu
            if target == "no-vnni" or cpu_has_vnni():
                return path, "all", f"int8-cpu-{target}"
            note = (f"{artifacts.model}: {path.name} is made for CPUs with VNNI and this CPU has none: running "
                    f"{artifacts.onnx(precision).name} as written instead (accurate, slower than FP32); "
                    f"`batchforge calibrate {artifacts.model} --cpu-target no-vnni` makes one this CPU runs fused")
            if note not in _SAID:
                _SAID.add(note)
                LOG.warning(note)
        return artifacts.verified_onnx(precision), cpu_graph_optimization(precision, backend), "int8-qdq-as-written"
    return artifacts.verified_onnx(precision), cpu_graph_optimization(precision, backend), "model"


def disabled_optimizers(precision: Precision, backend: Backend, level: str, *, built: bool) -> tuple[str, ...]:
    """ONNX Runtime transformers to leave out when a model is loaded at ``level``.

    ONNX Runtime 1.31.1 and 1.32.0 crash (SIGSEGV in session creation) when the NCHWc layout
    transformer of level "all" runs on the FP16 ViT-B/16 model as converted here; every other zoo
    model and precision loads. The `build` artifact is optimised offline at "extended" first, and
    loading that at "all" does not crash, so this applies only to plain FP16 models on the CPU.
    """
    if not built and precision is Precision.FP16 and backend is Backend.ONNXRUNTIME_CPU and level == "all":
        return ("NchwcTransformer",)
    return ()


def open_runner(
    artifacts: ModelArtifacts,
    *,
    precision: Precision | str = Precision.FP32,
    backend: Backend | str = Backend.AUTO,
    threads: int = 0,
    spec: ModelSpec | None = None,
) -> Runner:
    """A (not yet active) runner for one model's artifact after its integrity checks.

    Args:
        artifacts: the model's artifact folder.
        precision: fp32, fp16 or int8.
        backend: auto, tensorrt, onnxruntime, onnxruntime-cpu/-cuda/-trt.
        threads: intra-op threads for ONNX Runtime (0 = its default).
        spec: the model spec (read from export.json when omitted).
    """
    precision = Precision(precision)
    concrete = resolve_backend(backend)
    spec = spec or artifacts.spec()
    if concrete is Backend.TENSORRT:
        from batchforge.runtime.runners.tensorrt import TensorRTRunner

        runner: Runner = TensorRTRunner.from_artifacts(artifacts, precision, spec=spec)
        runner.dim_ranges = spec.dim_ranges()
        return runner
    path, level, source = ort_source(artifacts, precision, concrete)
    providers, provider_options = ort_provider_setup(artifacts, spec, precision, concrete)
    # a model optimised by `batchforge build --backend onnxruntime` for this exact onnxruntime
    # and provider chain is preferred; anything else runs the plain (verified) ONNX
    built = select_ort_engine(artifacts, precision, source_path=path, providers=providers,
                              onnxruntime_version=import_onnxruntime().__version__,
                              graph_optimization=offline_level(level))
    options = OrtOptions(providers=providers, provider_options=provider_options,
                         intra_op_threads=threads, graph_optimization=level,
                         disabled_optimizers=disabled_optimizers(precision, concrete, level,
                                                                 built=built is not None))
    runner = OnnxRuntimeRunner(built or path, profile=spec.profile, options=options,
                               name=f"{spec.name}:{precision.value}:{concrete.value}"
                                    + (f":{source}" if source != "model" else "") + (":built" if built else ""))
    runner.dim_ranges = spec.dim_ranges()

    def reverify() -> None:
        """The same checks again, right before each session is made (issue #29 case 9: a model
        replaced between open_runner and activate, or between deactivate and activate, ran
        unverified). The ONNX and external data are hashed again; ONNX Runtime then opens them
        by path, so only the moments between this hash and its open remain."""
        again, _, _ = ort_source(artifacts, precision, concrete)
        # what this runner opens must verify again; an engine that appeared meanwhile (a `build`
        # beside it) is not what it opens, so it is not a change
        again_built = built and select_ort_engine(artifacts, precision, source_path=again, providers=providers,
                                                  onnxruntime_version=import_onnxruntime().__version__,
                                                  graph_optimization=offline_level(level))
        if (again, again_built) != (path, built):
            raise IntegrityError(f"{runner.name}: the artifacts changed after the runner was opened "
                                 f"({(built or path).name} is no longer what was verified)",
                                 hint="open the runner again (load_pipeline / open_runner) to use the new files")

    runner.reverify = reverify
    return runner


def ort_provider_setup(artifacts: ModelArtifacts, spec: ModelSpec, precision: Precision,
                       backend: Backend) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...]]:
    """Providers and provider options for one model on a concrete ONNX Runtime backend."""
    profile_shapes = [(t.name, *spec.input_shapes(t)) for t in spec.inputs]
    return provider_chain(
        backend.ort_device,
        trt_cache_dir=str(artifacts.dir / "ort_trt_cache"),
        trt_fp16=precision is Precision.FP16,
        trt_profile=profile_shapes,
    )


def load_pipeline(
    model: str | None = None,
    *,
    output_dir: str | os.PathLike[str] = DEFAULT_OUTPUT_DIR,
    precision: Precision | str | None = None,
    backend: Backend | str = Backend.AUTO,
    threads: int = 0,
    gallery: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    bundle: str | os.PathLike[str] | None = None,
) -> Pipeline:
    """Builds the family pipeline for an exported model or ensemble.

    Args:
        model: a model (or ensemble) name with artifacts under ``output_dir``; with ``bundle``,
            optional (it must then be the bundle's model).
        precision: fp32, fp16 or int8 (default fp32; a bundle's own precision with ``bundle``).
        backend, threads: see ``open_runner``.
        gallery: a reid gallery ``.npz`` (reid family only).
        overrides: post-processing options replacing the spec's (validated by the family); a
            bundle's infer config applies first.
        max_pixels: refuse larger input images.
        bundle: a deployment bundle (folder or .tar.gz) to load instead of ``output_dir``; every
            file's sha256 is verified before anything is deserialised (``open_bundle``).
    Returns:
        A Pipeline; use it as a context manager (``with load_pipeline(...) as p:``).
    """
    if bundle is not None:
        return _load_bundle(bundle, model, precision, backend=backend, threads=threads, gallery=gallery,
                            overrides=overrides, max_pixels=max_pixels)
    if model is None:
        raise UsageError("load_pipeline needs a model name or a bundle; got neither")
    precision = Precision.FP32 if precision is None else precision
    ensemble = ensemble_spec(output_dir, model)
    if ensemble is not None:
        members = []
        for name in ensemble.member_names:
            artifacts = ModelArtifacts.at(output_dir, name)
            spec = artifacts.spec()
            members.append((spec, open_runner(artifacts, precision=precision, backend=backend,
                                              threads=threads, spec=spec)))
        cls = _family_class(ENSEMBLE_PIPELINES, ensemble.family, model)
        options = _options(cls, ensemble.postprocess, overrides, ensemble.family)
        return cls(ensemble, members, options, max_pixels=max_pixels,
                   **_family_kwargs(ensemble.family, model, gallery))
    artifacts = ModelArtifacts.at(output_dir, model)
    if not artifacts.dir.is_dir():
        raise ArtifactError(
            f"no artifacts for model {model!r} under {Path(output_dir).resolve()}",
            hint=f"create them with `batchforge export {model}` (see `batchforge models`)",
        )
    spec = artifacts.spec()
    runner = open_runner(artifacts, precision=precision, backend=backend, threads=threads, spec=spec)
    cls = _family_class(PIPELINES, spec.family, model)
    options = _options(cls, spec.postprocess, overrides, spec.family)
    return cls(spec, runner, options, max_pixels=max_pixels,
               **_family_kwargs(spec.family, model, gallery))


def _load_bundle(path: str | os.PathLike[str], model: str | None, precision: Precision | str | None,
                 **kwargs: Any) -> Pipeline:
    """``load_pipeline`` on a verified bundle; its extracted copy lives as long as the pipeline."""
    opened = open_bundle(path)
    try:
        if model is not None and model != opened.model:
            raise UsageError(f"bundle {path} holds model {opened.model!r}, not {model!r}",
                             hint="leave the model out, or give the bundle of that model")
        if precision is not None and Precision(precision) is not opened.precision:
            raise UsageError(f"bundle {path} holds {opened.model!r} at {opened.precision.value}, not at "
                             f"{Precision(precision).value}", hint="leave the precision out to use the bundle's")
        if opened.infer_config is not None:
            config = load_infer_config(opened.infer_config)
            config.check_model(opened.model)
            kwargs["overrides"] = {**config.overrides(), **(kwargs["overrides"] or {})}
        pipeline = load_pipeline(opened.model, output_dir=opened.output_dir, precision=opened.precision, **kwargs)
    except BaseException:
        opened.close()
        raise
    weakref.finalize(pipeline, opened.close)
    return pipeline


def _options(cls: type[Pipeline], recorded: Mapping[str, Any], overrides: Mapping[str, Any] | None,
             family: str) -> Any:
    return parse_options(cls.options_type, {**recorded, **(overrides or {})},
                         f"{family} postprocess options")


def _family_class(registry: dict[str, type[Pipeline]], family: str, model: str) -> type[Pipeline]:
    if family not in registry:
        raise ConfigError(
            f"model {model!r} has family {family!r}, which has no pipeline; known: "
            + ", ".join(sorted(registry))
        )
    return registry[family]


def _family_kwargs(family: str, model: str, gallery: str | os.PathLike[str] | None) -> dict[str, Any]:
    if gallery is None:
        return {}
    if family != "reid":
        raise ConfigError(f"--gallery applies to reid models only; {model!r} is a {family} model")
    return {"gallery": Gallery.load(gallery, model=model)}
