"""TensorRT fusion placement: Q/DQ on the residual input of an Add after a conv and on pooling
inputs, checked on graph structure, on ONNX Runtime against a NumPy fake-quant reference, and on a
model quantize_static wrote."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from batchforge.calibration.trt_placement import POOLING, add_trt_fusion_qdq, symmetric_scale
from batchforge.errors import CalibrationError

SHAPE = [1, 4, 4, 4]
RANGES = {"x": (-2.0, 2.0), "r": (0.0, 2.54), "c": (-1.5, 1.0), "s": (-3.0, 1.27), "d": (-0.5, 0.75)}
R_SCALE, S_SCALE = np.float32(2.54 / 127), np.float32(3.0 / 127)
WEIGHTS = np.random.default_rng(0).integers(-127, 128, (4, 4, 1, 1)).astype(np.int8)
WEIGHT_SCALES = np.array([0.004, 0.003, 0.005, 0.002], np.float32)
BIAS = np.array([0.1, -0.2, 0.05, 0.0], np.float32)


def tensor(name, shape=SHAPE):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def model_of(nodes, outputs, initializers=(), inputs=("x",), value_info=()):
    graph = helper.make_graph(nodes, "g", [tensor(i) for i in inputs], outputs, initializer=list(initializers),
                              value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def conv_with_qdq(source, out, name):
    """``source`` -> Q -> DQ -> Conv(per-channel int8 weights) -> ``out``, named as quantize_static
    names its pairs (an activation's pair is shared by all the convs that read it)."""
    return [helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], [f"{name}_w"],
                             name=f"{name}_w_DequantizeLinear", axis=0),
            helper.make_node("Conv", [f"{source}_DequantizeLinear_Output", f"{name}_w", "b"], [out], name=name)]


def activation_qdq(source, scale_name):
    return [helper.make_node("QuantizeLinear", [source, scale_name, "zp"], [f"{source}_QuantizeLinear_Output"],
                             name=f"{source}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{source}_QuantizeLinear_Output", scale_name, "zp"],
                             [f"{source}_DequantizeLinear_Output"], name=f"{source}_DequantizeLinear")]


def shared_initializers():
    return [numpy_helper.from_array(WEIGHTS, "w_quantized"), numpy_helper.from_array(WEIGHT_SCALES, "w_scale"),
            numpy_helper.from_array(np.zeros(4, np.int8), "w_zero_point"), numpy_helper.from_array(BIAS, "b"),
            numpy_helper.from_array(np.array(0, np.int8), "zp"),
            numpy_helper.from_array(np.array(R_SCALE, np.float32), "r_scale"),
            numpy_helper.from_array(np.array(np.float32(2.0 / 127), np.float32), "x_scale")]


def block(residual_op="Relu", tail="Relu", side_reader=False, add_reads="r"):
    """x -> residual_op r -> Q/DQ -> conv -> c ; add(c, r) -> s ; tail(s) -> y [; Identity(r) -> side].
    The residual comes from the graph input through a Relu or through another (quantized) conv."""
    head = ([helper.make_node("Relu", ["x"], ["r"], name="head")] if residual_op == "Relu"
            else [*activation_qdq("x", "x_scale"), *conv_with_qdq("x", "r", "head")])
    tail_node = (helper.make_node("MaxPool", ["s"], ["y"], name="tail", kernel_shape=[2, 2], strides=[2, 2])
                 if tail == "MaxPool" else helper.make_node("Relu", ["s"], ["y"], name="tail"))
    nodes = [*head, *activation_qdq("r", "r_scale"), *conv_with_qdq("r", "c", "conv"),
             helper.make_node("Add", ["c", add_reads], ["s"], name="residual"), tail_node]
    outputs = [tensor("y", [1, 4, 2, 2] if tail == "MaxPool" else SHAPE)]
    if side_reader:
        nodes.append(helper.make_node("Identity", ["r"], ["side"], name="side"))
        outputs.append(tensor("side"))
    return model_of(nodes, outputs, shared_initializers())


def place(model, ranges=RANGES):
    placed, record = add_trt_fusion_qdq(model, ranges)
    onnx.checker.check_model(placed, full_check=True)
    return placed, record


def nodes_by_name(model):
    return {n.name: n for n in model.graph.node}


def producer_of(model, name):
    return next(n for n in model.graph.node if name in n.output)


