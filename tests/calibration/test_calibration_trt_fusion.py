"""TensorRT fusion placement: Q/DQ on the residual input of an Add after a conv and on pooling
inputs, checked on graph structure and run on ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from batchforge.calibration.trt_fusion import add_trt_fusion_qdq


def block() -> onnx.ModelProto:
    """x -> relu r (also read by an Identity) ; conv(r) -> c ; add(c, r) -> s ; maxpool(s) -> y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "r"], ["s"], name="residual"),
             helper.make_node("MaxPool", ["s"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Identity", ["r"], ["side"], name="side")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2]),
         helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 2, 4, 4])],
        initializer=[numpy_helper.from_array(rng.normal(0, 0.5, (2, 2, 3, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


RANGES = {"r": (0.0, 2.54), "s": (-3.0, 1.27), "c": (-1.0, 1.0)}


def fake_quant(x, scale):
    return np.clip(np.round(x / scale), -128, 127) * scale  # numpy rounds half to even, as ONNX


def test_residual_add_and_pool_inputs_get_q_dq_and_nothing_else():
    model = block()
    before = model.SerializeToString()
    placed, added = add_trt_fusion_qdq(model, RANGES)
    assert model.SerializeToString() == before  # the input is not modified
    assert added == {"residual_add": ["r"], "pooling": ["s"], "no_range": []}
    onnx.checker.check_model(placed)
    nodes = {n.name: n for n in placed.graph.node}
    assert list(nodes["residual"].input) == ["c", "r_trtdq"]  # the conv branch and the output untouched
    assert list(nodes["pool"].input) == ["s_trtdq"]
    assert list(nodes["side"].input) == ["r"] and nodes["conv"].input[0] == "r"  # other readers keep FP32
    inits = {t.name: numpy_helper.to_array(t) for t in placed.graph.initializer}
    assert np.isclose(inits["r_trtscale"], 2.54 / 127) and np.isclose(inits["s_trtscale"], 3.0 / 127)
    assert inits["r_trtzero"].dtype == np.int8 and int(inits["r_trtzero"]) == 0
    again, _ = add_trt_fusion_qdq(block(), RANGES)
    assert again.SerializeToString() == placed.SerializeToString()  # deterministic names


def test_the_placed_model_computes_the_fake_quantised_reference():
    placed, _ = add_trt_fusion_qdq(block(), RANGES)
    x = np.random.default_rng(1).normal(0, 1, (1, 2, 4, 4)).astype(np.float32)
    got = ort.InferenceSession(placed.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    r = np.maximum(x, 0)
    w = numpy_helper.to_array(block().graph.initializer[0])
    conv = ort.InferenceSession(helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["r", "w"], ["c"], pads=[1, 1, 1, 1])], "c",
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 2, 4, 4])],
        initializer=[numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 18)],
        ir_version=9).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"r": r})[0]
    s = fake_quant(conv + fake_quant(r, np.float32(2.54 / 127)), np.float32(3.0 / 127))
    want = s.reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_no_range_dequantized_inputs_and_two_conv_branches():
    placed, added = add_trt_fusion_qdq(block(), {"s": (-1.0, 1.0)})  # no range for r
    assert added == {"residual_add": [], "pooling": ["s"], "no_range": ["r"]}
    _, again = add_trt_fusion_qdq(placed, {"s": (-1.0, 1.0), "r": (0, 1)})
    assert again["pooling"] == []  # already dequantized: nothing new
    # both Add inputs from convs: the earlier one (the skip projection) is quantized
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="skip"),
             helper.make_node("Conv", ["x", "w"], ["b"], name="main"),
             helper.make_node("Add", ["b", "a"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
                              initializer=[numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")])
    two, added = add_trt_fusion_qdq(helper.make_model(graph), {"a": (-1, 1), "b": (-1, 1)})
    assert added["residual_add"] == ["a"]
    assert list(next(n for n in two.graph.node if n.name == "add").input) == ["b", "a_trtdq"]
