import json

import onnx
import pytest
from helpers import export_factory
from user_models import spec_dict

from batchforge.cli import main
from batchforge.errors import ExportError, UsageError
from batchforge.export.checks import check_symbolic_batch, lint_batch_specialisation
from batchforge.export.exporter import export_model
from batchforge.export.registry import ZooEntry, get_model, resolve_factory
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.spec import ModelSpec


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_dict()))
    return path


def test_user_model_exports_with_dynamic_batch_and_record(tmp_path, spec_file, capsys):
    out = tmp_path / "artifacts"
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec_file),
                 "--output-dir", str(out)])
    assert code == 0
    artifacts = ModelArtifacts.at(out, "user_tiny")
    record = artifacts.export_record()
    assert record["exporter"]["name"] == "torch.onnx.export(dynamo=True)"
    assert record["exporter"]["fallback_reason"] is None and record["exporter"]["opset"] == 18
    assert [r["batch"] for r in record["checks"]["parity"]] == [1, 3, 4, 8]
    assert max(r["max_rel"] for r in record["checks"]["parity"]) < 1e-5
    assert record["io"]["inputs"][0]["shape"][0] == "batch"
    assert record["versions"]["torch"] == "2.14.1"
    assert artifacts.verified_onnx(Precision.FP32).is_file()
    assert record["weights"]["sha256"] and artifacts.reference_weights.is_file()
    assert "exported user_tiny" in capsys.readouterr().out
    check_symbolic_batch(onnx.load(str(artifacts.onnx(Precision.FP32))))
    assert sorted(p.name for p in artifacts.dir.iterdir()) == [
        "export.json", "export.log", "model.fp32.onnx", "reference.safetensors"]


def test_batch_baked_into_a_reshape_fails_the_export_naming_the_node(tmp_path):
    entry = ZooEntry(ModelSpec.from_dict(spec_dict("baked")), "user_models:batch_baked")
    with pytest.raises(ExportError) as info:
        export_model(entry, tmp_path)
    text = info.value.one_line()
    assert ("Reshape node" in text and "trace batch 2" in text) or "batch dim is not symbolic" in text
    # a failed export leaves no model files and no staging folder, only its log (complete)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["baked", "baked/export.log"]


def test_lint_flags_constant_batch_in_a_handmade_graph():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2, 2])],
        initializer=[numpy_helper.from_array(np.array([3, 2, 2], np.int64), "shape")])
    model = helper.make_model(graph)
    findings = lint_batch_specialisation(model, trace_batch=3)
    assert [f.node for f in findings] == ["bad_reshape"]
    with pytest.raises(ExportError, match="output 'y' has shape"):
        check_symbolic_batch(model)


def test_weights_are_loaded_strictly_with_weights_only(tmp_path, spec_file):
    import torch
    from user_models import tiny_embedder

    model = tiny_embedder()
    with torch.no_grad():
        model.head.bias.add_(1.0)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    out = tmp_path / "a"
    assert main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec_file),
                 "--weights", str(tmp_path / "w.pt"), "--output-dir", str(out)]) == 0
    from batchforge.export.weights import read_state_dict

    saved = read_state_dict(out / "user_tiny" / "reference.safetensors")
    assert torch.equal(saved["head.bias"], model.state_dict()["head.bias"])
    torch.save({"head.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    assert main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec_file),
                 "--weights", str(tmp_path / "bad.pt"), "--output-dir", str(out)]) == 2


def test_pickled_objects_are_refused(tmp_path, spec_file, capsys):
    import torch

    torch.save({"state_dict": {"x": object()}}, tmp_path / "evil.pt")  # needs pickle to load
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec_file),
                 "--weights", str(tmp_path / "evil.pt"), "--output-dir", str(tmp_path / "a")])
    assert code == 2
    assert "weights_only=True" in capsys.readouterr().err


def test_registry_errors_list_known_names():
    with pytest.raises(UsageError, match=r"known: .*reid_resnet50"):
        get_model("resnet5O")
    with pytest.raises(UsageError, match="module:function"):
        resolve_factory("no_colon_here")
    with pytest.raises(UsageError, match="cannot import"):
        resolve_factory("no_such_module_xyz:f")


def export_user(tmp_path, factory: str, name: str, *extra: str) -> int:
    return export_factory(tmp_path, factory, spec_dict(name), *extra)


def test_view_with_the_batch_as_a_number_is_refused_naming_node_and_op(tmp_path, capsys):
    assert export_user(tmp_path, "view_baked", "viewed") == 2
    err = capsys.readouterr().err
    assert "batch size baked into the graph: Reshape node" in err, err
    assert "constant shape [2, -1] starts with the trace batch 2" in err, err
    assert [p.name for p in (tmp_path / "artifacts" / "viewed").iterdir()] == ["export.log"]


def test_view_with_the_batch_from_the_shape_exports(tmp_path, capsys):
    assert export_user(tmp_path, "view_shape_derived", "derived") == 0
    record = ModelArtifacts.at(tmp_path / "artifacts", "derived").export_record()
    assert record["warnings"] == [] and record["checks"]["batch_lint"] == "passed"
    assert "warning:" not in capsys.readouterr().err


def test_a_model_constant_equal_to_the_trace_batch_is_a_named_warning_when_the_numbers_agree(tmp_path, capsys):
    assert export_user(tmp_path, "two_groups", "groups") == 0
    record = ModelArtifacts.at(tmp_path / "artifacts", "groups").export_record()
    assert [r["batch"] for r in record["checks"]["parity"]] == [1, 3, 4, 8]
    assert record["checks"]["batch_lint"] == "warned"
    (warning,) = record["warnings"]
    assert "Reshape node" in warning and "[2, -1]" in warning and "batch 1, 3, 4, 8" in warning
    assert f"warning: groups: {warning}" in capsys.readouterr().err
    # traced at another size the constant is not mistaken for the batch at all
    assert export_user(tmp_path, "two_groups", "groups3", "--trace-batch", "3") == 0
    assert ModelArtifacts.at(tmp_path / "artifacts", "groups3").export_record()["warnings"] == []


def test_unknown_family_exits_2_listing_the_known_ones(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**spec_dict("odd"), "family": "classifier"}))
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec),
                 "--output-dir", str(tmp_path / "artifacts")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown family 'classifier'" in err[0], err
    assert "known families: anomaly, detector, facepose, keypoints, mtcnn, ptycho, reid" in err[0]
    assert not (tmp_path / "artifacts").exists()