def initializer(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def fake_quant(x, scale):
    return (np.clip(np.round(x / scale), -128, 127) * scale).astype(np.float32)  # np.round: half to even


def run(model, feed, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


@pytest.mark.parametrize("residual_op", ["Relu", "Conv"])
def test_only_the_residual_input_of_an_add_after_a_conv_gets_qdq(residual_op):
    model = block(residual_op)
    placed, record = place(model)
    assert record == {"residual_add": ["r"], "pooling": [], "no_range": []}
    add = nodes_by_name(placed)["residual"]
    assert list(add.input) == ["c", "r_trtdq"]  # the conv branch reads the Conv output as before
    dq, q = producer_of(placed, "r_trtdq"), producer_of(placed, "r_trtq")
    assert (dq.op_type, list(dq.input)) == ("DequantizeLinear", ["r_trtq", "r_trtscale", "r_trtzp"])
    assert (q.op_type, list(q.input)) == ("QuantizeLinear", ["r", "r_trtscale", "r_trtzp"])
    assert [n.op_type for n in placed.graph.node if "s" in n.input] == ["Relu"]  # the Add output: nothing
    assert len(placed.graph.node) == len(model.graph.node) + 2
    order = [n.name for n in placed.graph.node]
    assert order.index("head") < order.index("r_trtq") < order.index("r_trtdq") < order.index("residual")
    scale, zero = initializer(placed, "r_trtscale"), initializer(placed, "r_trtzp")
    assert scale.dtype == np.float32 and scale.shape == () and scale == np.float32(2.54 / 127)
    assert zero.dtype == np.int8 and zero.shape == () and int(zero) == 0


@pytest.mark.parametrize("shortcut_first", [True, False])
def test_with_two_conv_branches_the_skip_branch_is_quantized(shortcut_first):
    # a projection shortcut: torch exports torchvision's Bottleneck with it after the main branch
    shortcut = conv_with_qdq("r", "d", "downsample")
    main = [*conv_with_qdq("r", "m1", "conv1"), helper.make_node("Relu", ["m1"], ["m2"], name="relu1"),
            *activation_qdq("m2", "r_scale"), *conv_with_qdq("m2", "m3", "conv2")]
    body = [*shortcut, *main] if shortcut_first else [*main, *shortcut]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="head"), *activation_qdq("r", "r_scale"), *body,
             helper.make_node("Add", ["m3", "d"], ["y"], name="residual")]
    placed, record = place(model_of(nodes, [tensor("y")], shared_initializers()), {**RANGES, "m3": (-1.0, 1.0)})
    assert record["residual_add"] == ["d"]
    assert list(nodes_by_name(placed)["residual"].input) == ["m3", "d_trtdq"]


def test_a_batchnorm_after_the_conv_counts_as_the_conv_branch():
    bn = [numpy_helper.from_array(np.full(4, v, np.float32), n)
          for n, v in (("gamma", 1.5), ("beta", 0.1), ("mean", 0.2), ("var", 2.0))]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="head"), *activation_qdq("r", "r_scale"),
             *conv_with_qdq("r", "c0", "conv"),
             helper.make_node("BatchNormalization", ["c0", "gamma", "beta", "mean", "var"], ["c"], name="bn"),
             helper.make_node("Add", ["r", "c"], ["y"], name="residual")]
    placed, record = place(model_of(nodes, [tensor("y")], [*shared_initializers(), *bn]))
    assert record["residual_add"] == ["r"]
    assert list(nodes_by_name(placed)["residual"].input) == ["r_trtdq", "c"]


@pytest.mark.parametrize("op", POOLING)
def test_a_pooling_input_gets_qdq(op):
    attributes = {} if op == "GlobalAveragePool" else {"kernel_shape": [2, 2], "strides": [2, 2]}
    out = [1, 4, 1, 1] if op == "GlobalAveragePool" else [1, 4, 2, 2]
    model = model_of([helper.make_node("Relu", ["x"], ["r"], name="head"),
                      helper.make_node(op, ["r"], ["y"], name="pool", **attributes)], [tensor("y", out)])
    placed, record = place(model)
    assert record == {"residual_add": [], "pooling": ["r"], "no_range": []}
    assert list(nodes_by_name(placed)["pool"].input) == ["r_trtdq"]
    assert initializer(placed, "r_trtscale") == R_SCALE


