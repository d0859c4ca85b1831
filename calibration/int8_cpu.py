"""The INT8 artifact for ONNX Runtime's CPU kernels: a Q/DQ model its QDQ transformers fuse.

The TensorRT Q/DQ model (``int8.py``: symmetric int8 activations, Q/DQ on Conv/MatMul/Gemm inputs
only) is evaluated by ONNX Runtime's CPU provider as fake quantisation: its convolutions have no
quantized output, so no ``QLinearConv`` is formed and every conv runs in FP32 between Q/DQ pairs
(reid_resnet50: 49 FusedConv + 4 Conv in FP32, 152 DequantizeLinear, 0.69x FP32). From the same
calibrated ranges and the same FP32 exclusions, this module writes the form the CPU kernels
fuse. Measured on reid_resnet50 (AMD EPYC with AVX-512 VNNI, onnxruntime 1.32.0, batch 8, 2
threads, interleaved, speed over FP32 / min output cosine vs FP32 on 8 items):

    U8 activations asymmetric, S8 per-channel weights, bias FP32, ORT's default op types
        -> 53 QLinearConv + 16 QLinearAdd, 4 DQ left:              2.88x / 0.9950  (chosen)
    the same with the bias quantized to int32 (ORT's default)      2.87x / 0.9949
    the same quantizing only Conv/MatMul/Gemm                       2.28x / 0.9941
    U8 activations symmetric (zero point 128: Relu is not folded)   1.96x / 0.9891
    S8 activations symmetric (20 convs stay FP32)                   0.82x / 0.9884

On x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels (vpmaddubsw) saturate 16-bit partial sums
(measured before on reid_resnet50, AVX2: min cosine 0.945 fused against 0.992 as written);
ONNX Runtime's documented remedy is 7-bit weights (``reduce_range``), which cannot saturate. The
target is chosen by the calibrating CPU (or forced) and recorded; the runtime loads a "vnni"
artifact on a CPU without VNNI as written (accurate, not fused) and says so.
"""

from __future__ import annotations

import collections
import enum
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from batchforge.calibration.criterion import fewest_passing
from batchforge.calibration.data import CalibrationData, FeedReader

# ONNX Runtime op types whose int8 form its CPU QDQ transformers fuse (counted as fused)
FUSED_INT8_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
                  "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
                  "QLinearSoftmax", "QLinearWhere", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")
FLOAT_COMPUTE_OPS = ("Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")


class CpuInt8Target(str, enum.Enum):
    """Which CPUs the artifact's integer kernels are made for."""

    VNNI = "vnni"  # 8-bit weights: exact int32 accumulation needs AVX512-VNNI / AVX-VNNI
    NO_VNNI = "no-vnni"  # 7-bit weights (reduce_range): no 16-bit saturation on AVX2 / AVX-512 without VNNI

    @classmethod
    def for_this_cpu(cls) -> CpuInt8Target:
        from batchforge.runtime.loading import cpu_has_vnni

        return cls.VNNI if cpu_has_vnni() else cls.NO_VNNI


# The op types the CPU form quantizes: convolutions, matrix products and what their int8 kernels
# chain through without leaving int8 (residual Add, Concat, pooling, ReLU/Clip, shape ops).
# ORT's full default list (its QOperator and QDQ registries) also quantizes Mul, Sigmoid, Softmax,
# LayerNormalization...: measured on the zoo with the same ranges and exclusions, that cost
# accuracy and speed (reid_vit_b_16 min output cosine 0.796 against 0.998 for the TensorRT form;
# detector 0.89 and 1.01x FP32, where this list gives 1.15-1.18x; SiLU's Mul/Sigmoid pairs left
# 116 Q/DQ nodes unfused).
CPU_QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Concat", "MaxPool", "AveragePool",
                     "GlobalAveragePool", "Relu", "Clip", "Reshape", "Transpose", "Flatten", "Squeeze",
                     "Unsqueeze", "Resize")
