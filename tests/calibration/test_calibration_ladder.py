import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from batchforge.calibration.data import CalibrationData, load_calibration_data, neighbour_correlation
from batchforge.calibration.fp16 import SAFE_MAGNITUDE, convert_to_fp16, nodes_to_keep
from batchforge.cli import main
from batchforge.errors import CalibrationError
from batchforge.export.samples import write_samples
from batchforge.runtime import load_pipeline
from batchforge.runtime.artifacts import ModelArtifacts, Precision


def overflow_graph() -> onnx.ModelProto:
    """x -> Mul(3e4) (|.| ~ 1e5, past FP16) -> Mul(1e-4) -> y: a graph FP16 must not touch whole."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "big"], ["h"], name="scale_up"),
         helper.make_node("Mul", ["h", "small"], ["y"], name="scale_down"),
         helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.array(3e4, np.float32), "big"),
                     numpy_helper.from_array(np.array(1e-4, np.float32), "small")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def data_of(arrays) -> CalibrationData:
    feeds = tuple({"x": a} for a in arrays)
    return CalibrationData(feeds, "test", "0" * 64, synthetic=False)


def test_fp16_keeps_overflow_prone_nodes_in_fp32(tmp_path):
    import onnxruntime as ort

    src = tmp_path / "m.onnx"
    onnx.save(overflow_graph(), src)
    data = data_of(np.random.default_rng(0).normal(0, 2, (8, 4)).astype(np.float32))
    report = convert_to_fp16(src, tmp_path / "h.onnx", data)
    kept = {k["node"]: k["reason"] for k in report["kept_fp32"]}
    assert set(kept) == {"scale_up", "scale_down"}, kept  # producer and consumer of the big tensor
    assert f"> {SAFE_MAGNITUDE:.0f}" in kept["scale_up"]
    converted = onnx.load(str(tmp_path / "h.onnx"))
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O kept
    x = data.feeds[0]["x"][None]
    got = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np.maximum(x * 3e4 * 1e-4, 0), rtol=2e-3, atol=1e-3)


def test_fp16_block_list_and_unknown_names():
    model = overflow_graph()
    kept = nodes_to_keep(model, {}, ["Relu"])
    assert [(k.node, k.reason) for k in kept] == [("relu", "user block list")]
    with pytest.raises(CalibrationError, match="no node or op type"):
        nodes_to_keep(model, {}, ["Softmax"])


def test_calibration_refuses_missing_noise_and_cast_data(user_tiny_artifacts, tmp_path):
    root, name = user_tiny_artifacts
    pipe = load_pipeline(name, output_dir=root, backend="onnxruntime-cpu")
    with pytest.raises(CalibrationError, match="no calibration data given") as info:
        load_calibration_data(pipe, None, samples=8)
    assert "--allow-synthetic" in info.value.one_line()
    noise = tmp_path / "noise"
    noise.mkdir()
    from batchforge.runtime.images import write_image

    rng = np.random.default_rng(1)
    for i in range(8):
        write_image(noise / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    with pytest.raises(CalibrationError, match="look like random noise"):
        load_calibration_data(pipe, noise, samples=8)
    assert load_calibration_data(pipe, noise, samples=8, allow_random=True).count == 8
    np.save(tmp_path / "x.npy", np.zeros((8, 3, 32, 32)))  # float64
    with pytest.raises(CalibrationError, match="float64, the model input is float32"):
        load_calibration_data(pipe, tmp_path / "x.npy", samples=8)
    np.save(tmp_path / "y.npy", np.zeros((8, 3, 16, 16), np.float32))
    with pytest.raises(CalibrationError, match="expected"):
        load_calibration_data(pipe, tmp_path / "y.npy", samples=8)
    (noise / "3.png").write_bytes(b"broken")
    with pytest.raises(CalibrationError, match="could not be read"):
        load_calibration_data(pipe, noise, samples=8, allow_random=True)
    with pytest.raises(CalibrationError, match="at least 8"):
        load_calibration_data(pipe, None, samples=4, allow_synthetic=True)


def test_neighbour_correlation_separates_images_from_noise():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(3, 32, 32)), axis=2).astype(np.float32)
    assert neighbour_correlation([{"x": smooth}], "x") > 0.8
    assert abs(neighbour_correlation([{"x": rng.normal(size=(3, 32, 32))}], "x")) < 0.1


def test_ladder_on_a_user_model_convert_calibrate_parity(user_tiny_artifacts, tmp_path, capsys):
    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    write_samples("reid", tmp_path / "calib" / "reid", 32, seed=4000)
    out = ["--output-dir", str(root)]
    assert main(["convert", name, "--allow-synthetic", "--samples", "16", *out]) == 0
    assert "SYNTHETIC" in capsys.readouterr().err
    assert main(["calibrate", name, "--data", str(tmp_path / "calib"), "--samples", "32", *out]) == 0
    artifacts = ModelArtifacts.at(root, name)
    fp16 = json.loads(artifacts.sidecar(Precision.FP16).read_text())
    assert fp16["data"]["synthetic"] is True and "warning" in fp16
    int8 = json.loads(artifacts.sidecar(Precision.INT8).read_text())
    assert int8["data"]["synthetic"] is False and len(int8["data"]["sha256"]) == 64
    assert int8["method"] == "percentile" and int8["steps"][0]["excluded"] == 0
    assert int8["effect"]["final_min_cosine"] >= int8["effect"]["full_int8_min_cosine"]
    assert int8["source_sha256"] == artifacts.export_record()["onnx"]["sha256"]
    q = onnx.load(str(artifacts.onnx(Precision.INT8)))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert main(["parity", name, "--precision", "fp16,int8", "--eval-size", "4", "--threads", "2", *out,
                 "--factory", "user_models:tiny_embedder"]) == 0


def test_stale_lower_precision_after_reexport_is_refused(user_tiny_artifacts, tmp_path):
    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    assert main(["convert", name, "--allow-synthetic", "--samples", "8", "--output-dir", str(root)]) == 0
    record = json.loads((root / name / "export.json").read_text())
    record["onnx"]["sha256"] = "f" * 64  # as if the FP32 model had been re-exported
    (root / name / "export.json").write_text(json.dumps(record))
    code = main(["parity", name, "--precision", "fp16", "--eval-size", "4", "--output-dir", str(root),
                 "--factory", "user_models:tiny_embedder"])
    assert code == 2


def test_fp16_handles_a_constant_shared_by_two_resizes(tmp_path):
    """onnxruntime's converter alone writes two Casts with one output name here (not SSA)."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, 4, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2")]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32))
    nodes = [helper.make_node("Constant", [], ["scales"], name="c", value=scales),
             helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Resize", ["r", "", "scales"], ["y1"], name="up1", mode="nearest"),
             helper.make_node("Resize", ["x", "", "scales"], ["y2"], name="up2", mode="nearest")]
    model = helper.make_model(helper.make_graph(nodes, "shared", [x], outs),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "m.onnx"))
    feed = np.random.default_rng(0).normal(size=(8, 2, 4, 4)).astype(np.float32)
    convert_to_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx", data_of(list(feed)))
    got = ort.InferenceSession(str(tmp_path / "m16.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": feed})
    want = np.repeat(np.repeat(feed, 2, axis=2), 2, axis=3)
    np.testing.assert_allclose(got[1], want, rtol=1e-3)
    np.testing.assert_allclose(got[0], np.maximum(want, 0), rtol=1e-3)


