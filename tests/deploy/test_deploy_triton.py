"""`batchforge deploy triton`: config.pbtxt parsed back with Triton's own schema and checked against
the ONNX graph it serves. Every zoo model's spec is deployed on a tiny graph with the same inputs,
outputs and profile (the zoo networks themselves add nothing to what the config declares)."""

import hashlib

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from helpers import FAKE_PLAN, fake_plan, tiny_embedder_onnx, tiny_spec, write_artifact
from onnx import helper
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import triton_to_np_dtype

from batchforge.cli import main
from batchforge.runtime.artifacts import Precision, file_record, write_json_atomic
from batchforge.runtime.spec import EnsembleMember, EnsembleSpec, ModelSpec, ProfileRange, TensorSpec


def spec_graph(spec: ModelSpec) -> onnx.ModelProto:
    """A graph with ``spec``'s inputs and outputs: even outputs copy an input, odd ones flatten it
    to a symbolic (dynamic, non-batch) length."""
    inputs = [helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                            list(t.shape)) for t in spec.inputs]
    nodes, outputs = [], []
    for i, name in enumerate(spec.outputs):
        source = spec.inputs[i % len(spec.inputs)]
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(source.dtype))
        if i % 2:
            nodes.append(helper.make_node("Flatten", [source.name], [name], axis=1))
            outputs.append(helper.make_tensor_value_info(name, elem, ["batch", "flat"]))
        else:
            nodes.append(helper.make_node("Identity", [source.name], [name]))
            outputs.append(helper.make_tensor_value_info(name, elem, list(source.shape)))
    model = helper.make_model(helper.make_graph(nodes, spec.name, inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def parsed_config(repo, name):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repo / name / "config.pbtxt").read_text(), config)
    return config


def graph_tensors(model: onnx.ModelProto):
    """(name, numpy dtype, dims without batch, -1 for symbolic) of the graph's inputs and outputs."""
    def described(values):
        return [(v.name, helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type),
                 [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim[1:]])
                for v in values]
    return described(model.graph.input), described(model.graph.output)


def config_tensors(tensors):
    return [(t.name, np.dtype(triton_to_np_dtype(model_config_pb2.DataType.Name(t.data_type)[len("TYPE_"):])),
             list(t.dims)) for t in tensors]


def assert_config_matches_graph(config, model_file, profile):
    graph_inputs, graph_outputs = graph_tensors(onnx.load(str(model_file), load_external_data=False))
    assert config_tensors(config.input) == graph_inputs
    assert config_tensors(config.output) == graph_outputs
    assert config.max_batch_size == profile.max
    assert list(config.dynamic_batching.preferred_batch_size) == sorted({profile.opt, profile.max})


def test_every_zoo_model_config_parses_with_tritons_schema_and_matches_its_graph(tmp_path, capsys):
    from batchforge.export.registry import ZOO, load_zoo

    load_zoo()
    repo, root = tmp_path / "repo", tmp_path / "artifacts"
    for name, entry in ZOO.items():
        artifacts = write_artifact(root, spec_graph(entry.spec), entry.spec)
        assert main(["deploy", "triton", name, "--out", str(repo), "--output-dir", str(root)]) == 0, name
        config = parsed_config(repo, name)
        assert (config.name, config.platform) == (name, "onnxruntime_onnx")
        served = repo / name / "1" / "model.onnx"
        assert served.read_bytes() == artifacts.onnx(Precision.FP32).read_bytes()
        assert_config_matches_graph(config, served, entry.spec.profile)
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        group = config.instance_group[0]
        assert (group.count, group.kind) == (1, model_config_pb2.ModelInstanceGroup.KIND_AUTO)
        assert any(list(t.dims) == [-1] for t in config.output) or len(entry.spec.outputs) == 1
    assert sorted(p.name for p in repo.iterdir()) == sorted(ZOO)  # no staging folder left behind
    out = capsys.readouterr().out
    assert "ptycho: onnxruntime_onnx (fp32, max_batch_size 64, preferred batch sizes [32, 64])" in out


def test_data_types_other_than_float_are_mapped_from_the_graph(tmp_path):
    spec = ModelSpec(name="typed", family="tensors", inputs=(TensorSpec("counts", ("batch", 4), "uint8"),
                                                             TensorSpec("ids", ("batch", 2), "int64")),
                     outputs=("counts_out", "ids_flat"), profile=ProfileRange(2, 2, 6))
    write_artifact(tmp_path, spec_graph(spec), spec)
    assert main(["deploy", "triton", "typed", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path),
                 "--max-queue-delay-us", "2500", "--instances", "3", "--instance-kind", "cpu"]) == 0
    config = parsed_config(tmp_path / "repo", "typed")
    assert [model_config_pb2.DataType.Name(t.data_type) for t in config.input] == ["TYPE_UINT8", "TYPE_INT64"]
    assert [model_config_pb2.DataType.Name(t.data_type) for t in config.output] == ["TYPE_UINT8", "TYPE_INT64"]
    assert_config_matches_graph(config, tmp_path / "repo" / "typed" / "1" / "model.onnx", spec.profile)
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 6]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    group = config.instance_group[0]
    assert (group.count, group.kind) == (3, model_config_pb2.ModelInstanceGroup.KIND_CPU)


