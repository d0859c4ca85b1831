"""Issue #29 case 12 (records): a record or manifest field of the wrong JSON type, or a record
nested past the parser's depth, is one line naming the field and what was expected, exit 2, with
nothing written -- never a TypeError traceback from the code that trusted it."""

import json

import pytest
from helpers import fake_plan
from hostile_files import BACKEND, good_images, tiny_artifacts

from batchforge.cli import main
from batchforge.engines.onnxruntime_builder import build_ort_engine
from batchforge.engines.records import calibration_sha256
from batchforge.errors import BuildError, ConfigError
from batchforge.runtime.artifacts import Precision, write_json_atomic
from batchforge.runtime.manifest import read_manifest


def _run(tmp_path, capsys) -> tuple[int, str]:
    good_images(tmp_path / "in", 2)
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "r.jsonl"),
                 "--output-dir", str(tmp_path / "artifacts"), *BACKEND])
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "r.jsonl").exists()
    return code, err


def _edit(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    write_json_atomic(path, data)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("source_sha256", 5, "'source_sha256': expected a string, got int 5"),
    ("engine_sha256", None, "'engine_sha256': expected a string, got NoneType None"),
    ("providers", "CPUExecutionProvider", "'providers': expected a list of strings, got str 'CPUExecutionProvider'"),
    ("provider_options", [1], "'provider_options': expected a list of objects, got list [1]"),
    ("calibration_sha256", {"a": 1}, "'calibration_sha256': expected a string or null, got dict {'a': 1}"),
    ("schema_version", True, "'schema_version': expected an integer, got bool True"),
])
def test_a_wrong_typed_manifest_field_is_named(tmp_path, capsys, field, value, message):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    build_ort_engine(artifacts, Precision.FP32, threads=1)
    _edit(artifacts.ort_manifest(Precision.FP32), lambda data: data.update({field: value}))
    code, err = _run(tmp_path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"invalid ONNX Runtime engine manifest {artifacts.ort_manifest(Precision.FP32)}: {message}" in err


def test_a_wrong_typed_tensorrt_manifest_names_every_field(tmp_path):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    fake_plan(artifacts)
    path = artifacts.plan_manifest(Precision.FP32)
    data = json.loads(path.read_text())
    wrong = {**data, "plan_bytes": "4096", "version_compatible": 1}
    write_json_atomic(path, wrong)
    with pytest.raises(ConfigError) as info:
        read_manifest(path)
    line = info.value.one_line()
    assert "'version_compatible': expected true or false, got int 1" in line
    assert "'plan_bytes': expected an integer, got str '4096'" in line
    data["inputs"][0]["min"] = ["one", 3, 8, 8]
    write_json_atomic(path, data)
    with pytest.raises(ConfigError, match=r"'min': expected a list of integers, got list \['one', 3, 8, 8\]"):
        read_manifest(path)


@pytest.mark.parametrize(("onnx_entry", "message"), [
    ({"file": "model.fp32.onnx", "sha256": 5}, "has no sha256 for it (expected an object with a sha256 string, "
                                               "got int 5)"),
    ("model.fp32.onnx", "has no sha256 for it (expected an object with a sha256 string, got str 'model.fp32.onnx')"),
    (None, "has external_data ['w.bin']; expected an object of file name -> sha256"),
])
def test_a_wrong_typed_export_record_field_is_named(tmp_path, capsys, onnx_entry, message):
    artifacts = tiny_artifacts(tmp_path / "artifacts")

    def edit(record):
        if onnx_entry is None:
            record["onnx"]["external_data"] = ["w.bin"]
        else:
            record["onnx"] = onnx_entry

    _edit(artifacts.export_record_path, edit)
    code, err = _run(tmp_path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the record beside {artifacts.onnx(Precision.FP32)} {message}" in err


def test_a_record_nested_past_the_parser_is_one_line(tmp_path, capsys):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    record = artifacts.export_record_path.read_text().rstrip()
    artifacts.export_record_path.write_text(record[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, err = _run(tmp_path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"export record for 'tiny' {artifacts.export_record_path} is not valid JSON: maximum recursion depth" in err


@pytest.mark.parametrize("data", [["sha"], "sha", {"sha256": 5}])
def test_a_wrong_typed_calibration_record_is_a_build_error(tmp_path, data):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    write_json_atomic(artifacts.sidecar(Precision.INT8), {"data": data})
    with pytest.raises(BuildError, match="records no calibration data sha256"):
        calibration_sha256(artifacts, Precision.INT8)


@pytest.mark.parametrize("weights", [["x"], {"sha256": 5}])
def test_a_wrong_typed_weights_entry_stops_parity_in_one_line(user_tiny_artifacts, tmp_path, capsys, weights):
    import shutil

    from batchforge.runtime.artifacts import ModelArtifacts

    src_root, name = user_tiny_artifacts
    shutil.copytree(src_root, tmp_path / "artifacts")
    artifacts = ModelArtifacts.at(tmp_path / "artifacts", name)
    _edit(artifacts.export_record_path, lambda record: record.update(weights=weights))
    report = tmp_path / "r.json"
    code = main(["parity", name, "--eval-size", "2", "--output-dir", str(tmp_path / "artifacts"), "--report",
                 str(report), "--factory", "user_models:tiny_embedder", *BACKEND])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    (run,) = json.loads(report.read_text())["reports"]
    given = "list ['x']" if isinstance(weights, list) else "int 5"
    assert run["error"].startswith(f"{artifacts.export_record_path}: weights.sha256 must be a string, got {given}")
