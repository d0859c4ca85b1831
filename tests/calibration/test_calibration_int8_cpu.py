"""The CPU INT8 artifact: one calibration, a form ONNX Runtime's CPU kernels fuse, chosen by the
runner by this CPU's VNNI (both branches forced), its fusion counted in build and bench."""

import json
import logging
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from batchforge.calibration.data import CalibrationData
from batchforge.calibration.int8 import Int8Options, calibrate_int8
from batchforge.calibration.int8_cpu import fusion_counts, keep_outputs_float, output_tail
from batchforge.cli import main
from batchforge.errors import IntegrityError
from batchforge.export.samples import write_samples
from batchforge.runtime import loading
from batchforge.runtime.artifacts import ModelArtifacts, Precision


def residual_net() -> onnx.ModelProto:
    """x -> conv a -> relu -> conv b -> add(relu) -> relu -> global pool -> flatten -> y."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu_a"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="residual"),
             helper.make_node("Relu", ["s"], ["r2"], name="relu_b"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"], name="flatten")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.full(8, 0.1, np.float32), "b1"),
                     numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(8, np.float32), "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _data(count: int = 16) -> CalibrationData:
    rng = np.random.default_rng(1)
    feeds = tuple({"x": rng.normal(size=(3, 16, 16)).astype(np.float32)} for _ in range(count))
    return CalibrationData(feeds, "test", "0" * 64, synthetic=False)


def test_output_tail_stops_at_the_last_conv_and_at_a_node_of_several_inputs():
    assert output_tail(residual_net()) == ["residual", "relu_b", "pool", "flatten"]


@pytest.mark.parametrize("target", ["vnni", "no-vnni"])
def test_cpu_form_fuses_into_int8_kernels_and_keeps_the_tail_fp32(tmp_path, target):
    onnx.save(residual_net(), tmp_path / "m.onnx")
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", _data(), Int8Options(cpu_target=target),
                            cpu_out_path=tmp_path / "cpu.onnx")
    cpu = report["cpu"]
    assert cpu["adopted"] is True, cpu
    assert cpu["target"] == target and cpu["reduce_range"] is (target == "no-vnni")
    assert cpu["output_tail_fp32"] == ["residual", "relu_b", "pool", "flatten"]
    assert cpu["fusion"]["fused"] == {"QLinearConv": 2}, cpu["fusion"]
    assert cpu["fusion"]["float_compute"] == {}
    assert cpu["effect"]["min_cosine"] > 0.99
    # the TensorRT form from the same calibration is evaluated as written: no conv is fused
    trt = fusion_counts(tmp_path / "q.onnx")
    assert trt["fused"] == {} and sum(trt["float_compute"].values()) == 2
    model = onnx.load(str(tmp_path / "cpu.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8
               and t.dims and len(t.dims) == 4]
    assert len(weights) == 2
    widest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    # reduce_range: 7-bit weights (|w| <= 64), which u8s8 kernels without VNNI cannot saturate
    assert (widest <= 64) if target == "no-vnni" else (widest == 127)
    assert model.graph.output[0].name == "y"
    assert not any(n.op_type == "DequantizeLinear" and "y" in n.output for n in model.graph.node)


def test_keep_outputs_float_removes_the_q_dq_pair_on_an_output():
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"], name="q"),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              initializer=[numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                                           numpy_helper.from_array(np.array(0, np.uint8), "z")])
    model = helper.make_model(graph)
    assert keep_outputs_float(model) == ["y"]
    assert [(n.op_type, list(n.output)) for n in model.graph.node] == [("Relu", ["y"])]


@pytest.fixture(scope="module")
def calibrated(user_tiny_artifacts, tmp_path_factory):
    """The tiny user model calibrated with a "vnni" CPU artifact."""
    src_root, name = user_tiny_artifacts
    tmp = tmp_path_factory.mktemp("cpu_int8")
    root = tmp / "artifacts"
    shutil.copytree(src_root, root)
    write_samples("reid", tmp / "calib" / "reid", 16, seed=4000)
    assert main(["calibrate", name, "--data", str(tmp / "calib"), "--samples", "16", "--cpu-target", "vnni",
                 "--output-dir", str(root)]) == 0
    return root, name, tmp / "calib"


def _copy(calibrated, tmp_path):
    root, name, _ = calibrated
    shutil.copytree(root, tmp_path / "a")
    return ModelArtifacts.at(tmp_path / "a", name)


def test_runner_runs_the_cpu_artifact_where_this_cpu_can_fuse_it(calibrated, tmp_path, monkeypatch, caplog):
    artifacts = _copy(calibrated, tmp_path)
    record = json.loads(artifacts.sidecar(Precision.INT8).read_text())
    assert record["cpu_onnx"]["file"] == "model.int8.cpu.onnx" and record["cpu"]["target"] == "vnni"
    monkeypatch.setattr(loading, "cpu_has_vnni", lambda: True)
    runner = loading.open_runner(artifacts, precision="int8", backend="onnxruntime-cpu")
    assert runner.name.endswith(":int8-cpu-vnni") and runner.model.endswith("model.int8.cpu.onnx")
    assert runner.options.graph_optimization == "all"
    # the same artifact on a CPU without VNNI: the TensorRT Q/DQ model as written, said once
    monkeypatch.setattr(loading, "cpu_has_vnni", lambda: False)
    loading._SAID.clear()
    with caplog.at_level(logging.WARNING, logger="batchforge.onnxruntime"):
        runner = loading.open_runner(artifacts, precision="int8", backend="onnxruntime-cpu")
        loading.open_runner(artifacts, precision="int8", backend="onnxruntime-cpu")
    assert runner.name.endswith(":int8-qdq-as-written") and runner.model.endswith("model.int8.onnx")
    assert runner.options.graph_optimization == "basic"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "has none" in said[0] and "--cpu-target no-vnni" in said[0]


def test_a_no_vnni_artifact_runs_fused_on_a_cpu_without_vnni(calibrated, tmp_path, monkeypatch):
    root, name, calib = calibrated
    shutil.copytree(root, tmp_path / "a")
    assert main(["calibrate", name, "--data", str(calib), "--samples", "16", "--cpu-target", "no-vnni",
                 "--output-dir", str(tmp_path / "a")]) == 0
    monkeypatch.setattr(loading, "cpu_has_vnni", lambda: False)
    runner = loading.open_runner(ModelArtifacts.at(tmp_path / "a", name), precision="int8",
                                 backend="onnxruntime-cpu")
    assert runner.name.endswith(":int8-cpu-no-vnni") and runner.options.graph_optimization == "all"


def test_older_calibration_and_tampered_cpu_artifact(calibrated, tmp_path):
    artifacts = _copy(calibrated, tmp_path)
    path = artifacts.cpu_int8_onnx
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match its record"):
        loading.open_runner(artifacts, precision="int8", backend="onnxruntime-cpu")
    record = json.loads(artifacts.sidecar(Precision.INT8).read_text())
    del record["cpu_onnx"]  # a calibration from before the CPU artifact
    artifacts.sidecar(Precision.INT8).write_text(json.dumps(record))
    runner = loading.open_runner(artifacts, precision="int8", backend="onnxruntime-cpu")
    assert runner.name.endswith(":int8-qdq-as-written")


def test_build_records_fusion_and_bench_compares_precisions(calibrated, tmp_path, monkeypatch, capsys):
    artifacts = _copy(calibrated, tmp_path)
    monkeypatch.setattr(loading, "cpu_has_vnni", lambda: True)
    out = ["--output-dir", str(artifacts.root)]
    assert main(["build", artifacts.model, "--precision", "int8", "--backend", "onnxruntime", *out]) == 0
    said = capsys.readouterr().out
    assert "from model.int8.cpu.onnx" in said and "fused int8 node(s) (QLinearConv" in said
    manifest = json.loads(artifacts.ort_manifest(Precision.INT8).read_text())
    speed = manifest["speed_vs_fp32"]
    assert speed["batch"] == 4 and speed["runs"] == 3 and speed["ratio"] > 0
    line = next(x for x in said.splitlines() if "the throughput of fp32" in x)
    assert f"{speed['ratio']:.2f}x" in line and ("SLOWER than fp32" in line) is (speed["ratio"] < 1.0)
    assert manifest["source_file"] == "model.int8.cpu.onnx"
    assert manifest["fusion"]["fused"]["QLinearConv"] >= 1 and manifest["fusion"]["level"] == "all"
    assert main(["inspect", str(artifacts.dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["artifacts"]["engine.int8.ort.json"]["fusion"] == manifest["fusion"]
    report = tmp_path / "bench.json"
    assert main(["bench", artifacts.model, "--precision", "int8,fp32", "--batch-sizes", "2", "--repeats", "1",
                 "--json", str(report), *out]) == 0
    printed = capsys.readouterr().out
    assert "int8/fp32" in printed and "int8-cpu-vnni:built" in printed
    result = json.loads(report.read_text())
    assert result["baseline"] == "fp32" and result["rows"][0]["fp32"]["ratio"] == 1.0
    assert result["rows"][0]["int8"]["ratio"] > 0
    assert result["artifacts"]["int8"]["fusion"]["fused"]["QLinearConv"] >= 1


def test_an_int8_bundle_ships_and_runs_the_cpu_artifact(calibrated, tmp_path, monkeypatch):
    from batchforge.runtime import load_pipeline

    artifacts = _copy(calibrated, tmp_path)
    monkeypatch.setattr(loading, "cpu_has_vnni", lambda: True)
    assert main(["bundle", artifacts.model, "--precision", "int8", "--out", str(tmp_path / "b"),
                 "--output-dir", str(artifacts.root)]) == 0
    assert (tmp_path / "b" / "artifacts" / artifacts.model / "model.int8.cpu.onnx").is_file()
    with load_pipeline(bundle=tmp_path / "b", backend="onnxruntime-cpu") as pipeline:
        assert pipeline.runner.name.endswith(":int8-cpu-vnni")


def test_a_cpu_form_less_accurate_than_the_tensorrt_form_is_not_adopted(tmp_path, monkeypatch):
    from batchforge.calibration import int8_cpu

    monkeypatch.setattr(int8_cpu, "CPU_COSINE_SLACK", -1.0)  # as if the CPU form agreed worse
    onnx.save(residual_net(), tmp_path / "m.onnx")
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", _data(), Int8Options(cpu_target="vnni"),
                            cpu_out_path=tmp_path / "cpu.onnx")
    assert report["cpu"]["adopted"] is False and "runs that one as written" in report["cpu"]["reason"]
    assert not (tmp_path / "cpu.onnx").exists() and (tmp_path / "q.onnx").is_file()


@pytest.mark.parametrize("choice", ["always", "never"])
def test_cpu_form_always_ships_it_and_never_writes_none(tmp_path, monkeypatch, choice):
    from batchforge.calibration import int8_cpu

    monkeypatch.setattr(int8_cpu, "CPU_COSINE_SLACK", -1.0)  # as if the CPU form agreed worse
    onnx.save(residual_net(), tmp_path / "m.onnx")
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", _data(),
                            Int8Options(cpu_target="vnni", cpu_form=choice), cpu_out_path=tmp_path / "cpu.onnx")
    if choice == "never":
        assert "cpu" not in report and not (tmp_path / "cpu.onnx").exists()
    else:
        assert report["cpu"]["adopted"] is True and "adopted anyway" in report["cpu"]["reason"]
        assert (tmp_path / "cpu.onnx").is_file()


def test_cpu_mixed_precision_keeps_the_fewest_nodes_fp32_by_doubling_then_bisection(tmp_path, monkeypatch):
    from batchforge.calibration import int8_cpu

    tried: list[int] = []

    def fake_quantize(fp32, out, data, excluded, method, cache, target):
        tried.append(len(excluded) - 1)  # one node was excluded by the TensorRT form already
        out.write_bytes(b"x")
        return []

    monkeypatch.setattr(int8_cpu, "quantize_cpu", fake_quantize)
    monkeypatch.setattr(int8_cpu, "fusion_counts", lambda path: {"fused": {}})
    order = [f"n{i}" for i in range(8)]
    record = int8_cpu.write_cpu_form(
        tmp_path / "m.onnx", tmp_path / "cpu.onnx", _data(2), ["t0"], method="minmax", cache=tmp_path / "c",
        target="vnni", form="auto", max_extra=8, trt_min_cosine=0.99,
        agreement=lambda path, fused: {"min_cosine": 0.99 if tried[-1] >= 3 else 0.98, "mean_cosine": 0.995},
        rank=lambda path: ["t0", *order])
    assert tried == [0, 1, 2, 4, 3]  # all-int8, then 1, 2, 4 (reaches it), then bisection down to 3
    assert record["adopted"] is True and record["excluded_for_cpu"] == ["n0", "n1", "n2"]
    assert record["excluded"] == ["t0", "n0", "n1", "n2"] and len(record["steps"]) == 5
    # far below the TensorRT form: no search, not adopted
    tried.clear()
    record = int8_cpu.write_cpu_form(
        tmp_path / "m.onnx", tmp_path / "cpu.onnx", _data(2), [], method="minmax", cache=tmp_path / "c",
        target="vnni", form="auto", max_extra=8, trt_min_cosine=0.99,
        agreement=lambda path, fused: {"min_cosine": 0.90, "mean_cosine": 0.95}, rank=lambda path: order)
    assert tried == [-1] and record["adopted"] is False and not (tmp_path / "cpu.onnx").exists()


@pytest.mark.parametrize("has_vnni", [True, False])
def test_cpu_form_is_judged_fused_only_where_this_cpu_runs_the_target_kernels(tmp_path, monkeypatch, has_vnni):
    """A vnni artifact judged on a CPU without VNNI would be judged by kernels that saturate where
    the target's do not: it is judged as written there; a no-vnni artifact is fused everywhere."""
    from batchforge.calibration import int8_cpu

    monkeypatch.setattr(int8_cpu, "quantize_cpu", lambda *args: (args[1].write_bytes(b"x"), [])[1])
    monkeypatch.setattr(int8_cpu, "fusion_counts", lambda path: {"fused": {}})
    monkeypatch.setattr(loading, "cpu_has_vnni", lambda: has_vnni)
    for target, fused in (("vnni", has_vnni), ("no-vnni", True)):
        asked: list[bool] = []
        record = int8_cpu.write_cpu_form(
            tmp_path / "m.onnx", tmp_path / "cpu.onnx", _data(2), [], method="minmax", cache=tmp_path / "c",
            target=target, form="auto", max_extra=0, trt_min_cosine=0.99,
            agreement=lambda path, f, asked=asked: (asked.append(f), {"min_cosine": 0.995, "mean_cosine": 0.998})[1],
            rank=lambda path: [])
        assert asked == [fused] and record["judged"].startswith("fused" if fused else "as written")


