"""INT8: static Q/DQ quantization (onnxruntime.quantization) aimed at the parity gate.

The model is calibrated once per range method (ranges cached for the run) and fully quantized;
each candidate (method x weight granularity, in the order given) is judged by the gate's own
checks for the model's family on the calibration items (calibration/criterion.py) until one
passes. If the winner fails, every quantized node is ranked by what its quantization alone does
to the model's outputs: the FP32 graph with just that node's Q/DQ inputs spliced in (the same
scales and int8 weights), scored by the criterion's damage (how far it moves every check toward
its limit), then by 1 - mean output cosine, on the all-int8 candidate's two worst items. The
fewest nodes of that ranking kept FP32 that make every check pass are searched by doubling and
bisection, re-quantizing with the cached ranges; when none does, the candidate closest to
passing is kept. Every step is recorded.

Ranking by the output effect replaced ranking by the error a node adds at its own output: that
local error says nothing about how much of it survives to the outputs. Measured on
reid_efficientnet_b3 (a proxy with PyTorch fake-quant, 16 nodes kept FP32): mean cosine 0.986
against 0.960 for the local ranking in the real pipeline.

Q/DQ settings target TensorRT's explicit quantization: symmetric int8 activations and weights
(zero point 0), per-channel weights, Conv/MatMul(const B)/Gemm inputs quantized, biases left FP32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import Message

from batchforge.calibration.activations import load_model, session, with_intermediate_outputs
from batchforge.calibration.criterion import GateCriterion, Verdict, fewest_passing
from batchforge.calibration.data import CalibrationData, FeedReader
from batchforge.calibration.ranges import write_ranges
from batchforge.errors import CalibrationError
from batchforge.metrics import rowwise_cosine
from batchforge.progress import progress

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
METHODS = ("minmax", "entropy", "percentile")
WEIGHTS = {"per-channel": (True,), "per-tensor": (False,), "both": (True, False)}  # -> per_channel tried
SENSITIVITY_ITEMS = 2  # items (one batch) scored per single-node-quantized model: the worst two
EVAL_ITEMS = 16  # items used to measure output agreement after each exclusion step, at least ...
# ... and more while their inputs hold at most as many values as 16 ImageNet-sized images: a small
# network's worst value over 16 small inputs (P-Net's pyramid levels, R-Net's 24x24 crops) missed
# what the gate's evaluation set then found (P-Net face probability 0.12 on held-out photographs
# where 16 levels showed 0.05); items that small cost little to run more of
EVAL_VALUES = 16 * 3 * 224 * 224
# Entropy (KL) histograms: TensorRT's 2048 bins searched for the threshold whose 128-level
# quantization loses least. quantize_static's own entropy default is 128 bins for 128 levels,
# which leaves the search a single candidate, the full range: MinMax under another name
# (measured: keypoints' scales identical, and the same calibration result on four zoo models).
ENTROPY_BINS = 2048
ENTROPY_LEVELS = 128


@dataclass(frozen=True)
class Int8Options:
    """method: one of METHODS, or several comma-separated (tried in order: the first that passes
    the gate criterion wins, else the closest);
    weights: per-channel (default), per-tensor or both (per-channel tried first);
    target_cosine: the mean output cosine against FP32 a candidate must reach besides the gate's
    checks; max_excluded: most nodes the sensitivity pass may keep in FP32."""

    method: str = "percentile,minmax"
    target_cosine: float = 0.995
    max_excluded: int = 16
    user_excluded: tuple[str, ...] = ()
    cpu_target: str = "auto"  # the CPU artifact's target: auto (this CPU), vnni or no-vnni
    cpu_form: str = "auto"  # auto: adopted by agreement (int8_cpu.CPU_COSINE_SLACK); always; never
    weights: str = "per-channel"

    def __post_init__(self) -> None:
        if self.cpu_form not in ("auto", "always", "never"):
            raise CalibrationError(f"unknown CPU form choice {self.cpu_form!r}; expected auto, always or never")
        if self.cpu_target not in ("auto", "vnni", "no-vnni"):
            raise CalibrationError(f"unknown CPU int8 target {self.cpu_target!r}; expected auto, vnni or no-vnni")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise CalibrationError(f"unknown calibration method {self.method!r}; expected one or more of "
                                   f"{', '.join(METHODS)}, comma-separated")
        if self.weights not in WEIGHTS:
            raise CalibrationError(f"unknown weight granularity {self.weights!r}; expected one of {', '.join(WEIGHTS)}")
        if self.max_excluded < 0:
            raise CalibrationError(f"max_excluded must be >= 0, got {self.max_excluded}")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.strip() for m in self.method.split(",") if m.strip()))

    @property
    def granularities(self) -> tuple[bool, ...]:
        """per_channel values to try, per-channel first."""
        return WEIGHTS[self.weights]


@dataclass(frozen=True)
class NodeSensitivity:
    """With only this node quantized: ``output_drop`` = 1 - mean output cosine against FP32;
    ``gate_drop`` = the gate criterion's damage (how far the node alone pushes the checks toward
    their limits, summed over checks; 0 when not scored by a criterion)."""

    node: str
    op_type: str
    output_drop: float
    gate_drop: float = 0.0

    @property
    def hurts(self) -> bool:
        return self.output_drop > 0 or self.gate_drop > 1e-9

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node, "op_type": self.op_type, "output_drop": round(self.output_drop, 6),
                "gate_drop": round(self.gate_drop, 6)}


def _quantize(fp32_path: Path, out_path: Path, data: CalibrationData, excluded: Sequence[str],
              method: str, cache: Path, per_channel: bool = True) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_quantizer():
        if not cache.is_file():  # calibrated once per run, batch by batch; quantize_static reads the cache
            # one calibration for both artifacts: the TensorRT ops' tensors and the CPU form's
            # (a tensor's range does not depend on which others are calibrated beside it)
            write_ranges(fp32_path, data, cache, method, calibrated_ops(),
                         {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_LEVELS}
                         if method == "entropy" else None)
        quantize_static(
            str(fp32_path), str(out_path), FeedReader(data), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=per_channel,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(excluded) or None,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True,
                           "QuantizeBias": False,
                           # Q/DQ on the inputs of Conv/MatMul/Gemm only, TensorRT's recommended
                           # placement; also measured better (reid_resnet50 min cosine 0.9933 vs
                           # 0.9918, detector 0.706 vs 0.672 with outputs quantized too)
                           "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)},
            calibration_cache_path=str(cache),
        )


@contextlib.contextmanager
def quiet_quantizer():
    """onnxruntime.quantization prints histogram notes to stdout and pre-processing advice to
    the root logger on every call; neither is actionable for batchforge users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def calibrated_ops() -> list[str]:
    """The op types whose tensors get ranges: the TensorRT Q/DQ model's and the CPU form's."""
    from batchforge.calibration.int8_cpu import cpu_quantized_ops

    return sorted(set(QUANTIZED_OPS) | set(cpu_quantized_ops()))


