"""Q/DQ where TensorRT's explicit quantization fuses beyond the convolution inputs.

``quantize_static`` (see ``int8.py``) puts Q/DQ on the inputs of Conv/MatMul/Gemm only. TensorRT's
Q/DQ placement recommendations (developer guide, "Working with Quantized Types", "Q/DQ
Layer-Placement Recommendations"; NVIDIA Model Optimizer's ONNX INT8 placement does the same) also
want:

- the **residual input of an Add that follows a convolution** quantized: with it the Add fuses into
  the convolution's epilogue (conv + residual add in INT8, no reformat of the skip tensor to FP32);
- the **input of pooling** (AveragePool, GlobalAveragePool, MaxPool) quantized, so the pool runs in
  INT8 instead of behind a reformat.

Only the targeted consumer's input is rewired (other readers keep the FP32 value); the Add output
and the convolution branch get nothing. Scales come from the calibrated ranges, symmetric int8 as
the rest of the model (ORT's ActivationSymmetric: [-127, 127], zero point 0). Checked here on graph
structure and on ONNX Runtime's CPU provider (as written); the fusion itself is TensorRT's, not
measured on these machines (no TensorRT is installable here).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from batchforge.errors import CalibrationError

# producers whose epilogue can take the Add (a BatchNormalization right after one counts as it:
# TensorRT folds it into the convolution before fusing the Add)
FUSING_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING = ("AveragePool", "GlobalAveragePool", "MaxPool")
INT8_LIMIT = 127  # symmetric int8 as quantize_static writes it with ActivationSymmetric: [-127, 127]
MIN_QDQ_OPSET = 10  # QuantizeLinear / DequantizeLinear exist from opset 10
RECORD_KEYS = ("residual_add", "pooling", "no_range")


def add_trt_fusion_qdq(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]]
                       ) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """A copy of ``model`` with Q/DQ on residual Add inputs and on pooling inputs (see the module).

    Args:
        model: the TensorRT Q/DQ model as ``quantize_static`` wrote it (not modified).
        ranges: calibrated (min, max) in float per tensor name, as in ORT's calibration cache.
    Returns:
        The new model and what was added, tensor names in graph order: ``residual_add`` (residual
        inputs now read through Q/DQ), ``pooling`` (pooling inputs now read through Q/DQ) and
        ``no_range`` (wanted Q/DQ but had no range, or a zero or non-finite one: left FP32). A tensor
        that feeds both an Add and a pool is listed under both, with one Q/DQ pair.
    Raises:
        CalibrationError: the model's default-domain opset predates QuantizeLinear.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _require_qdq_opset(out)
    placement = _Placement(out.graph, ranges)
    body: list[onnx.NodeProto] = []
    for node in out.graph.node:
        slot, kind = None, ""
        if node.op_type == "Add":
            slot, kind = placement.residual_slot(node), "residual_add"
        elif node.op_type in POOLING and placement.quantizable(node.input[0]):
            slot, kind = 0, "pooling"
        if slot is not None:
            body.extend(placement.rewire(node, slot, kind))  # the pair goes right before its first reader
        body.append(node)
    out.graph.ClearField("node")
    out.graph.node.extend(body)
    return out, placement.record