def test_cpu_form_must_pass_the_gate_checks_where_the_tensorrt_form_does(tmp_path, monkeypatch):
    from batchforge.calibration import int8_cpu

    tried: list[int] = []

    def fake_quantize(fp32, out, data, excluded, method, cache, target):
        tried.append(len(excluded))
        out.write_bytes(b"x")
        return []

    monkeypatch.setattr(int8_cpu, "quantize_cpu", fake_quantize)
    monkeypatch.setattr(int8_cpu, "fusion_counts", lambda path: {"fused": {}})

    def agreement(path, fused):  # the cosine rule holds throughout; the gate's checks need 2 nodes
        return {"min_cosine": 0.995, "mean_cosine": 0.998, "passes_gate_checks": tried[-1] >= 2,
                "failed": {} if tried[-1] >= 2 else {"raw_max_rel[y]": "0.4 (limit <= 0.25)"}}

    kwargs = dict(method="minmax", cache=tmp_path / "c", target="no-vnni", form="auto", max_extra=4,
                  trt_min_cosine=0.99, agreement=agreement, rank=lambda path: ["a", "b", "c", "d"])
    record = int8_cpu.write_cpu_form(tmp_path / "m.onnx", tmp_path / "cpu.onnx", _data(2), [], trt_passes=True,
                                     **kwargs)
    assert record["adopted"] is True and record["excluded_for_cpu"] == ["a", "b"] and tried == [0, 1, 2]
    tried.clear()  # the TensorRT form fails them too: the cosine rule alone decides, as before
    record = int8_cpu.write_cpu_form(tmp_path / "m.onnx", tmp_path / "cpu.onnx", _data(2), [], trt_passes=False,
                                     **kwargs)
    assert record["adopted"] is True and record["excluded_for_cpu"] == [] and tried == [0]
    tried.clear()  # never passes: not adopted, and the reason names the failed check
    record = int8_cpu.write_cpu_form(tmp_path / "m.onnx", tmp_path / "cpu.onnx", _data(2), [], trt_passes=True,
                                     **{**kwargs, "max_extra": 1})
    assert record["adopted"] is False and "fails raw_max_rel[y]" in record["reason"]


