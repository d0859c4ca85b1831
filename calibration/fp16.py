"""FP16: an ONNX-level conversion that keeps overflow-prone nodes in FP32 (AutoCast-like).

Every float tensor of the FP32 graph is measured on the calibration set; any node with an input
or output whose magnitude could overflow FP16 stays in FP32, together with the user's block list.
Graph inputs and outputs keep their FP32 types, so callers see no difference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from batchforge.calibration.activations import float_tensors, load_model, stream_activations
from batchforge.calibration.data import CalibrationData
from batchforge.errors import CalibrationError

FP16_MAX = 65504.0
# A node whose calibrated |activation| exceeds 2**14 stays FP32: a 4x margin below the FP16
# maximum (65504) for inputs with more contrast or energy than the calibration set.
SAFE_MAGNITUDE = 16384.0


@dataclass(frozen=True)
class KeptNode:
    node: str
    op_type: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason}


def measure_magnitudes(model: onnx.ModelProto, data: CalibrationData, batch_size: int = 1) -> dict[str, float]:
    """max |value| of every float tensor over the calibration set (graph inputs included).

    One item per run: every intermediate tensor is an output here, all held at once (batch 4
    peaked at 6.35 GB resident in the main job's ``convert --all``)."""
    names = float_tensors(model)
    peaks = dict.fromkeys(names, 0.0)
    for inputs in data.batches(batch_size):
        for name, value in inputs.items():
            peaks[name] = max(peaks.get(name, 0.0), float(np.max(np.abs(value))))
    for values in stream_activations(model, names, data.batches(batch_size)):
        for name, value in values.items():
            if value.size:
                peaks[name] = max(peaks[name], float(value.max()), -float(value.min()))
    return peaks


def nodes_to_keep(model: onnx.ModelProto, peaks: dict[str, float], block: Sequence[str],
                  threshold: float = SAFE_MAGNITUDE) -> list[KeptNode]:
    """Nodes that stay FP32: overflow-prone ones (measured) and the user's block list."""
    blocked = set(block)
    known_ops = {n.op_type for n in model.graph.node}
    known_names = {n.name for n in model.graph.node}
    unknown = sorted(b for b in blocked if b not in known_ops and b not in known_names)
    if unknown:
        raise CalibrationError(f"--block {', '.join(unknown)}: no node or op type of that name in the graph")
    kept = []
    for node in model.graph.node:
        if node.name in blocked or node.op_type in blocked:
            kept.append(KeptNode(node.name, node.op_type, "user block list"))
            continue
        worst = max((peaks.get(t, 0.0), t) for t in [*node.input, *node.output] if t)
        if worst[0] > threshold:
            kept.append(KeptNode(node.name, node.op_type,
                                 f"|{worst[1]}| reaches {worst[0]:.4g} > {threshold:.0f} on calibration data"))
    return kept


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turns tensor-valued Constant nodes into initializers, in place; returns how many.

    onnxruntime's converter casts a Constant feeding an FP32-only input (Resize scales) once per
    consumer under one name, so a Constant shared by two Resizes breaks SSA; initializers are
    handled correctly.
    """
    keep, moved = [], 0
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"} and not node.domain:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs["value"].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


def convert_to_fp16(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                    data: CalibrationData, block: Sequence[str] = ()) -> dict[str, object]:
    """Writes the FP16 model; returns the report fields (kept nodes, peaks, threshold)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = load_model(fp32_path)
    constants_to_initializers(model)
    peaks = measure_magnitudes(model, data)
    kept = nodes_to_keep(model, peaks, block)
    unnamed = [i for i, n in enumerate(model.graph.node) if not n.name]
    for index in unnamed:  # the converter's block list is by node name
        model.graph.node[index].name = f"node_{index}_{model.graph.node[index].op_type}"
    converted = convert_float_to_float16(
        model, keep_io_types=True, node_block_list=[k.node for k in kept] or None,
        max_finite_val=FP16_MAX, disable_shape_infer=False)
    OnnxModel(converted).topological_sort()  # the converter appends its I/O casts at the end
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise CalibrationError(f"FP16 model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    onnx.save(converted, str(Path(out_path)))
    largest = sorted(peaks.items(), key=lambda kv: -kv[1])[:5]
    return {
        "threshold": SAFE_MAGNITUDE,
        "threshold_reason": "4x margin below the FP16 maximum 65504",
        "kept_fp32": [k.as_dict() for k in kept],
        "largest_activations": [{"tensor": n, "max_abs": v} for n, v in largest],
        "nodes": len(model.graph.node),
    }