def test_external_data_is_served_as_a_model_onnx_folder(tmp_path):
    spec = tiny_spec("bigw")
    model = tiny_embedder_onnx()
    artifacts = write_artifact(tmp_path, model, spec)
    onnx.save(model, str(artifacts.onnx(Precision.FP32)), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.fp32.onnx.data", size_threshold=0)
    record = {"schema_version": 1, "model": "bigw", "spec": spec.to_dict(),
              "onnx": file_record(artifacts.onnx(Precision.FP32), artifacts.dir), "factory": "tests:none"}
    write_json_atomic(artifacts.export_record_path, record)
    assert main(["deploy", "triton", "bigw", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path)]) == 0
    folder = tmp_path / "repo" / "bigw" / "1" / "model.onnx"
    assert sorted(p.name for p in folder.iterdir()) == ["model.fp32.onnx.data", "model.onnx"]
    loaded = onnx.load(str(folder / "model.onnx"))  # the external data resolves inside the folder
    assert {t.name for t in loaded.graph.initializer} == {"W", "B", "axes"}
    assert_config_matches_graph(parsed_config(tmp_path / "repo", "bigw"), folder / "model.onnx", spec.profile)


def test_a_built_tensorrt_plan_is_served_as_tensorrt_plan_with_its_own_profile(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec("planned"))
    fake_plan(artifacts)
    assert main(["deploy", "triton", "planned", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path)]) == 0
    config = parsed_config(tmp_path / "repo", "planned")
    assert config.platform == "tensorrt_plan"
    assert (tmp_path / "repo" / "planned" / "1" / "model.plan").read_bytes() == FAKE_PLAN
    assert_config_matches_graph(config, artifacts.onnx(Precision.FP32), ProfileRange(2, 4, 16))
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    # the same model on ONNX Runtime when asked, with the spec's profile
    assert main(["deploy", "triton", "planned", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path),
                 "--platform", "onnxruntime_onnx"]) == 0
    config = parsed_config(tmp_path / "repo", "planned")
    assert (config.platform, config.max_batch_size) == ("onnxruntime_onnx", 8)
    assert sorted(p.name for p in (tmp_path / "repo" / "planned" / "1").iterdir()) == ["model.onnx"]


def test_a_tampered_plan_is_refused_and_nothing_is_written(tmp_path, capsys):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec("planned"))
    fake_plan(artifacts)
    data = bytearray(FAKE_PLAN)
    data[100] ^= 1
    artifacts.plan(Precision.FP32).write_bytes(bytes(data))
    assert main(["deploy", "triton", "planned", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "engine.fp32.plan does not match its manifest" in err, err
    assert not (tmp_path / "repo" / "planned").exists()


@pytest.mark.parametrize("argv, message", [
    (["--instance-kind", "cpu"], "a TensorRT plan runs on a GPU only; --instance-kind cpu was given"),
    (["--instances", "0"], "--instances must be >= 1, got 0"),
    (["--platform", "onnxruntime_onnx", "--precision", "int8"], "int8 ONNX for 'planned' not found"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec("planned"))
    fake_plan(artifacts)
    assert main(["deploy", "triton", "planned", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path),
                 *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "repo" / "planned").exists()


def test_a_graph_without_a_dynamic_batch_axis_is_refused_naming_the_tensor(tmp_path, capsys):
    spec = tiny_spec("fixed")
    model = tiny_embedder_onnx()
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 4
    write_artifact(tmp_path, model, spec)
    assert main(["deploy", "triton", "fixed", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path)]) == 2
    assert "output 'embedding' needs a dynamic batch axis first for Triton's batching, got 4" in capsys.readouterr().err


def test_an_ensemble_deploys_every_member(tmp_path, capsys):
    for name, seed in (("left", 0), ("right", 1)):
        write_artifact(tmp_path, tiny_embedder_onnx(seed=seed), tiny_spec(name))
    ensemble = EnsembleSpec("pair", "reid", (EnsembleMember("left", 0.5), EnsembleMember("right", 0.5)))
    (tmp_path / "pair").mkdir()
    write_json_atomic(tmp_path / "pair" / "ensemble.json", ensemble.to_dict())
    assert main(["deploy", "triton", "pair", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["left", "right"]
    for name in ("left", "right"):
        served = tmp_path / "repo" / name / "1" / "model.onnx"
        assert hashlib.sha256(served.read_bytes()).hexdigest() == hashlib.sha256(
            (tmp_path / name / "model.fp32.onnx").read_bytes()).hexdigest()
    assert "pair is an ensemble: Triton serves its members" in capsys.readouterr().out


def test_without_tritonclient_the_command_names_the_extra(tmp_path, capsys, monkeypatch):
    write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec("plain"))
    monkeypatch.setitem(__import__("sys").modules, "tritonclient.grpc", None)
    assert main(["deploy", "triton", "plain", "--out", str(tmp_path / "repo"), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'batchforge[triton]'" in err, err
    assert not (tmp_path / "repo").exists()