# The CPU form is adopted only when its min output cosine against FP32 (fused, on the calibration
# agreement items) is within 1e-4 of the TensorRT form's as written (or better): else the CPU
# backend runs the TensorRT form as written, whose parity verdicts are the ones measured before
# this form existed. Measured with ORT's default op list: a slack of 0.005 let anomaly (0.9984 vs
# 0.9995) and mtcnn_onet (0.9911 vs 0.9932) through, and both then failed a decoded check of the
# gate (tiled region IoU 0, O-Net landmarks 2.63 px over 2): the gate is finer than a cosine. 1e-4
# only absorbs the rounding of near-exact agreement (a tiny net's 7-bit form: 0.99997 vs 1.0).
CPU_COSINE_SLACK = 1e-4
# A CPU form further below the TensorRT form than this is not searched for FP32 nodes: measured,
# its trouble is the op set, not a few nodes (reid_vit_b_16 0.80 vs 0.998, detector 0.89 vs 0.97,
# facepose 0.90 vs 0.98 with 16 nodes FP32 already).
SEARCH_WINDOW = 0.05


def cpu_quantized_ops() -> list[str]:
    """The op types whose tensors the CPU form needs ranges for."""
    return list(CPU_QUANTIZED_OPS)


SCHEME = ("QDQ on Conv/MatMul/Gemm, residual Add, Concat, pooling and shape ops (QLinearConv/QLinearMatMul/"
          "QLinearAdd/... once fused), "
          "asymmetric uint8 activations, symmetric per-channel int8 weights{rr}, bias kept FP32")


COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def output_tail(model: onnx.ModelProto) -> list[str]:
    """The nodes between the last convolution / matrix product and each graph output (walking back
    from the outputs through single-input nodes; a node of several inputs, such as a residual Add or
    a Concat, is the tail's last), in graph order.

    They stay FP32 in the CPU form: the TensorRT form quantizes convolution inputs only, so there
    these tensors are never clipped to a calibrated range; quantized (uint8 at the 99.999th
    percentile) they cost reid_resnet50's embedding raw max_rel 0.256 (limit 0.25) against 0.082
    with its 5-node tail (Add, Relu, ReduceMean, Reshape, BatchNormalization) in FP32, at the same
    speed (3.49x FP32 either way: the tail is a pooled vector).
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    tail: set[str] = set()
    todo = [o.name for o in model.graph.output]
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.op_type in COMPUTE_OPS or node.name in tail:
            continue
        tail.add(node.name)
        inputs = [i for i in node.input if i in producers]
        if len(inputs) == 1:
            todo.append(inputs[0])
    return [n.name for n in model.graph.node if n.name in tail]


def quantize_cpu(fp32_path: Path, out_path: Path, data: CalibrationData, excluded: Sequence[str],
                 method: str, cache: Path, target: CpuInt8Target) -> list[str]:
    """Writes the CPU form of ``fp32_path`` from the ranges in ``cache`` (calibrated once, for
    this op set too), keeping ``excluded`` nodes and the output tail (``output_tail``) in FP32.
    Returns the tail's nodes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from batchforge.calibration.int8 import quiet_quantizer

    tail = output_tail(onnx.load(str(fp32_path), load_external_data=False))
    with quiet_quantizer():
        quantize_static(
            str(fp32_path), str(out_path), FeedReader(data), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=cpu_quantized_ops(), per_channel=True,
            reduce_range=target is CpuInt8Target.NO_VNNI,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(dict.fromkeys([*excluded, *tail])) or None,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"WeightSymmetric": True, "MatMulConstBOnly": True, "QuantizeBias": False},
            calibration_cache_path=str(cache),
        )
    model = onnx.load(str(out_path))
    if keep_outputs_float(model):
        onnx.save(model, str(out_path))
    return tail


