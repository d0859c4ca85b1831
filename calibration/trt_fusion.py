"""Q/DQ where TensorRT's explicit quantization fuses beyond the convolution inputs.

The TensorRT form from ``quantize_static`` quantizes the inputs of Conv/MatMul/Gemm only. TensorRT's
Q/DQ placement recommendations (developer guide, "Q/DQ Layer-Placement Recommendations"; NVIDIA
Model Optimizer's ONNX INT8 placement does the same) also want:

- the **residual input of an Add that follows a convolution** quantized, so the Add fuses into the
  convolution's epilogue (conv + residual add in INT8, no reformat to FP32 before it);
- the **input of pooling** (MaxPool, AveragePool, GlobalAveragePool) quantized, so it runs in INT8.

Only the targeted consumer's input is rewired (other readers keep the FP32 value); the Add output
and the convolution branch get nothing; scales are the calibrated ranges, symmetric int8 as the
rest of the model. Written to the TensorRT 10/11 docs; checked here on graph structure and on ONNX
Runtime (as written), not on TensorRT (none is installable on these machines).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

PRODUCERS_THAT_FUSE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING = ("MaxPool", "AveragePool", "GlobalAveragePool")


def add_trt_fusion_qdq(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]]
                       ) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """A copy of ``model`` with Q/DQ on residual Add inputs and pooling inputs (see the module).

    Args:
        model: the TensorRT Q/DQ model as ``quantize_static`` wrote it.
        ranges: calibrated (min, max) per tensor name.
    Returns:
        The new model and what was added: ``{"residual_add": [...], "pooling": [...],
        "no_range": [...]}`` (tensor names; ``no_range``: wanted but without a usable range).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producers = {o: n for n in graph.node for o in n.output}
    initializers = {t.name for t in graph.initializer}
    names = {n.name for n in graph.node} | {o for n in graph.node for o in n.output} | initializers \
        | {v.name for v in graph.input}
    record: dict[str, list[str]] = {"residual_add": [], "pooling": [], "no_range": []}
    position = {id(n): i for i, n in enumerate(graph.node)}
    made: dict[str, str] = {}  # tensor -> its dequantized twin (one Q/DQ pair per tensor)
    inserts: list[tuple[int, list[onnx.NodeProto]]] = []

    def is_dequantized(tensor: str) -> bool:
        node = producers.get(tensor)
        return node is not None and node.op_type == "DequantizeLinear"

    def fused_producer(tensor: str) -> onnx.NodeProto | None:
        node = producers.get(tensor)
        return node if node is not None and node.op_type in PRODUCERS_THAT_FUSE else None

    def quantized(tensor: str, before: onnx.NodeProto, kind: str) -> str | None:
        if tensor in made:
            record[kind].append(tensor)
            return made[tensor]
        low, high = ranges.get(tensor, (0.0, 0.0))
        bound = max(abs(float(low)), abs(float(high)))
        if not np.isfinite(bound) or bound == 0.0:
            record["no_range"].append(tensor)
            return None
        q, dq = _unique(f"{tensor}_trtq", names), _unique(f"{tensor}_trtdq", names)
        scale, zero = _unique(f"{tensor}_trtscale", names), _unique(f"{tensor}_trtzero", names)
        graph.initializer.extend([numpy_helper.from_array(np.array(bound / 127.0, np.float32), scale),
                                  numpy_helper.from_array(np.array(0, np.int8), zero)])
        inserts.append((position[id(before)], [
            helper.make_node("QuantizeLinear", [tensor, scale, zero], [q], name=q),
            helper.make_node("DequantizeLinear", [q, scale, zero], [dq], name=dq)]))
        made[tensor] = dq
        record[kind].append(tensor)
        return dq

    for node in list(graph.node):
        if node.op_type == "Add" and len(node.input) == 2 and not any(i in initializers for i in node.input):
            branches = [fused_producer(i) for i in node.input]
            if not any(branches):
                continue
            if all(branches):
                # both inputs are convolutions: the earlier one is the skip branch (a projection
                # shortcut); the later one is the conv TensorRT fuses the Add into
                residual = min(range(2), key=lambda k: position[id(branches[k])])
            else:
                residual = 0 if branches[1] is not None else 1
            tensor = node.input[residual]
            if not is_dequantized(tensor):
                twin = quantized(tensor, node, "residual_add")
                if twin is not None:
                    node.input[residual] = twin
        elif node.op_type in POOLING and not is_dequantized(node.input[0]):
            twin = quantized(node.input[0], node, "pooling")
            if twin is not None:
                node.input[0] = twin
    nodes = list(graph.node)
    for index, pair in sorted(inserts, key=lambda item: -item[0]):  # from the back: indices stay valid
        nodes[index:index] = pair
    del graph.node[:]
    graph.node.extend(nodes)
    return out, record


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


# Placement is kept when the model's min output cosine against FP32 on the calibration agreement
# items (as written: what TensorRT's int8 arithmetic approximates) drops by at most this: every
# Q/DQ added costs a rounding, and one that costs accuracy costs it on TensorRT too.
PLACEMENT_SLACK = 5e-4


def place_in_file(path: Path, cache: Path, agreement: Callable[[Path], dict[str, float]],
                  before: dict[str, float]) -> dict[str, object]:
    """Adds the fusion Q/DQ to the TensorRT model at ``path`` (ranges from the ORT calibration
    ``cache``) and keeps it when ``agreement(path)`` stays within ``PLACEMENT_SLACK`` of
    ``before`` (min/mean cosine of the model as it was); returns the record (``kept``, what was
    added, the agreement measured)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    ranges = {}
    for name, data in load_tensors_data(cache).data.items():
        low, high = (np.asarray(v, np.float64) for v in data.range_value)
        if low.size == 1 and high.size == 1:  # per-tensor ranges (a per-channel one is not for this)
            ranges[name] = (float(low.reshape(())), float(high.reshape(())))
    model = onnx.load(str(path))
    placed, added = add_trt_fusion_qdq(model, ranges)
    if not added["residual_add"] and not added["pooling"]:
        return {"kept": False, **added, "reason": "nothing to add"}
    trial = path.with_name(path.name + ".placed")
    onnx.save(placed, str(trial))
    effect = agreement(trial)
    kept = effect["min_cosine"] >= before["min_cosine"] - PLACEMENT_SLACK
    if kept:
        trial.replace(path)
    else:
        trial.unlink()
    return {"kept": kept, **added, "effect": effect,
            **({} if kept else {"reason": f"min output cosine {effect['min_cosine']:.4f} against "
                                          f"{before['min_cosine']:.4f} without it (slack {PLACEMENT_SLACK})"})}
