"""torch -> ONNX with a dynamic batch axis and the spec's named dims (dynamo exporter; TorchScript
only as a fallback)."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from batchforge.errors import WRITE_ERRNOS, ExportError, storage_error
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
    """What was used: exporter name, why the fallback was taken (if it was), external data."""

    exporter: str
    fallback_reason: str | None
    external_data: bool


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
                options: ExportOptions = ExportOptions()) -> ExportInfo:
    """Exports ``module`` to ``path`` with the batch dim of every input and output dynamic.

    The dynamo exporter (torch.export) runs first; if it fails and ``allow_fallback`` is set,
    the TorchScript exporter runs and the reason is recorded.
    """
    path = Path(path)
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
        with _quiet():
            program = torch.onnx.export(
                module, args, None, dynamo=True, opset_version=options.opset,
                input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic_shapes, verbose=False, external_data=external,
            )
            program.save(str(path), external_data=external)
        return ExportInfo("torch.onnx.export(dynamo=True)", None, external)
    except Exception as exc:  # the dynamo exporter raises many types; all mean "try fallback"
        _raise_if_disk_full(exc, path)  # ... but a full disk: the fallback would only fill it again
        if not options.allow_fallback:
            raise ExportError(f"dynamo export of {spec.name!r} failed: {_first_line(exc)}",
                              hint="fix the model for torch.export, or allow the TorchScript fallback") from None
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
    try:
        with _quiet():
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
        raise ExportError(
            f"export of {spec.name!r} failed with both exporters: dynamo ({reason}); "
            f"TorchScript ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    return ExportInfo("torch.onnx.export(dynamo=False) [TorchScript fallback]", reason, external)


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


@contextlib.contextmanager
def _quiet():
    """Keeps exporter chatter (progress prints, deprecation notes) off the user's terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield
