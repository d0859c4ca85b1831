"""torch -> ONNX with a dynamic batch axis and the spec's named dims (dynamo exporter; TorchScript
only as a fallback)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from batchforge.errors import WRITE_ERRNOS, ExportError, storage_error
from batchforge.export.torch_log import EXPORT_LOG, ExportLog, captured, strip_ansi
from batchforge.runtime.spec import ModelSpec

DEFAULT_OPSET = 18
DEFAULT_TRACE_BATCH = 2
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of parameters; protobuf caps a file at 2 GiB


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``trace_batch`` >= 2 so nothing specialises to a batch of 1."""

    opset: int = DEFAULT_OPSET
    trace_batch: int = DEFAULT_TRACE_BATCH
    allow_fallback: bool = True

    def __post_init__(self) -> None:
        if self.trace_batch < 2:
            raise ExportError(f"trace batch must be >= 2 (a batch of 1 specialises), got {self.trace_batch}")


@dataclass(frozen=True)
class ExportInfo:
    """What was used: exporter name, why the fallback was taken (if it was: the torch.export
    failure in one line, and its category), external data."""

    exporter: str
    fallback_reason: str | None
    fallback_category: str | None
    external_data: bool


class FailureCategory(Enum):
    """Why torch.export failed, read from the exception chain; ``advice`` says what to do."""

    DATA_DEPENDENT = "data-dependent control flow"
    SHAPE_CONSTRAINT = "dynamic shape constraint violation"
    UNSUPPORTED_OPERATOR = "unsupported operator"
    OTHER = "other"

    @property
    def advice(self) -> str:
        return {
            FailureCategory.DATA_DEPENDENT:
                "forward() branches on tensor values (an `if` on x.sum(), .item(), a data-dependent "
                "loop): write the branch with torch.where or torch.cond, or move it out of forward()",
            FailureCategory.SHAPE_CONSTRAINT:
                "forward() fixes a dim the spec declares dynamic (the batch or a named dim): use "
                "shape-derived sizes (x.shape[0] / -1) instead of constants",
            FailureCategory.UNSUPPORTED_OPERATOR:
                "an operator has no ONNX translation: replace it in forward() with supported ops",
            FailureCategory.OTHER: "fix the model for torch.export (see the traceback in export.log)",
        }[self]


# (category, exception type names, message fragments) in the order they are tried
_CATEGORY_SIGNS = (
    (FailureCategory.DATA_DEPENDENT, {"GuardOnDataDependentSymNode", "DataDependentOutputException"},
     ("could not guard on data-dependent", "data-dependent", "data dependent",
      "dynamic control flow is not supported")),  # the last: torch.export's strict mode
    (FailureCategory.SHAPE_CONSTRAINT, {"ConstraintViolationError"}, ("constraints violated",)),
    (FailureCategory.UNSUPPORTED_OPERATOR,
     {"DispatchError", "UnsupportedOperatorException", "UnsupportedOperatorError", "Unsupported"},
     ("no onnx function found", "unsupported operator", "is not supported", "not implemented for")),
)


@dataclass(frozen=True)
class ExporterFailure:
    """A torch.export failure in one line: its category and cause (colour codes stripped)."""

    category: FailureCategory
    cause: str

    @classmethod
    def of(cls, exc: BaseException) -> ExporterFailure:
        """Reads ``exc`` and its causes: torch.onnx wraps torch.export's own error (the cause
        named here) in a TorchExportError whose first line says only "Failed to export"."""
        chain = _exception_chain(exc)
        names = {t.__name__ for e in chain for t in type(e).__mro__}
        text = strip_ansi(" ".join(str(e) for e in chain)).lower()
        category = next((c for c, types, words in _CATEGORY_SIGNS
                         if names & types or any(w in text for w in words)), FailureCategory.OTHER)
        root = chain[-1]
        where = _user_frame(chain)
        first = " ".join(strip_ansi(_first_line(root)).split())
        cause = f"{type(root).__name__}: {first}" + (f" (at {where})" if where else "")
        return cls(category, cause[:400])

    def __str__(self) -> str:
        return f"{self.category.value}: {self.cause}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (explicit causes, else unsuppressed context)."""
    chain = [exc]
    while len(chain) < 20:
        last = chain[-1]
        nxt = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
    return chain


def _user_frame(chain: list[BaseException]) -> str | None:
    """The innermost traceback line outside torch (the user's forward()), as "FILE:LINE: code"."""
    libraries = [sys.modules[name].__file__ for name in ("torch", "onnxscript", "onnx_ir", "onnx")
                 if getattr(sys.modules.get(name), "__file__", None)]
    skipped = tuple(os.path.dirname(p) + os.sep for p in (*libraries, __file__, os.__file__))
    for exc in reversed(chain):
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if os.path.isfile(f.filename) and not f.filename.startswith(skipped)]
        if frames:
            frame = frames[-1]
            return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return None


