"""Issue #14 case 4: external data locations are checked by batchforge, against the model
folder, before ONNX Runtime, onnx or TensorRT read them; every referenced file is hashed."""

import json
import os

import numpy as np
import onnx
import pytest
from helpers import tiny_embedder_onnx
from hostile_files import BACKEND, good_images, point_external_data_at, rerecord, tiny_artifacts
from onnx import external_data_helper, helper, numpy_helper

from batchforge.cli import main
from batchforge.engines.tensorrt_builder import parse_onnx
from batchforge.errors import ArtifactError, IntegrityError
from batchforge.onnx_external import checked_external_files, external_locations
from batchforge.runtime.artifacts import Precision, file_record, write_json_atomic
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner

FP32 = Precision.FP32


def _run(tmp_path, capsys):
    good_images(tmp_path / "in", 2)
    out = tmp_path / "r.jsonl"
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(out),
                 "--output-dir", str(tmp_path / "artifacts"), *BACKEND])
    return code, capsys.readouterr().err, out


@pytest.fixture
def outside(tmp_path):
    """A file outside the model folder that a hostile model wants read."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(64, np.float32).tobytes())
    return secret


@pytest.mark.parametrize(("location", "rule"), [
    ("../../secret.bin", "climbs outside the model folder ('..')"),
    ("ABSOLUTE", "is an absolute path (outside the model folder)"),
    ("link.bin", "passes through the link 'link.bin'"),
])
def test_hostile_locations_are_refused_before_onnxruntime(tmp_path, capsys, outside, location, rule):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    if location == "link.bin":
        (artifacts.dir / "link.bin").symlink_to(outside)
    point_external_data_at(artifacts, str(outside) if location == "ABSOLUTE" else location)
    code, err, out = _run(tmp_path, capsys)
    assert code == 2 and "Traceback" not in err and not out.exists()
    assert "tensor 'W' keeps its data at" in err and rule in err and "refusing to load it" in err
    # the runner itself refuses too, whatever path it is given (parity and bench use it)
    with pytest.raises(ArtifactError, match="refusing to load it"), OnnxRuntimeRunner(artifacts.onnx(FP32)):
        pass
    # and the TensorRT builder, before its parser touches the file
    with pytest.raises(ArtifactError, match="refusing to load it"):
        parse_onnx(None, None, None, artifacts.onnx(FP32))


def test_an_external_file_of_any_name_is_hashed_and_a_flipped_byte_refused(tmp_path, capsys):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, "weights.bin")
    record = file_record(artifacts.onnx(FP32), artifacts.dir)
    assert list(record["external_data"]) == ["weights.bin"]
    rerecord(artifacts, record["external_data"])
    code, err, out = _run(tmp_path, capsys)
    assert code == 0, err
    out.unlink()
    data = bytearray((artifacts.dir / "weights.bin").read_bytes())
    data[5] ^= 0xFF
    (artifacts.dir / "weights.bin").write_bytes(bytes(data))
    code, err, out = _run(tmp_path, capsys)
    assert code == 2 and not out.exists()
    assert "external data 'weights.bin' of model.fp32.onnx is missing or does not match its recorded sha256" in err


def test_an_unrecorded_external_file_is_refused(tmp_path, capsys):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, "weights.bin")  # record rewritten without it
    code, err, _ = _run(tmp_path, capsys)
    assert code == 2 and "references external data ['weights.bin'] that its record does not hash" in err


def test_the_wire_reader_finds_what_onnx_finds(tmp_path):
    """Initializers, a Constant attribute and an If subgraph's initializer, all external."""
    inner = helper.make_graph(
        [helper.make_node("Identity", ["inner_w"], ["y_then"])], "then", [],
        [helper.make_tensor_value_info("y_then", onnx.TensorProto.FLOAT, [64])],
        initializer=[numpy_helper.from_array(np.full(64, 2, np.float32), "inner_w")])
    other = helper.make_graph([helper.make_node("Identity", ["c"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", onnx.TensorProto.FLOAT, [64])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(64, np.float32), "cv")),
         helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=other)],
        "g", [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64])],
        initializer=[numpy_helper.from_array(np.zeros(64, np.float32), "outer_w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0, convert_attribute=True)
    loaded = onnx.load(str(path), load_external_data=False)
    expected = sorted((t.name, next(e.value for e in t.external_data if e.key == "location"))
                      for t in external_data_helper._get_all_tensors(loaded)
                      if external_data_helper.uses_external_data(t))
    assert len(expected) == 3
    assert sorted(external_locations(path)) == expected
    assert checked_external_files(path) == sorted(loc for _, loc in expected)


def test_inspect_resolves_external_data_against_the_model_folder(tmp_path, capsys, monkeypatch):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, "weights.bin")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["inspect", str(artifacts.onnx(FP32)), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["external_data"] == ["weights.bin"] and "external_data_error" not in info


def test_inspect_reports_a_hostile_location_without_reading_it(tmp_path, capsys, outside):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, "../../secret.bin")
    assert main(["inspect", str(artifacts.onnx(FP32)), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "climbs outside the model folder" in info["external_data_error"]


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty (0 bytes), not an ONNX model"),
    (b"\xff" * 64, "is not an ONNX model (its protobuf does not parse"),
    (onnx.ModelProto(ir_version=9).SerializeToString(), "ONNX Runtime could not load"),  # no graph
])
def test_bytes_that_are_not_a_model_exit_2_in_one_line(tmp_path, capsys, content, message):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    artifacts.onnx(FP32).write_bytes(content)
    rerecord(artifacts)
    code, err, out = _run(tmp_path, capsys)
    assert code == 2 and message in err and "Traceback" not in err and not out.exists()
    assert len(err.strip().splitlines()) == 1


def test_an_onnxruntime_session_error_is_one_line_and_exit_2(tmp_path, capsys):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    model = tiny_embedder_onnx()
    model.graph.node[1].op_type = "NoSuchOp"
    onnx.save(model, str(artifacts.onnx(FP32)))
    rerecord(artifacts)
    code, err, _ = _run(tmp_path, capsys)
    assert code == 2 and "ONNX Runtime could not load" in err and "NoSuchOp" in err
    assert "Traceback" not in err


def test_a_recorded_name_that_leaves_the_folder_is_refused_before_hashing(tmp_path, outside):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    os.symlink(outside, artifacts.dir / "w.bin")
    record = json.loads(artifacts.export_record_path.read_text())
    record["onnx"]["external_data"] = {"w.bin": "0" * 64}
    write_json_atomic(artifacts.export_record_path, record)
    with pytest.raises(IntegrityError, match=r"passes through the link 'w\.bin'"):
        artifacts.verified_onnx(FP32)


def test_parity_on_a_hostile_location_could_not_run_exit_2_not_a_drift_failure(user_tiny_artifacts, tmp_path,
                                                                              capsys, outside):
    import shutil

    from batchforge.runtime.artifacts import ModelArtifacts

    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    artifacts = ModelArtifacts.at(root, name)
    path = artifacts.onnx(FP32)
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=1024)
    hostile = onnx.load(str(path), load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(hostile):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../secret.bin"
    onnx.save(hostile, str(path))
    rerecord(artifacts)
    code = main(["parity", name, "--eval-size", "2", "--output-dir", str(root),
                 "--factory", "user_models:tiny_embedder"])
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert "climbs outside the model folder ('..')" in captured.out + captured.err
    assert "Traceback" not in captured.err


def test_model_bytes_with_external_data_are_refused(tmp_path, outside):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, str(outside))
    with pytest.raises(ArtifactError, match="has no folder to resolve it against"), \
            OnnxRuntimeRunner(artifacts.onnx(FP32).read_bytes()):
        pass
    with OnnxRuntimeRunner(tiny_embedder_onnx().SerializeToString()) as runner:  # inline: fine
        assert runner.output_names == ("embedding",)