def keep_outputs_float(model: onnx.ModelProto) -> list[str]:
    """Removes the Q/DQ pair ``quantize_static`` puts on a graph output, in place: the node that
    makes the output writes it in float again (its inputs stay quantized). Returns the outputs.

    A quantized output is clipped to its calibrated range: reid_resnet50's embedding (made by a
    BatchNormalization, an op ORT quantizes) lost up to 5.0 of 13.7 (raw max_rel 0.37 against 0.08
    as written) to the 99.999th-percentile range, and it saves no work: nothing reads it after.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    removed, kept = [], []
    for output in model.graph.output:
        dq = producers.get(output.name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        readers = [n for n in model.graph.node if source in n.input and n is not q]
        maker = producers.get(source)
        if maker is None or readers:  # a graph input, or a value other nodes read too: leave it
            continue
        maker.output[list(maker.output).index(source)] = output.name
        removed += [q, dq]
        kept.append(output.name)
    for node in removed:
        model.graph.node.remove(node)
    return kept


def fusion_counts(model_path: str | Path, *, level: str = "all") -> dict[str, object]:
    """How ONNX Runtime's CPU provider runs a Q/DQ model: its optimised graph's node counts.

    Returns ``{"fused": {op: n}, "float_compute": {op: n}, "quantize_linear": n,
    "dequantize_linear": n, "level": level}``: ``fused`` are integer kernels, ``float_compute``
    convolutions and matrix products left in FP32 (between Q/DQ when quantized as written).
    """
    import onnxruntime as ort

    from batchforge.runtime.runners.onnxruntime import follow_wait_policy

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="batchforge-fusion-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        options.log_severity_level = 3  # "hardware specific" note when saving at level all
        options.intra_op_num_threads = 1
        follow_wait_policy(options)
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath,
                                                               load_external_data=False).graph.node)
    return {"level": level,
            "fused": {op: ops[op] for op in FUSED_INT8_OPS if ops[op]},
            "float_compute": {op: ops[op] for op in FLOAT_COMPUTE_OPS if ops[op]},
            "quantize_linear": ops["QuantizeLinear"], "dequantize_linear": ops["DequantizeLinear"]}


def fusion_summary(counts: dict[str, object]) -> str:
    """One line: ``53 fused int8 (QLinearConv 53), 0 FP32 conv/matmul, 4 Q/DQ left``."""
    fused = counts.get("fused") or {}
    floats = counts.get("float_compute") or {}
    assert isinstance(fused, dict) and isinstance(floats, dict)
    detail = ", ".join(f"{op} {n}" for op, n in fused.items())
    qdq = int(counts.get("quantize_linear") or 0) + int(counts.get("dequantize_linear") or 0)  # type: ignore[call-overload]
    return (f"{sum(fused.values())} fused int8 node(s){f' ({detail})' if detail else ''}, "
            f"{sum(floats.values())} FP32 conv/matmul, {qdq} Q/DQ left")


def write_cpu_form(fp32_path: Path, out: Path, data: CalibrationData, excluded: list[str], *, method: str,
                   cache: Path, target: str, form: str, max_extra: int, trt_min_cosine: float,
                   agreement: Callable[[Path, bool], dict[str, object]],
                   rank: Callable[[Path], list[str]], trt_passes: bool = False) -> dict[str, object]:
    """Writes the CPU artifact at ``out`` with ``excluded`` in FP32. When its agreement
    (``agreement(path, fused)``: output cosines vs FP32 and the gate's checks, fused on this CPU
    or as written) misses the TensorRT form's min cosine (``trt_min_cosine`` less
    ``CPU_COSINE_SLACK``), or fails the gate's checks where the TensorRT form passes them
    (``trt_passes``), the fewest further nodes of ``rank(out)`` kept FP32 that reach it
    (automatic mixed precision: ``criterion.fewest_passing``, at most ``max_extra``). Not adopted
    (no file at ``out``) when none does, unless ``form`` is "always". Returns the record's
    ``cpu`` section, every step measured."""
    from batchforge.runtime.loading import cpu_has_vnni

    chosen_target = CpuInt8Target.for_this_cpu() if target == "auto" else CpuInt8Target(target)
    # a vnni artifact judged on a CPU without VNNI: its u8s8 kernels here saturate where the
    # target's do not, so it is judged as written, the integer result VNNI kernels compute exactly
    # (to float rounding)
    fused_here = chosen_target is CpuInt8Target.NO_VNNI or cpu_has_vnni()
    written: list[str] | None = None
    steps: list[dict[str, object]] = []
    results: dict[int, dict[str, float]] = {}
    tail: list[str] = []

    def attempt(extra: list[str]) -> bool:
        nonlocal written, tail
        tail = quantize_cpu(fp32_path, out, data, [*excluded, *extra], method, cache, chosen_target)
        written = extra
        effect = agreement(out, fused_here)
        results[len(extra)] = effect
        steps.append({"extra_fp32": len(extra), **effect})
        # as close as the TensorRT form, and passing the gate's checks wherever that one does
        return (effect["min_cosine"] >= trt_min_cosine - CPU_COSINE_SLACK  # type: ignore[operator]
                and (bool(effect.get("passes_gate_checks", True)) or not trt_passes))

    extra: list[str] = []
    order: list[str] = []
    agrees = attempt(extra)
    first = results[0]["min_cosine"]
    if not agrees and max_extra > 0 and first >= trt_min_cosine - SEARCH_WINDOW:  # type: ignore[operator]
        order = [n for n in rank(out) if n not in excluded][:max_extra]
        passing = fewest_passing(len(order), lambda k: attempt(order[:k]))
        if passing is not None:
            agrees, extra = True, order[:passing]
    best = len(extra) if agrees else max(results, key=lambda k: (results[k]["min_cosine"], -k))  # type: ignore[arg-type]
    if not agrees and form == "always":
        extra = order[:best]  # the best measured, for the gate to judge
    if (agrees or form == "always") and written != extra:
        attempt(extra)  # the file holds the last step tried: write the chosen one again
        steps.pop()  # measured already
    effect = results[len(extra)]
    adopted = agrees or form == "always"
    fusion = fusion_counts(out)
    if not adopted:
        out.unlink()
    closest = results[best]
    if float(closest["min_cosine"]) >= trt_min_cosine - CPU_COSINE_SLACK:  # type: ignore[arg-type]
        why = (f"fails {', '.join(closest.get('failed') or {})} on the calibration items (best with {best} more "
               f"node(s) FP32) where the TensorRT form as written passes every check")
    else:
        why = (f"fused min output cosine {results[0]['min_cosine']:.4f} (best {closest['min_cosine']:.4f} with "
               f"{best} more node(s) FP32) is more than {CPU_COSINE_SLACK} below the TensorRT form's "
               f"{trt_min_cosine:.4f} as written")
    return {"adopted": adopted,
            **({} if agrees else {"reason": why + (": adopted anyway (--cpu-form always); the parity gate judges it"
                                                   if adopted else ": the CPU backend runs that one as written "
                                                   "(--cpu-form always ships it for the gate to judge)")}),
            "target": chosen_target.value, "reduce_range": chosen_target is CpuInt8Target.NO_VNNI,
            "judged": "fused, on this CPU" if fused_here else
                      "as written: this CPU has no VNNI, so its u8s8 kernels would saturate where the target's do not",
            "output_tail_fp32": tail,
            "scheme": SCHEME.format(rr=" (7-bit: reduce_range)" if chosen_target is CpuInt8Target.NO_VNNI else ""),
            "excluded": [*excluded, *extra], "excluded_for_cpu": extra, "steps": steps,
            # not adopted: the counts of the last step tried (its file is gone)
            "effect": effect, "fusion": fusion}