class _Placement:
    """What the pass knows about one graph: producers, constants, names taken, pairs made."""

    def __init__(self, graph: onnx.GraphProto, ranges: Mapping[str, tuple[float, float]]) -> None:
        self.graph = graph
        self.ranges = ranges
        self.producers = {o: n for n in graph.node for o in n.output if o}
        self.position = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        self.constants = ({t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
                          | {o for n in graph.node if n.op_type == "Constant" for o in n.output})
        self.taken = _all_names(graph)
        self.record: dict[str, list[str]] = {key: [] for key in RECORD_KEYS}
        self.twins: dict[str, str | None] = {}  # tensor -> its DQ output (None: no usable range)

    def quantizable(self, tensor: str) -> bool:
        """Not empty, not a constant, not already the output of a DequantizeLinear."""
        producer = self.producers.get(tensor)
        return bool(tensor) and tensor not in self.constants and (
            producer is None or producer.op_type != "DequantizeLinear")

    def backbone(self, tensor: str) -> onnx.NodeProto | None:
        """The Conv/ConvTranspose/Gemm/MatMul that makes ``tensor``, directly or through a BN."""
        node = self.producers.get(tensor)
        if node is not None and node.op_type == "BatchNormalization":
            node = self.producers.get(node.input[0])
        return node if node is not None and node.op_type in FUSING_PRODUCERS else None

    def residual_slot(self, add: onnx.NodeProto) -> int | None:
        """Which input of ``add`` is the residual to quantize, or None when it is no residual Add."""
        inputs = list(add.input)
        if len(inputs) != 2 or inputs[0] == inputs[1] or any(not t or t in self.constants for t in inputs):
            return None
        backbones = [self.backbone(t) for t in inputs]
        if backbones[0] is None and backbones[1] is None:
            return None
        if backbones[0] is not None and backbones[1] is not None:
            if backbones[0].output[0] == backbones[1].output[0]:  # one conv read twice: no skip branch
                return None
            slot = self.skip_branch(inputs)
        else:
            slot = 0 if backbones[1] is not None else 1
        fused = backbones[1 - slot]
        if fused is None or not self.quantizable(inputs[slot]) or fused.output[0] in self.ancestors(inputs[slot]):
            # a residual computed from the fusing conv's own output cannot enter its epilogue
            return None
        return slot

    def skip_branch(self, inputs: Sequence[str]) -> int:
        """Both inputs come from convolutions (a projection shortcut): the skip branch is the one
        with fewer nodes back to where the two branches split, as in Model Optimizer. Graph order
        alone would get ResNet wrong: torch exports torchvision's Bottleneck with the downsample
        conv after conv3, so the later producer is the skip branch there. A tie, or no common
        ancestor, falls back to the producer earlier in the graph (a shortcut is usually computed
        first, where the exporter keeps the source order)."""
        depth = [self.ancestors(t) for t in inputs]
        common = [t for t in depth[0] if t in depth[1]]
        if common:
            split = min(common, key=lambda t: depth[0][t] + depth[1][t])
            if depth[0][split] != depth[1][split]:
                return 0 if depth[0][split] < depth[1][split] else 1
        return 0 if self.position[inputs[0]] < self.position[inputs[1]] else 1

    def ancestors(self, tensor: str) -> dict[str, int]:
        """Every non-constant tensor ``tensor`` is computed from, with the fewest nodes to it."""
        depth, queue = {tensor: 0}, deque([tensor])
        while queue:
            current = queue.popleft()
            producer = self.producers.get(current)
            for name in producer.input if producer is not None else ():
                if name and name not in depth and name not in self.constants:
                    depth[name] = depth[current] + 1
                    queue.append(name)
        return depth

    def rewire(self, node: onnx.NodeProto, slot: int, kind: str) -> list[onnx.NodeProto]:
        """Points ``node.input[slot]`` at the tensor's Q/DQ twin (made on first use, then shared);
        returns the nodes made now (none on reuse or without a range)."""
        tensor = node.input[slot]
        made: list[onnx.NodeProto] = []
        if tensor not in self.twins:
            scale = symmetric_scale(self.ranges.get(tensor))
            if scale is None:
                self.record["no_range"].append(tensor)
                self.twins[tensor] = None
            else:
                made = self.qdq_pair(tensor, scale)
                self.twins[tensor] = made[-1].output[0]
        twin = self.twins[tensor]
        if twin is None:
            return []
        node.input[slot] = twin
        if tensor not in self.record[kind]:
            self.record[kind].append(tensor)
        return made

    def qdq_pair(self, tensor: str, scale: np.float32) -> list[onnx.NodeProto]:
        q, dq = self.fresh(f"{tensor}_trtq"), self.fresh(f"{tensor}_trtdq")
        scale_name, zero_name = self.fresh(f"{tensor}_trtscale"), self.fresh(f"{tensor}_trtzp")
        self.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), scale_name),
                                       numpy_helper.from_array(np.array(0, np.int8), zero_name)])
        return [helper.make_node("QuantizeLinear", [tensor, scale_name, zero_name], [q], name=q),
                helper.make_node("DequantizeLinear", [q, scale_name, zero_name], [dq], name=dq)]

    def fresh(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``... : the first no node, tensor or graph uses."""
        candidate, k = name, 1
        while candidate in self.taken:
            candidate, k = f"{name}_{k}", k + 1
        self.taken.add(candidate)
        return candidate


def symmetric_scale(span: tuple[float, float] | None) -> np.float32 | None:
    """max(|min|, |max|) / 127 as float32 (what quantize_static computes for symmetric int8), or
    None when there is no range or it is zero, non-finite or too small for a float32 scale."""
    if span is None:
        return None
    low, high = float(span[0]), float(span[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    scale = np.float32(max(abs(low), abs(high)) / INT8_LIMIT)
    return scale if scale >= np.finfo(np.float32).tiny else None


def _all_names(graph: onnx.GraphProto) -> set[str]:
    """Every node, tensor and value name in ``graph`` and its subgraphs."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs
            for sub in subgraphs:
                names |= _all_names(sub)
    names.discard("")
    return names


def _require_qdq_opset(model: onnx.ModelProto) -> None:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version < MIN_QDQ_OPSET:
        raise CalibrationError(f"TensorRT fusion Q/DQ needs default-domain opset >= {MIN_QDQ_OPSET}, the model has "
                               f"{version}", hint="quantize the model with quantize_static first (it raises the opset)")


# Placement is kept when the model's min output cosine against FP32 on the calibration agreement
# items (as written: what TensorRT's int8 arithmetic approximates) drops by at most this: every
# Q/DQ added costs a rounding, and one that costs accuracy costs it on TensorRT too.
PLACEMENT_SLACK = 5e-4


def place_in_file(path: Path, cache: Path, agreement: Callable[[Path], dict[str, object]],
                  before: dict[str, object]) -> dict[str, object]:
    """Adds the fusion Q/DQ to the TensorRT model at ``path`` (ranges from the ORT calibration
    ``cache``) and keeps it when ``agreement(path)`` stays within ``PLACEMENT_SLACK`` of
    ``before`` (min/mean cosine of the model as it was) and passes the gate's checks where it did
    (``passes_gate_checks``, calibration/criterion.py); returns the record (``kept``, what was
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
    # within the slack of the model as it was, and passing the gate's checks wherever it did
    kept = (effect["min_cosine"] >= before["min_cosine"] - PLACEMENT_SLACK  # type: ignore[operator]
            and (bool(effect.get("passes_gate_checks", True)) or not before.get("passes_gate_checks", False)))
    if kept:
        trial.replace(path)
    else:
        trial.unlink()
    return {"kept": kept, **added, "effect": effect,
            **({} if kept else {"reason": f"min output cosine {effect['min_cosine']:.4f} against "
                                          f"{before['min_cosine']:.4f} without it (slack {PLACEMENT_SLACK})"
                                          + ("" if effect.get("passes_gate_checks", True) else
                                             f"; fails {', '.join(effect.get('failed') or {})}")})}