def test_already_dequantized_inputs_get_nothing_new():
    model = block(add_reads="r_DequantizeLinear_Output")  # the residual already read through Q/DQ
    pool = helper.make_node("MaxPool", ["r_DequantizeLinear_Output"], ["p"], name="pool", kernel_shape=[2, 2])
    model.graph.node.append(pool)
    model.graph.output.append(tensor("p", [1, 4, 3, 3]))
    placed, record = place(model)
    assert record == {"residual_add": [], "pooling": [], "no_range": []}
    assert placed.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("span", [None, (0.0, 0.0), (float("nan"), 1.0)], ids=["missing", "zero", "nan"])
def test_a_tensor_without_a_usable_range_is_listed_and_left_fp32(span):
    ranges = {k: v for k, v in RANGES.items() if k != "r"} | ({} if span is None else {"r": span})
    model = block(tail="MaxPool")
    placed, record = place(model, ranges)
    assert record == {"residual_add": [], "pooling": ["s"], "no_range": ["r"]}
    assert list(nodes_by_name(placed)["residual"].input) == ["c", "r"]
    assert not any(n.name.startswith("r_trt") for n in placed.graph.node)


def test_with_two_readers_of_the_residual_only_the_add_is_rewired():
    placed, record = place(block(side_reader=True))
    assert record["residual_add"] == ["r"]
    readers = {n.name: list(n.input) for n in placed.graph.node if "r" in n.input}
    assert readers == {"side": ["r"], "r_QuantizeLinear": ["r", "r_scale", "zp"],
                       "r_trtq": ["r", "r_trtscale", "r_trtzp"]}
    assert list(nodes_by_name(placed)["residual"].input) == ["c", "r_trtdq"]


def test_one_pair_per_tensor_serves_the_add_and_a_pool():
    model = block()
    model.graph.node.append(helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[2, 2]))
    model.graph.output.append(tensor("p", [1, 4, 3, 3]))
    placed, record = place(model)
    assert record == {"residual_add": ["r"], "pooling": ["r"], "no_range": []}
    assert [n.name for n in placed.graph.node if n.op_type == "QuantizeLinear" and "r" in n.input] == [
        "r_QuantizeLinear", "r_trtq"]
    nodes = nodes_by_name(placed)
    assert nodes["residual"].input[1] == nodes["pool"].input[0] == "r_trtdq"


@pytest.mark.parametrize("case", ["bias_add", "from_the_conv_itself", "no_conv"])
def test_an_add_that_is_no_residual_add_gets_nothing(case):
    initializers = shared_initializers()
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="head"), *activation_qdq("r", "r_scale"),
             *conv_with_qdq("r", "c", "conv")]
    if case == "bias_add":  # one input a constant
        initializers.append(numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "shift"))
        nodes.append(helper.make_node("Add", ["c", "shift"], ["y"], name="add"))
    elif case == "from_the_conv_itself":  # the other input is computed from the conv output: no epilogue
        nodes += [helper.make_node("Sigmoid", ["c"], ["g"], name="gate"),
                  helper.make_node("Add", ["c", "g"], ["y"], name="add")]
    else:
        nodes += [helper.make_node("Sigmoid", ["c"], ["g"], name="gate"),
                  helper.make_node("Add", ["g", "r"], ["y"], name="add")]
    model = model_of(nodes, [tensor("y")], initializers)
    placed, record = place(model, {**RANGES, "g": (0.0, 1.0), "shift": (1.0, 1.0)})
    assert record == {"residual_add": [], "pooling": [], "no_range": []}
    assert placed.SerializeToString() == model.SerializeToString()


