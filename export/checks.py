"""Checks run on every exported ONNX file; each failure stops the export with a clear message."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from batchforge.errors import ExportError
from batchforge.metrics import ParityRow
from batchforge.runtime.spec import ModelSpec

SHAPE_OPS = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0}


@dataclass(frozen=True)
class LintFinding:
    node: str
    op_type: str
    detail: str

    def __str__(self) -> str:
        return f"{self.op_type} node {self.node!r}: {self.detail}"


def run_checker(path: str | os.PathLike[str]) -> None:
    """``onnx.checker`` with full_check (strict shape inference) on the saved file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from None


def check_external_data(model: onnx.ModelProto, model_dir: str | os.PathLike[str]) -> list[str]:
    """Every external data location must resolve to a file inside ``model_dir``.

    Returns:
        The relative locations used.
    """
    root = Path(model_dir).resolve()
    locations = set()
    for tensor in _all_initializers(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if target.parent != root or not location:
            raise ExportError(
                f"initializer {tensor.name!r} points at external data {location!r} outside the "
                f"model folder {root}; refusing to load it"
            )
        locations.add(location)
    return sorted(locations)


def _all_initializers(model: onnx.ModelProto):
    def walk(graph: onnx.GraphProto):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                for sub in attr.graphs:
                    yield from walk(sub)
    yield from walk(model.graph)


def check_symbolic_batch(model: onnx.ModelProto) -> None:
    """Every graph input and output must have a symbolic (named) leading dim."""
    bad = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            dims = value.type.tensor_type.shape.dim
            if not dims or not dims[0].dim_param:
                shown = [d.dim_param or d.dim_value for d in dims]
                bad.append(f"{kind} {value.name!r} has shape {shown}")
    if bad:
        raise ExportError(
            "the batch dim is not symbolic: " + "; ".join(bad),
            hint="export with a dynamic batch Dim (the exporter specialised it)",
        )


def check_symbolic_dims(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Every named dim with a range in the spec must be symbolic in the graph's inputs (an
    exporter that specialised P-Net's height to the trace size fails here, not in the field)."""
    bad = []
    for value, tensor in zip(model.graph.input, spec.inputs):
        dims = value.type.tensor_type.shape.dim
        for axis, name in enumerate(tensor.shape):
            if axis and isinstance(name, str) and name in spec.dims and axis < len(dims) and not dims[axis].dim_param:
                bad.append(f"input {value.name!r} dim {axis} ({name}) is fixed at {dims[axis].dim_value}")
    if bad:
        raise ExportError("named dims are not symbolic in the graph: " + "; ".join(bad),
                          hint="the model specialised them: use shape-derived sizes in forward()")


def lint_batch_specialisation(model: onnx.ModelProto, trace_batch: int) -> list[LintFinding]:
    """Finds shape constants that equal the trace batch: a batch size baked into the graph.

    Looks at the shape/repeats input of Reshape, Expand, Tile and ConstantOfShape when it is a
    constant whose first element equals ``trace_batch``.
    """
    # shape constants are a few int64s, stored inline; external tensors are weights and are not
    # read here (to_array would resolve them against the working directory)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                 if t.data_location != onnx.TensorProto.EXTERNAL}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    findings = []
    for node in model.graph.node:
        index = SHAPE_OPS.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        value = constants.get(node.input[index])
        if value is None or value.size == 0 or value.ndim != 1:
            continue
        if int(value[0]) == trace_batch:
            findings.append(LintFinding(
                node.name or "<unnamed>", node.op_type,
                f"constant shape {value.tolist()} starts with the trace batch {trace_batch}",
            ))
    return findings


def check_export_parity(rows: Sequence[ParityRow], max_rel: float, min_cosine: float) -> None:
    """Raises ExportError listing every row past the limits (all failures, then one raise)."""
    failures = [
        f"batch {r.batch} output {r.output!r}: max_rel {r.max_rel:.2e} (limit {max_rel:.0e}), "
        f"cosine {r.cosine:.7f} (limit {min_cosine})"
        for r in rows if r.max_rel > max_rel or r.cosine < min_cosine
    ]
    if failures:
        raise ExportError("ONNX output differs from PyTorch: " + "; ".join(failures))