def test_calibrate_places_tensorrt_fusion_q_dq_when_it_keeps_the_agreement(tmp_path, monkeypatch):
    from batchforge.calibration import trt_placement

    onnx.save(residual_net(), tmp_path / "m.onnx")
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", _data(), Int8Options(cpu_form="never"))
    placed = report["trt_fusion_qdq"]
    # r1 feeds conv_b too, so quantize_static already gives the Add its dequantized value: only
    # the pool input is new
    assert placed["kept"] is True and placed["residual_add"] == [] and placed["pooling"] == ["r2"]
    assert "TensorRT fusion" in report["scheme"]
    model = onnx.load(str(tmp_path / "q.onnx"))
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert add.input[1] == "r1_DequantizeLinear_Output"
    assert "r2_trtdq" in {o for n in model.graph.node for o in n.output}
    monkeypatch.setattr(trt_placement, "PLACEMENT_SLACK", -1.0)  # as if it cost agreement: not kept
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q2.onnx", _data(), Int8Options(cpu_form="never"))
    assert report["trt_fusion_qdq"]["kept"] is False and "without it" in report["trt_fusion_qdq"]["reason"]
    assert not any(o.endswith("_trtdq") for n in onnx.load(str(tmp_path / "q2.onnx")).graph.node for o in n.output)