def test_onnxruntime_computes_the_numpy_fake_quantised_reference():
    placed, _ = place(block(tail="MaxPool", side_reader=True))
    x = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    got = run(placed, {"x": x})
    r = np.maximum(x, 0)
    r_int8 = fake_quant(r, R_SCALE)  # the conv input (quantize_static's pair) and the residual (ours)
    weights = WEIGHTS[:, :, 0, 0].astype(np.float32) * WEIGHT_SCALES[:, None]
    c = np.einsum("oi,nihw->nohw", weights, r_int8) + BIAS[None, :, None, None]
    s = fake_quant(c + r_int8, S_SCALE)  # the pool's input
    want = s.reshape(1, 4, 2, 2, 2, 2).max(axis=(3, 5))
    np.testing.assert_allclose(got["y"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["side"], r)  # the other reader still sees FP32
    fused = run(placed, {"x": x}, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)  # the CPU kernels' int8 form runs
    np.testing.assert_allclose(fused["y"], want, rtol=0, atol=2 * float(S_SCALE))


def test_the_input_model_is_not_modified_and_its_interface_is_kept():
    model = block(tail="MaxPool")
    model.graph.value_info.append(tensor("c"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    before = model.SerializeToString()
    placed, _ = place(model)
    assert model.SerializeToString() == before
    assert placed.opset_import == model.opset_import and placed.ir_version == model.ir_version
    for field in ("input", "output", "value_info"):
        assert list(getattr(placed.graph, field)) == list(getattr(model.graph, field))


def test_names_are_unique_deterministic_and_avoid_existing_ones():
    model = block(side_reader=True, tail="MaxPool")
    side = next(n for n in model.graph.node if n.name == "side")
    side.name = "r_trtdq"  # a node and a tensor already carry the names the pass would pick
    side.output[0] = model.graph.output[1].name = "r_trtq"
    placed, record = place(model)
    assert record["residual_add"] == ["r"] and record["pooling"] == ["s"]
    assert list(nodes_by_name(placed)["residual"].input) == ["c", "r_trtdq_1"]
    assert producer_of(placed, "r_trtdq_1").input[0] == "r_trtq_1"
    names = [n.name for n in placed.graph.node]
    made = [o for n in placed.graph.node for o in n.output] + [t.name for t in placed.graph.initializer]
    assert len(set(names)) == len(names) and len(set(made)) == len(made)
    again, _ = place(model)
    assert again.SerializeToString() == placed.SerializeToString()


def test_an_opset_without_quantizelinear_is_refused():
    model = block()
    model.opset_import[0].version = 9
    with pytest.raises(CalibrationError, match="opset >= 10"):
        add_trt_fusion_qdq(model, RANGES)


def test_on_a_model_quantize_static_wrote(tmp_path):
    """quantize_static points every reader of a quantized activation at its DQ (the identity
    shortcut r here): what is left is the projection shortcut (a Conv output) and the pool input."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), f"w{k}") for k in range(3)]
    fp32 = model_of([helper.make_node("Relu", ["x"], ["r"], name="head"),
                     helper.make_node("Conv", ["r", "w0", "b"], ["m1"], name="conv1", pads=[1, 1, 1, 1]),
                     helper.make_node("Relu", ["m1"], ["m2"], name="relu1"),
                     helper.make_node("Conv", ["m2", "w1", "b"], ["m3"], name="conv2", pads=[1, 1, 1, 1]),
                     helper.make_node("Conv", ["r", "w2", "b"], ["d"], name="downsample", pads=[1, 1, 1, 1]),
                     helper.make_node("Add", ["m3", "d"], ["s"], name="projection"),
                     helper.make_node("Conv", ["s", "w0", "b"], ["e"], name="conv3", pads=[1, 1, 1, 1]),
                     helper.make_node("Add", ["e", "r"], ["t"], name="identity"),
                     helper.make_node("GlobalAveragePool", ["t"], ["y"], name="pool")],
                    [tensor("y", [1, 4, 1, 1])], [*weights, numpy_helper.from_array(BIAS, "b")])
    onnx.save(fp32, tmp_path / "fp32.onnx")
    feeds = [{"x": rng.normal(0, 1, SHAPE).astype(np.float32)} for _ in range(4)]

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "q.onnx"), Feeds(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": ["Conv"]})
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    probe = model_of(fp32.graph.node, [tensor(t) for t in "rdt"], fp32.graph.initializer)
    values = [run(probe, f) for f in feeds]
    ranges = {t: (float(min(v[t].min() for v in values)), float(max(v[t].max() for v in values))) for t in "rdt"}
    placed, record = place(quantized, ranges)
    assert record == {"residual_add": ["d"], "pooling": ["t"], "no_range": []}
    nodes = nodes_by_name(placed)
    assert list(nodes["projection"].input) == ["m3", "d_trtdq"]
    assert nodes["identity"].input[1] == "r_DequantizeLinear_Output"  # quantize_static's pair: kept as it is
    assert symmetric_scale(ranges["r"]) == initializer(placed, "r_scale")  # the scale quantize_static computes
    np.testing.assert_allclose(run(placed, feeds[0])["y"], run(fp32, feeds[0])["y"], atol=0.05)
