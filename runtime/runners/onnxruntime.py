"""ONNX Runtime runner: CPU here; CUDA and TensorRT execution providers on GPU boxes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.errors import ArtifactError, BackendUnavailableError, BatchforgeError
from batchforge.onnx_external import check_no_external_data, checked_external_files
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ProfileRange
from batchforge.runtime.typed_options import check_numbers, number_problem
from batchforge.runtime.validation import IOMeta

ORT_TYPES = {
    "tensor(float)": np.dtype("float32"),
    "tensor(float16)": np.dtype("float16"),
    "tensor(double)": np.dtype("float64"),
    "tensor(uint8)": np.dtype("uint8"),
    "tensor(int8)": np.dtype("int8"),
    "tensor(int32)": np.dtype("int32"),
    "tensor(int64)": np.dtype("int64"),
    "tensor(bool)": np.dtype("bool"),
}

GRAPH_LEVELS = ("disable", "basic", "extended", "all")
MAX_THREADS = 1024  # per pool; 0 lets ONNX Runtime choose


@dataclass(frozen=True)
class OrtOptions:
    """Session options. ``providers`` are tried in order; each may carry an options dict.

    ``intra_op_threads=0`` lets ONNX Runtime choose (all cores). ``disabled_optimizers`` names
    ONNX Runtime graph transformers to leave out (e.g. ``NchwcTransformer``).
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    provider_options: tuple[Mapping[str, Any], ...] = ()
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    optimized_model_path: str | None = None
    extra_outputs: tuple[str, ...] = field(default=())
    disabled_optimizers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_numbers("OrtOptions", [number_problem(name, getattr(self, name), 0, MAX_THREADS, integer=True)
                                     for name in ("intra_op_threads", "inter_op_threads")])
        if self.graph_optimization not in GRAPH_LEVELS:
            raise BatchforgeError(
                f"graph_optimization must be one of {GRAPH_LEVELS}, got {self.graph_optimization!r}"
            )
        if self.provider_options and len(self.provider_options) != len(self.providers):
            raise BatchforgeError(
                f"provider_options needs one dict per provider ({len(self.providers)}), "
                f"got {len(self.provider_options)}"
            )


def import_onnxruntime() -> Any:
    """Imports onnxruntime or raises BackendUnavailableError with the install command."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "backend 'onnxruntime' is not available: the onnxruntime package is not installed",
            hint="install it with `pip install 'batchforge[cpu]'` (or `[gpu]` for CUDA)",
        ) from None
    return onnxruntime


def follow_wait_policy(so: Any) -> Any:
    """ONNX Runtime's intra-op threads spin while waiting for work; with ``OMP_WAIT_POLICY=PASSIVE``
    in the environment (the OpenMP setting for "idle threads sleep", which ORT itself ignores) they
    do not. Spinning only helps when the process has its cores to itself: two 2-thread processes on
    2 cores ran 1.4x longer with it (measured: facepose + keypoints fp32, 15 batches each, 11.7 s vs
    8.3 s). Results are the same either way."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def session_options(ort: Any, options: OrtOptions) -> Any:
    """Builds ``onnxruntime.SessionOptions`` from OrtOptions."""
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization]
    if options.intra_op_threads:
        so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3  # errors only: warnings would leak onto users' stderr
    if options.optimized_model_path:
        so.optimized_model_filepath = str(options.optimized_model_path)
    return follow_wait_policy(so)