def example_inputs(spec: ModelSpec, batch: int, seed: int = 0,
                   sizes: Mapping[str, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Seeded example inputs of the spec's shapes (float inputs ~ N(0, 1)); a named dim takes its
    size from ``sizes``, else the opt of its range."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for t in spec.inputs:
        opt = spec.input_shapes(t)[1][1:]
        shape = (batch, *[int(sizes[d]) if sizes and isinstance(d, str) and d in sizes else int(o)
                          for d, o in zip(t.item_shape, opt)])
        dtype = getattr(torch, t.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        else:
            tensors.append(torch.randint(0, 255, shape, generator=generator).to(dtype))
    return tuple(tensors)


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.state_dict().values())


def export_onnx(module: torch.nn.Module, spec: ModelSpec, path: str | os.PathLike[str],
                options: ExportOptions = ExportOptions(), log: ExportLog | None = None) -> ExportInfo:
    """Exports ``module`` to ``path`` with the batch dim of every input and output dynamic.

    The dynamo exporter (torch.export) runs first; if it fails and ``allow_fallback`` is set,
    the TorchScript exporter runs and the failure (one line and its category) is recorded.

    Args:
        log: receives both exporters' output and the dynamo failure's traceback (default: a log
            next to ``path``, not written); error messages name its path.
    """
    path = Path(path)
    log = log if log is not None else ExportLog(path.parent / EXPORT_LOG)
    module = module.eval()
    args = example_inputs(spec, options.trace_batch)
    external = _param_bytes(module) > EXTERNAL_DATA_THRESHOLD
    input_names = list(spec.input_names)
    output_names = list(spec.outputs)
    try:
        batch = torch.export.Dim("batch", min=1)
        named = {d: torch.export.Dim(d, min=r.min, max=r.max) for d, r in spec.dims.items()}
        arg_names = _forward_arg_names(module, len(args))
        dynamic_shapes = {name: {0: batch, **{axis: named[d] for axis, d in enumerate(t.shape)
                                              if isinstance(d, str) and d in named}}
                          for name, t in zip(arg_names, spec.inputs)}
        with captured(log, "torch.onnx.export(dynamo=True): torch.export", path.parent):
            program = torch.onnx.export(
                module, args, None, dynamo=True, opset_version=options.opset,
                input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic_shapes, verbose=False, external_data=external,
            )
            program.save(str(path), external_data=external)
        return ExportInfo("torch.onnx.export(dynamo=True)", None, None, external)
    except Exception as exc:  # the dynamo exporter raises many types; all mean "try fallback"
        _raise_if_disk_full(exc, path)  # ... but a full disk: the fallback would only fill it again
        failure = ExporterFailure.of(exc)
        log.add_exception(f"torch.export failed ({failure.category.value}): full traceback", exc)
        if not options.allow_fallback:
            raise ExportError(
                f"torch.export of {spec.name!r} failed ({failure.category.value}): {failure.cause}; "
                f"--no-fallback kept the TorchScript exporter from running; torch's output and the full "
                f"traceback: {log.path}",
                hint=f"{failure.category.advice}, or drop --no-fallback") from None
    try:
        with captured(log, "torch.onnx.export(dynamo=False): the TorchScript fallback", path.parent):
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=options.opset,
                input_names=input_names, output_names=output_names,
                dynamic_axes={**{n: {0: "batch"} for n in output_names},
                              **{t.name: {0: "batch", **{axis: d for axis, d in enumerate(t.shape)
                                                         if isinstance(d, str) and d in spec.dims}}
                                 for t in spec.inputs}},
                external_data=external,
            )
    except Exception as exc:
        _raise_if_disk_full(exc, path)
        log.add_exception("TorchScript export failed: full traceback", exc)
        raise ExportError(
            f"export of {spec.name!r} failed with both exporters: torch.export ({failure}); "
            f"TorchScript ({type(exc).__name__}: {_first_line(exc)}); torch's output: {log.path}",
            hint=failure.category.advice,
        ) from None
    return ExportInfo("torch.onnx.export(dynamo=False) [TorchScript fallback]", failure.cause,
                      failure.category.value, external)


def _raise_if_disk_full(exc: Exception, path: Path) -> None:
    """A write that failed for want of space (or a read-only file system) is a StorageError
    naming ``path`` and the errno, not an exporter failure."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        raise storage_error(exc, path) from None


def _forward_arg_names(module: torch.nn.Module, count: int) -> list[str]:
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) < count:
        raise ExportError(f"forward() takes {len(params)} positional inputs, the spec has {count}")
    return [p.name for p in params[:count]]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
