"""Issue #29 case 11: a sparse multi-GB .onnx was walked by the pure-Python protobuf reader at about
4 min per GiB before refusal. Now a file over protobuf's 2 GiB limit is refused from its size, and
runs of zero bytes (field number 0, which protobuf forbids) at the first one; the sparse files are
made with truncate, never written."""

import json
import os

import onnx
import pytest
from hostile_files import BACKEND, good_images, rerecord, tiny_artifacts

from batchforge import onnx_external
from batchforge.cli import main
from batchforge.errors import ArtifactError
from batchforge.runtime import artifacts as artifacts_module
from batchforge.runtime.artifacts import Precision

GiB = 2 ** 30


def _sparse(path, size, head=b""):
    path.write_bytes(head)
    os.truncate(path, size)
    return path


def _inspect(path, capsys):
    code = main(["inspect", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_refuses_a_multi_gb_file_from_its_size(tmp_path, capsys):
    path = _sparse(tmp_path / "big.onnx", 3 * GiB, onnx.ModelProto(ir_version=9).SerializeToString())
    code, out, err = _inspect(path, capsys)
    assert code == 2 and out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "is 3,221,225,472 bytes; an ONNX file must be under 2 GiB" in err
    assert "save_as_external_data=True" in err  # what to do


def test_inspect_refuses_a_sparse_file_under_the_limit_at_its_first_zero_run(tmp_path, capsys):
    head = onnx.ModelProto(ir_version=9, producer_name="x").SerializeToString()
    path = _sparse(tmp_path / "holes.onnx", GiB, head)
    code, out, err = _inspect(path, capsys)
    assert code == 2 and out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"is not an ONNX model (its protobuf does not parse: field number 0 at byte {len(head)})" in err


def test_run_refuses_a_multi_gb_model_before_hashing_it(tmp_path, capsys, monkeypatch):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    rerecord(artifacts)  # the record matches the real model; the file then grows past 2 GiB
    os.truncate(artifacts.onnx(Precision.FP32), 3 * GiB)
    hashed = []
    monkeypatch.setattr(artifacts_module, "sha256_file",
                        lambda p, *a: hashed.append(str(p)) or "0" * 64)
    good_images(tmp_path / "in", 1)
    out = tmp_path / "r.jsonl"
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(out),
                 "--output-dir", str(artifacts.root), *BACKEND])
    err = capsys.readouterr().err
    assert code == 2 and "must be under 2 GiB" in err and "Traceback" not in err and not out.exists()
    assert str(artifacts.onnx(Precision.FP32)) not in hashed


def test_the_inspect_folder_report_says_refused(tmp_path, capsys):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    os.truncate(artifacts.onnx(Precision.FP32), 3 * GiB)
    assert main(["inspect", str(artifacts.dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["artifacts"]["fp32"].startswith("REFUSED: ") and "must be under 2 GiB" in info["artifacts"]["fp32"]
    assert info["fp32_onnx"].startswith("unreadable: ") and "must be under 2 GiB" in info["fp32_onnx"]


def test_a_crafted_file_of_many_small_fields_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_external, "MAX_FIELDS", 1000)
    path = tmp_path / "fields.onnx"
    path.write_bytes(b"\x08\x01" * 5000)  # ir_version = 1, five thousand times
    with pytest.raises(ArtifactError, match="more than 1,000 fields outside tensor data"):
        onnx_external.external_refs(path)


def test_a_real_model_still_inspects(tmp_path, capsys):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    code, out, err = _inspect(artifacts.onnx(Precision.FP32), capsys)
    assert code == 0 and "inputs:" in out, err