def inference_session(ort: Any, model: str | bytes, options: OrtOptions) -> Any:
    """``onnxruntime.InferenceSession`` for a model path or bytes with every field of OrtOptions."""
    return ort.InferenceSession(
        model,
        sess_options=session_options(ort, options),
        providers=list(options.providers),
        provider_options=[dict(p) for p in options.provider_options] or None,
        disabled_optimizers=list(options.disabled_optimizers) or None,
    )


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model (path or bytes) with an ``onnxruntime.InferenceSession``."""

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        profile: ProfileRange | None = None,
        options: OrtOptions | None = None,
        name: str | None = None,
    ) -> None:
        label = name or (Path(model).name if not isinstance(model, bytes) else "onnx-bytes")
        super().__init__(name=label, profile=profile)
        self.model = model if isinstance(model, bytes) else str(model)
        self.options = options or OrtOptions()
        self.session: Any = None
        self._run_options: Any = None
        self._outputs: tuple[str, ...] = ()

    def activate_impl(self) -> None:
        ort = import_onnxruntime()
        available = ort.get_available_providers()
        missing = [p for p in self.options.providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime provider(s) {missing} not available; this onnxruntime "
                f"{ort.__version__} has {available}",
                hint="install onnxruntime-gpu (`pip install 'batchforge[gpu]'`) on a CUDA machine",
            )
        if isinstance(self.model, bytes):  # before ONNX Runtime opens anything
            check_no_external_data(self.model)
        else:
            checked_external_files(self.model)
        try:
            self.session = inference_session(ort, self.model, self.options)
        except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            what = "the model bytes" if isinstance(self.model, bytes) else self.model
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(
                f"ONNX Runtime could not load {what} ({type(exc).__name__}): {first[:300]}",
                hint="check the file with `batchforge inspect`, or re-create it with the command that made it",
            ) from None
        self._outputs = tuple(o.name for o in self.session.get_outputs())
        # a failed run raises (and becomes that input's record or the engine's one line); ORT's
        # own ERROR log of it would print the same message again, in colour, on the user's stderr
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4

    @property
    def output_names(self) -> tuple[str, ...]:
        self._require_active("output_names")
        return self._outputs

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (active runners only)."""
        self._require_active("providers")
        return list(self.session.get_providers())

    def input_metadata_impl(self) -> dict[str, IOMeta]:
        metas = {}
        for i in self.session.get_inputs():
            if i.type not in ORT_TYPES:
                raise BatchforgeError(f"input {i.name!r} has unsupported type {i.type}")
            metas[i.name] = IOMeta(i.name, tuple(i.shape), ORT_TYPES[i.type])
        return metas

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v) for k, v in feed.items()}
        values = self.session.run(list(self._outputs), feed, self._run_options)
        return dict(zip(self._outputs, values))

    def deactivate_impl(self) -> None:
        self.session = None


def provider_chain(
    kind: str,
    *,
    device_id: int = 0,
    trt_cache_dir: str | None = None,
    trt_fp16: bool = False,
    trt_profile: Sequence[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = (),
) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...]]:
    """Providers and their options for ``kind`` in {"cpu", "cuda", "tensorrt"}.

    The TensorRT EP gets an engine/timing cache folder and explicit profile shapes
    (``name, min, opt, max`` per input), falling back to CUDA then CPU for unsupported nodes.
    """
    cpu: tuple[str, dict[str, Any]] = ("CPUExecutionProvider", {})
    cuda = ("CUDAExecutionProvider", {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"})
    chain: list[tuple[str, dict[str, Any]]]
    if kind == "cpu":
        chain = [cpu]
    elif kind == "cuda":
        chain = [cuda, cpu]
    elif kind == "tensorrt":
        trt: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": trt_fp16}
        if trt_cache_dir:
            trt.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=trt_cache_dir,
                trt_timing_cache_enable=True,
                trt_timing_cache_path=trt_cache_dir,
            )
        if trt_profile:
            def fmt(index: int) -> str:
                return ",".join(f"{n}:{'x'.join(map(str, p[index]))}" for n, *p in trt_profile)
            trt.update(
                trt_profile_min_shapes=fmt(0), trt_profile_opt_shapes=fmt(1),
                trt_profile_max_shapes=fmt(2),
            )
        chain = [("TensorrtExecutionProvider", trt), cuda, cpu]
    else:
        raise BatchforgeError(f"unknown ONNX Runtime device {kind!r}; expected cpu, cuda or tensorrt")
    return tuple(p for p, _ in chain), tuple(o for _, o in chain)