def _fragile_model(rng, path):
    """x has one outlier column that MatMul "fragile" ignores: int8 on x (one scale for the
    outlier) wipes out the columns it uses; MatMul "robust" quantizes harmlessly."""
    w1 = rng.normal(size=(16, 16)).astype(np.float32)
    w1[15] = 0.0  # the outlier column does not reach the output
    w2 = rng.normal(size=(16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fragile"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="robust")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    items = rng.normal(size=(32, 16)).astype(np.float32) * 0.05
    items[:, 15] = 1000.0
    return model, items


def test_sensitivity_pass_keeps_the_node_int8_hurts_most_in_fp32(tmp_path):
    """x has one outlier column that the first MatMul ignores: int8 on x (one scale for the
    outlier) wipes out the columns it uses; the second MatMul quantizes harmlessly."""
    from batchforge.calibration.int8 import Int8Options, calibrate_int8

    rng = np.random.default_rng(0)
    _, items = _fragile_model(rng, tmp_path / "m.onnx")
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", data_of(list(items)),
                            Int8Options(method="minmax", target_cosine=0.9999, max_excluded=2))
    assert report["sensitivity_top"][0]["node"] == "fragile"
    assert [s["node"] for s in report["excluded_by_sensitivity"]] == ["fragile"]
    assert report["effect"]["full_int8_min_cosine"] < 0.9 < 0.999 < report["effect"]["final_min_cosine"]
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    dq_inputs = {n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    assert "x" not in dq_inputs and "r" in dq_inputs  # fragile runs on FP32 input, robust on int8


def test_switchable_model_computes_fp32_when_off_and_one_node_int8_when_on(tmp_path):
    """The sensitivity pass's switch: all zeros must be the FP32 graph exactly; a one-hot switch
    must quantize that node alone (here the fragile MatMul, whose int8 input loses its signal)."""
    import onnxruntime as ort

    from batchforge.calibration.int8 import SWITCH, _quantize, switchable_model

    rng = np.random.default_rng(1)
    model, items = _fragile_model(rng, tmp_path / "m.onnx")
    _quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", data_of(list(items)), [], "minmax", tmp_path / "c.json")
    switched, nodes = switchable_model(model, onnx.load(str(tmp_path / "q.onnx")))
    assert [n.name for n in nodes] == ["fragile", "robust"]
    sess = ort.InferenceSession(switched.SerializeToString(), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = plain.run(None, {"x": items})[0]

    def run(switch):
        return sess.run(None, {"x": items, SWITCH: np.array(switch, np.float32)})[0]

    np.testing.assert_array_equal(run([0, 0]), want)
    fragile, robust = run([1, 0]), run([0, 1])
    assert np.abs(fragile - want).max() > 0.5 * np.abs(want).max()  # the small columns round to zero
    np.testing.assert_allclose(robust, want, rtol=0.05, atol=0.05 * np.abs(want).max())


def _branchy_model(rng, path):
    """Five MatMuls with a skip connection over two of them, a second output made early (before
    later segments start) and a Relu between: what a segment cut must carry across."""
    w = {f"w{i}": rng.normal(size=(16, 16)).astype(np.float32) * 0.3 for i in range(5)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["a"], name="m0"),
         helper.make_node("Relu", ["a"], ["ra"], name="relu0"),
         helper.make_node("MatMul", ["ra", "w1"], ["b"], name="m1"),
         helper.make_node("Tanh", ["b"], ["early"], name="tanh"),
         helper.make_node("MatMul", ["early", "w2"], ["c"], name="m2"),
         helper.make_node("Add", ["c", "ra"], ["skip"], name="add"),
         helper.make_node("MatMul", ["skip", "w3"], ["d"], name="m3"),
         helper.make_node("Relu", ["d"], ["rd"], name="relu1"),
         helper.make_node("MatMul", ["rd", "w4"], ["y"], name="m4")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16]),
         helper.make_tensor_value_info("early", TensorProto.FLOAT, ["batch", 16])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    items = rng.normal(size=(32, 16)).astype(np.float32)
    items[:, 3] *= 50.0  # one wide column: int8 on x costs the others precision
    return model, items


@pytest.mark.parametrize("segment_nodes", [1, 2, 4, 16])
def test_segmented_sensitivity_equals_the_whole_switchable_model(tmp_path, monkeypatch, segment_nodes):
    """The sensitivity pass scores nodes in segments fed FP32 values from before them. Every
    node's output drop must equal, to the bit, what the single whole switchable model (the
    all-nodes graph with a one-hot switch) gives, whatever the segment size, with a skip
    connection and an early graph output crossing the cuts."""
    from batchforge.calibration import int8
    from batchforge.calibration.activations import session

    rng = np.random.default_rng(3)
    model, items = _branchy_model(rng, tmp_path / "m.onnx")
    data = data_of(list(items))
    int8._quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", data, [], "minmax", tmp_path / "c.json")
    monkeypatch.setattr(int8, "SEGMENT_NODES", segment_nodes)
    got = {s.node: s.output_drop for s in int8.node_sensitivity(model, tmp_path / "q.onnx", data)}

    whole, nodes = int8.switchable_model(model, onnx.load(str(tmp_path / "q.onnx")))
    assert [n.name for n in nodes] == ["m0", "m1", "m2", "m3", "m4"]
    sess = session(whole, optimized=True)
    feed = next(data.batches(int8.SENSITIVITY_ITEMS, limit=int8.SENSITIVITY_ITEMS))
    want = sess.run(None, {**feed, int8.SWITCH: np.zeros(len(nodes), np.float32)})
    expected = {}
    for k, node in enumerate(nodes):
        switch = np.eye(len(nodes), dtype=np.float32)[k]
        cosines = int8._output_cosines(want, sess.run(None, {**feed, int8.SWITCH: switch}))
        expected[node.name] = 1.0 - float(np.mean(cosines))
    assert got == expected
    assert min(expected.values()) > 0  # every node's int8 input changes the outputs: a real comparison


def _input_scale(path) -> float:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return next(float(inits[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] == "x")


def test_entropy_clips_rare_outliers_that_minmax_keeps(tmp_path):
    """--method entropy must be entropy: with quantize_static's 128-bin default it was MinMax
    under another name. On a bell-shaped input with a few outliers at 40 sigma, the KL threshold
    sits near the bulk of the values, the MinMax one on the outlier."""
    from batchforge.calibration.int8 import _quantize

    rng = np.random.default_rng(2)
    _fragile_model(rng, tmp_path / "m.onnx")  # its graph; the items are drawn below
    items = rng.normal(size=(256, 16)).astype(np.float32)
    items[::64, 3] = 40.0  # 4 of 4096 values
    data = data_of(list(items))
    _quantize(tmp_path / "m.onnx", tmp_path / "mm.onnx", data, [], "minmax", tmp_path / "mm.json")
    _quantize(tmp_path / "m.onnx", tmp_path / "en.onnx", data, [], "entropy", tmp_path / "en.json")
    minmax, entropy = _input_scale(tmp_path / "mm.onnx"), _input_scale(tmp_path / "en.onnx")
    assert minmax == pytest.approx(40.0 / 127, rel=1e-3)
    assert entropy < 0.25 * minmax


def test_plain_fp16_model_on_cpu_loads_without_the_nchwc_transformer(user_tiny_artifacts, tmp_path):
    """ONNX Runtime 1.31/1.32 segfault when the NCHWc transformer meets the converted FP16
    ViT-B/16 (reproduced: `batchforge run reid_vit_b_16 --precision fp16` exited 139). A plain FP16
    model on the CPU is opened without it; a `build` artifact (optimised offline first) and the
    other precisions keep the full level."""
    from batchforge.runtime.loading import open_runner

    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    assert main(["convert", name, "--allow-synthetic", "--samples", "8", "--output-dir", str(root)]) == 0
    artifacts = ModelArtifacts.at(root, name)

    def opened(precision):
        runner = open_runner(artifacts, precision=precision, backend="onnxruntime-cpu", threads=1)
        with runner:  # the session must load and run with the options chosen
            feed = {t.name: np.zeros((1, *map(int, t.item_shape)), t.dtype) for t in artifacts.spec().inputs}
            assert runner.infer(feed)
        return runner

    plain = opened("fp16")
    assert plain.options.disabled_optimizers == ("NchwcTransformer",)
    assert plain.options.graph_optimization == "all" and ":built" not in plain.name
    assert opened("fp32").options.disabled_optimizers == ()
    assert main(["build", name, "--precision", "fp16", "--backend", "onnxruntime", "--output-dir", str(root)]) == 0
    built = opened("fp16")
    assert ":built" in built.name and built.options.disabled_optimizers == ()


@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax"])
def test_batch_by_batch_ranges_equal_ort_one_shot_calibration(tmp_path, method):
    """calibration/ranges.py streams activations one batch at a time (ViT-B/16 held 8.3 GB of them
    in ORT's one-shot collection). The ranges must be bit-identical to what quantize_static's own
    calibrator computes from all batches at once; the batches here span different ranges, so a
    histogram binned per batch on its own range would differ."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    from batchforge.calibration.data import FeedReader
    from batchforge.calibration.int8 import ENTROPY_BINS, ENTROPY_LEVELS, QUANTIZED_OPS
    from batchforge.calibration.ranges import write_ranges

    rng = np.random.default_rng(5)
    _fragile_model(rng, tmp_path / "m.onnx")
    items = (rng.normal(size=(40, 16)) * np.repeat([0.1, 3.0, 0.5, 7.0, 1.0], 8)[:, None]).astype(np.float32)
    items[17, 2] = -25.0
    data = data_of(list(items))  # 5 batches of 8 with different spreads
    options = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_LEVELS} if method == "entropy" else {}
    write_ranges(tmp_path / "m.onnx", data, tmp_path / "streamed.json", method, QUANTIZED_OPS, options,
                 batch_size=8)
    kind = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
            "minmax": CalibrationMethod.MinMax}[method]
    one_shot = create_calibrator(tmp_path / "m.onnx", list(QUANTIZED_OPS),
                                 augmented_model_path=str(tmp_path / "aug.onnx"), calibrate_method=kind,
                                 extra_options=options)
    one_shot.collect_data(FeedReader(data, 8))  # ORT: every batch's activations, then one histogram
    save_tensors_data(one_shot.compute_data(), tmp_path / "one_shot.json")
    streamed = json.loads((tmp_path / "streamed.json").read_text())
    expected = json.loads((tmp_path / "one_shot.json").read_text())
    assert streamed == expected and sorted(expected["data"]) == ["h", "r", "x", "y"]


def test_batches_end_where_the_shapes_change_and_keep_the_order():
    shapes = [(3, 8, 8)] * 3 + [(3, 6, 9)] * 2 + [(3, 8, 8)]
    feeds = tuple({"x": np.full(s, i, np.float32)} for i, s in enumerate(shapes))
    data = CalibrationData(feeds, "test", "0" * 64, synthetic=False)
    batches = list(data.batches(2))
    assert [b["x"].shape for b in batches] == [(2, 3, 8, 8), (1, 3, 8, 8), (2, 3, 6, 9), (1, 3, 8, 8)]
    assert [int(v) for b in batches for v in b["x"][:, 0, 0, 0]] == list(range(6))