Outputs = list[tuple[dict[str, np.ndarray], list[np.ndarray]]]  # (feed, FP32 outputs) per batch


def reference_outputs(reference: onnx.ModelProto, data: CalibrationData) -> Outputs:
    """The FP32 graph's outputs on the agreement items, computed once per calibration."""
    sess = session(reference)
    return [(feed, sess.run(None, feed)) for feed in data.batches(8, limit=eval_items(data))]


def eval_items(data: CalibrationData) -> int:
    """How many leading items measure agreement: EVAL_ITEMS, or more within EVAL_VALUES."""
    total, count = 0, 0
    for feed in data.feeds:
        total += sum(int(array.size) for array in feed.values())
        if count >= EVAL_ITEMS and total > EVAL_VALUES:
            break
        count += 1
    return count


def candidate_outputs(expected: Outputs, candidate_path: Path, fused: bool = False) -> list[list[np.ndarray]]:
    """The candidate's outputs on the agreement items, batch by batch. ``fused``: through ONNX
    Runtime's CPU kernels at level "all" (what the CPU artifact runs), else as written."""
    cand_sess = fused_session(candidate_path) if fused else session(load_model(candidate_path))
    return [cand_sess.run(None, feed) for feed, _ in expected]


def _output_cosines(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> list[float]:
    return [c for a, b in zip(reference, candidate) for c in rowwise_cosine(a, b)]


SWITCH = "batchforge_int8_switch"
SEGMENT_NODES = 4  # switchable nodes per segment of the sensitivity pass (each segment: one session)


def switchable_nodes(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> list[str]:
    """Names of the reference nodes that ``quantized`` feeds through Q/DQ, in graph order."""
    by_name = {n.name: n for n in quantized.graph.node}
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [node.name for node in reference.graph.node
            if node.op_type in QUANTIZED_OPS and node.name in by_name
            and any(i in dequantized for i in by_name[node.name].input)]


def cut_tensors(reference: onnx.ModelProto, start: int) -> list[str]:
    """The tensors that nodes ``start:`` of ``reference`` (and its outputs) read but do not make
    themselves: the graph inputs and the values made before ``start``, in first-use order."""
    nodes = reference.graph.node[start:]
    made = {o for n in nodes for o in n.output}
    constant = {t.name for t in reference.graph.initializer}
    wanted = [i for n in nodes for i in n.input] + [o.name for o in reference.graph.output]
    return list(dict.fromkeys(t for t in wanted if t and t not in made and t not in constant))


def _copy_except(source: Message, target: Message, skipped: set[str]) -> None:
    """Copies every set field of ``source`` into ``target`` but the ``skipped`` ones."""
    for field, value in source.ListFields():
        if field.name in skipped:
            continue
        if isinstance(value, Message):
            getattr(target, field.name).CopyFrom(value)
        elif hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        else:
            setattr(target, field.name, value)


def switchable_model(reference: onnx.ModelProto, quantized: onnx.ModelProto, *,
                     nodes: Sequence[str] | None = None, start: int = 0,
                     types: Mapping[str, int] | None = None,
                     cut: Sequence[str] | None = None) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    """``reference`` in which each quantized node's inputs can be switched to their int8 values.

    The Q/DQ chains feeding the nodes in ``quantized`` (its scales and int8 weights) are copied
    in, and every such input becomes ``x + s[k] * (DQ(Q(x)) - x)`` where ``s`` is the extra
    graph input ``SWITCH`` (float, one entry per node): all zeros computes the FP32 graph, a
    one-hot ``s`` the graph with only node ``k`` quantized. One session then scores all its nodes.

    ``nodes`` limits the switches to those nodes (default: every quantized node). ``start`` keeps
    only reference nodes ``start:``: the tensors they need from before it (``cut_tensors``) become
    graph inputs, to be fed their FP32 values (``types``: their ONNX element types, FLOAT when not
    given; ``cut``: ``cut_tensors(reference, start)`` when the caller has it). Nodes without a
    switch compute FP32 exactly as in the all-zeros graph (``x + 0 * d == x`` for the finite
    ``d`` of Q/DQ). Only the initializers the kept nodes read are copied.

    Returns:
        The model and the switchable nodes (``k`` = position in the list).
    """
    from onnx import helper

    producers = {out: n for n in quantized.graph.node for out in n.output}
    by_name = {n.name: n for n in quantized.graph.node}
    selected = set(switchable_nodes(reference, quantized) if nodes is None else nodes)
    out = onnx.ModelProto()
    _copy_except(reference, out, {"graph"})
    _copy_except(reference.graph, out.graph, {"node", "initializer"})
    body, switchable = [], []
    added: list[onnx.TensorProto] = []  # the gates' indices
    for node in reference.graph.node[start:]:
        twin = by_name.get(node.name)
        if node.name in selected and twin is not None:
            k = len(switchable)
            switchable.append(node)
            gate = f"{SWITCH}/{k}"
            body.append(helper.make_node("Gather", [SWITCH, f"{gate}/index"], [gate], axis=0))
            added.append(onnx.numpy_helper.from_array(np.array(k, np.int64), f"{gate}/index"))
            mixed_inputs = list(node.input)
            for position, name in enumerate(twin.input):
                dq = producers.get(name)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                x, mixed = node.input[position], f"{gate}/input{position}"
                # the chain is copied under names of its own: ORT's quantizer may give a DQ output
                # the name of a graph output that the reference makes itself
                q = producers.get(dq.input[0])
                int8_input = dq.input[0]
                if q is not None and q.op_type == "QuantizeLinear":  # an activation: Q(x) here
                    int8_input = mixed + "/q"
                    body.append(helper.make_node("QuantizeLinear", [x, *q.input[1:]], [int8_input],
                                                 name=int8_input, **_attributes(q)))
                body.append(helper.make_node("DequantizeLinear", [int8_input, *dq.input[1:]], [mixed + "/dq"],
                                             name=mixed + "/dq", **_attributes(dq)))
                body.extend([helper.make_node("Sub", [mixed + "/dq", x], [mixed + "/delta"]),
                             helper.make_node("Mul", [mixed + "/delta", gate], [mixed + "/scaled"]),
                             helper.make_node("Add", [x, mixed + "/scaled"], [mixed])])
                mixed_inputs[position] = mixed
            node = onnx.NodeProto()
            node.CopyFrom(switchable[-1])
            node.ClearField("input")
            node.input.extend(mixed_inputs)
        body.append(node)
    out.graph.node.extend(body)
    used = {i for n in body for i in n.input}
    kept = [t for t in reference.graph.initializer if t.name in used] + added
    have = {t.name for t in kept}
    kept += [t for t in quantized.graph.initializer if t.name in used and t.name not in have]
    out.graph.initializer.extend(kept)
    if start:
        given = {v.name: v for v in reference.graph.input}
        del out.graph.input[:]
        out.graph.input.extend(given[name] if name in given else helper.make_tensor_value_info(
            name, (types or {}).get(name, onnx.TensorProto.FLOAT), None)
            for name in (cut_tensors(reference, start) if cut is None else cut))
    out.graph.input.append(helper.make_tensor_value_info(SWITCH, onnx.TensorProto.FLOAT, [len(switchable)]))
    return out, switchable


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def node_sensitivity(reference: onnx.ModelProto, quantized_path: Path, data: CalibrationData,
                     score: Callable[[list[list[np.ndarray]], list[list[np.ndarray]]], float] | None = None,
                     ) -> list[NodeSensitivity]:
    """Every quantized node's effect on the outputs when quantized alone, largest first
    (measured, not guessed): by ``score(fp32 outputs, outputs)`` per batch (the gate criterion's
    damage, ``NodeSensitivity.gate_drop``) when given, then by the mean output cosine.

    The nodes are scored in segments of ``SEGMENT_NODES`` (graph order): a segment's model starts
    at its first node and is fed the FP32 values of what it needs from before, computed once, so
    no node upstream of a segment, and no Q/DQ outside it, is computed again for every switch. The
    values are those of the single whole switchable model (see ``switchable_model``), at a fraction
    of its cost (tested against it).
    """
    quantized = load_model(quantized_path)
    names = switchable_nodes(reference, quantized)
    segments = [names[i:i + SEGMENT_NODES] for i in range(0, len(names), SEGMENT_NODES)]
    position = {n.name: i for i, n in enumerate(reference.graph.node)}
    starts = [0] + [position[seg[0]] for seg in segments[1:]]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in reference.graph.node for a in n.attribute):
        # a control-flow node reads outer tensors its inputs do not name: no cut is safe
        segments, starts = [names], [0]
    cuts = {start: cut_tensors(reference, start) for start in starts}
    outputs = [o.name for o in reference.graph.output]
    given = {i.name for i in reference.graph.input}
    needed = list(dict.fromkeys(t for cut in cuts.values() for t in cut if t not in given and t not in outputs))
    probe = session(with_intermediate_outputs(reference, needed), optimized=True)
    values = [{**feed, **dict(zip(outputs + needed, probe.run(outputs + needed, feed)))}
              for feed in data.batches(SENSITIVITY_ITEMS, limit=SENSITIVITY_ITEMS)]
    del probe
    types = {t: onnx.helper.np_dtype_to_tensor_dtype(a.dtype) for t, a in values[0].items()}
    want = [[v[o] for o in outputs] for v in values]
    out = []
    bar = iter(progress(range(len(names)), desc="int8 sensitivity", total=len(names)))
    for seg, start in zip(segments, starts):
        model, nodes = switchable_model(reference, quantized, nodes=seg, start=start, types=types, cut=cuts[start])
        sess = session(model, optimized=True)
        switch = np.zeros(len(nodes), np.float32)
        for k, node in enumerate(nodes):
            next(bar, None)
            switch[:] = 0.0
            switch[k] = 1.0
            got = [sess.run(outputs, {**{t: v[t] for t in cuts[start]}, SWITCH: switch}) for v in values]
            cosines = [c for ref, run in zip(want, got) for c in _output_cosines(ref, run)]
            out.append(NodeSensitivity(node.name, node.op_type, 1.0 - float(np.mean(cosines)),
                                       score(want, got) if score is not None else 0.0))
        del sess
    for _ in bar:  # closes the bar
        pass
    return sorted(out, key=lambda s: (-s.gate_drop, -s.output_drop))


def fused_session(path: Path):
    """An ONNX Runtime CPU session at level "all": Q/DQ fused into int8 kernels where it can."""
    import onnxruntime as ort

    from batchforge.runtime.runners.onnxruntime import follow_wait_policy

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    follow_wait_policy(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def calibrate_int8(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                   data: CalibrationData, options: Int8Options = Int8Options(),
                   cpu_out_path: str | os.PathLike[str] | None = None,
                   criterion: GateCriterion | None = None) -> dict[str, object]:
    """Writes the TensorRT Q/DQ model (and, with ``cpu_out_path``, the CPU artifact from the same
    ranges and exclusions) and returns the calibration report fields.

    ``criterion``: what a candidate must pass on the calibration items (calibration/criterion.py;
    ``calibrate`` gives the gate's checks for the model's family; default: the mean output cosine
    only). ``options.methods`` x ``options.granularities`` are quantized in full and judged by it
    in that order until one passes; the winner (that one, else the one closest to passing) is the
    one searched: when it fails, the fewest nodes of its sensitivity ranking kept FP32 that make
    it pass (``fewest_passing``), else the best measured."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    criterion = criterion or GateCriterion.mean_only(options.target_cosine)
    reference = load_model(fp32_path)
    names = {n.name for n in reference.graph.node}
    unknown = [n for n in options.user_excluded if n not in names]
    if unknown:
        raise CalibrationError(f"--exclude {', '.join(unknown)}: no node of that name in {fp32_path.name}")
    outputs = [o.name for o in reference.graph.output]
    with tempfile.TemporaryDirectory(prefix="batchforge-int8-") as tmp:
        expected = reference_outputs(reference, data)

        def judge(path: Path, fused: bool = False) -> Verdict:
            return criterion.judge(outputs, [want for _, want in expected], candidate_outputs(expected, path, fused))

        def cache_of(method: str) -> Path:
            return Path(tmp) / f"ranges.{method}.json"

        trial = []
        for method, per_channel in itertools.product(options.methods, options.granularities):
            path = Path(tmp) / f"trial.{method}.{per_channel}.onnx"
            _quantize(fp32_path, path, data, list(options.user_excluded), method, cache_of(method), per_channel)
            trial.append((method, per_channel, judge(path), path))
            if trial[-1][2].passed:  # the first listed that passes wins: the rest need not be tried
                break
        # the last one tried if it passed, else the closest to passing
        method, per_channel, verdict0, winner = trial[-1] if trial[-1][2].passed else min(
            trial, key=lambda t: (t[2].rank_key(), -t[2].mean_cosine))
        cache = cache_of(method)
        verdicts: dict[int, Verdict] = {}
        steps: list[dict[str, object]] = []
        candidates: list[NodeSensitivity] = []

        def attempt(k: int) -> Verdict:
            if k not in verdicts:
                path = Path(tmp) / f"excluded{k}.onnx"
                excluded = [*options.user_excluded, *(s.node for s in candidates[:k])]
                _quantize(fp32_path, path, data, excluded, method, cache, per_channel)
                verdicts[k] = judge(path)
                steps.append({"excluded": k, **verdicts[k].as_dict()})
            return verdicts[k]

        shutil.copyfile(winner, Path(tmp) / "excluded0.onnx")
        verdicts[0] = verdict0
        steps.append({"excluded": 0, **verdict0.as_dict()})
        needed = options.max_excluded > 0 and not verdict0.passed
        # the sensitivity items are the all-int8 candidate's worst: the gate judges the worst item
        focus_items = sorted(int(i) for i in np.argsort(-np.asarray(verdict0.item_badness),
                                                        kind="stable")[:SENSITIVITY_ITEMS])
        focus = dataclasses.replace(data, feeds=tuple(data.feeds[i] for i in focus_items))

        def damage(want: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
            return criterion.judge(outputs, want, got).damage

        ranking = node_sensitivity(reference, Path(tmp) / "excluded0.onnx", focus, damage) if needed else []
        candidates = [s for s in ranking if s.hurts][: options.max_excluded]
        chosen = fewest_passing(len(candidates), lambda k: attempt(k).passed) if needed else 0
        if chosen is None:  # none passes: the best measured (closest to the gate, then fewer nodes)
            chosen = min(verdicts, key=lambda k: (verdicts[k].rank_key(), k))
        best = verdicts[chosen]
        shutil.copyfile(Path(tmp) / f"excluded{chosen}.onnx", out_path)
        from batchforge.calibration.trt_placement import place_in_file

        placement = place_in_file(Path(out_path), cache, lambda path: judge(path).as_dict(), best.as_dict())
        placed = placement.get("effect")
        final = best.as_dict()
        if placement["kept"] and isinstance(placed, dict):  # what ships, and what the CPU form is compared with
            final = placed
        excluded = [*options.user_excluded, *(s.node for s in candidates[:chosen])]
        quantize_nodes = sum(n.op_type == "QuantizeLinear" for n in load_model(out_path).graph.node)
        cpu = None
        if cpu_out_path is not None and options.cpu_form != "never":
            from batchforge.calibration.int8_cpu import write_cpu_form

            def rank(cpu_form: Path) -> list[str]:  # the TensorRT form's ranking, else the CPU form's own
                found = ranking or node_sensitivity(reference, cpu_form, focus, damage)
                return [s.node for s in found if s.hurts]

            cpu = write_cpu_form(
                fp32_path, Path(cpu_out_path), data, excluded, method=method, cache=cache,
                target=options.cpu_target, form=options.cpu_form, max_extra=options.max_excluded,
                trt_min_cosine=float(final["min_cosine"]),  # type: ignore[arg-type]
                trt_passes=bool(final["passes_gate_checks"]),
                agreement=lambda path, fused: judge(path, fused).as_dict(), rank=rank)
    return {
        "method": method,
        "weights": "per-channel" if per_channel else "per-tensor",
        "method_trial": [{"method": m, "weights": "per-channel" if pc else "per-tensor", **v.as_dict()}
                         for m, pc, v, _ in trial],
        "criterion": "the gate's checks on the calibration items (calibration/criterion.py): "
                     + ", ".join(c.name for c in verdict0.checks),
        "quantized_op_types": list(QUANTIZED_OPS),
        "scheme": "QDQ on Conv/MatMul(constant B)/Gemm inputs"
                  + (", residual Add inputs after a conv and pooling inputs (TensorRT fusion)"
                     if placement["kept"] else "")
                  + ", symmetric int8 activations, " + ("per-channel" if per_channel else "per-tensor")
                  + " weights, bias kept FP32",
        "target_cosine": options.target_cosine,
        "user_excluded": list(options.user_excluded),
        "excluded_by_sensitivity": [s.as_dict() for s in candidates[:chosen]],
        "sensitivity_top": [s.as_dict() for s in ranking[:10]],  # empty: all-int8 already passed
        "sensitivity_items": focus_items,  # calibration item indices: the all-int8 candidate's worst
        "steps": steps,
        "effect": {"full_int8_min_cosine": verdict0.as_dict()["min_cosine"], "final_min_cosine": final["min_cosine"],
                   "final_mean_cosine": final["mean_cosine"], "passes_gate_checks": final["passes_gate_checks"],
                   "failed": final["failed"], "measured_on_items": eval_items(data),
                   "quantize_nodes": quantize_nodes},
        "trt_fusion_qdq": placement,
        **({"cpu": cpu} if cpu is not None else {}),
    }
