"""Issue #14 cases 5 and 6: every expected failure is one line and exit 2, and nothing out of
range or out of date is accepted without a word."""

import dataclasses
import json
import struct
import time

import numpy as np
import pytest
from hostile_files import BACKEND, good_images, tiny_artifacts
from safetensors.numpy import save_file

from batchforge.cli import main
from batchforge.engines.onnxruntime_builder import build_ort_engine
from batchforge.errors import UsageError
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.manifest import write_manifest


def _header(entries: dict) -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header


def _valid(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32)}, str(path))
    return path.read_bytes()


@pytest.mark.parametrize(("kind", "message"), [
    ("huge_header", "the header claims 870,000,000 bytes but the file holds 2"),
    ("truncated", "has data offsets [0, 24] outside the 10-byte data section"),
    ("bad_offsets", "has data offsets [0, 999] outside the 24-byte data section"),
    ("empty", "expected at least an 8-byte header length, got a 0-byte file"),
    ("garbage", "the header is not JSON"),
    ("not_object", "the header is not a JSON object, got list"),
])
def test_malformed_safetensors_are_refused_from_the_header(tmp_path, kind, message):
    from batchforge.export.weights import read_state_dict

    valid = _valid(tmp_path)
    body = {"w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}
    content = {
        "huge_header": struct.pack("<Q", 870_000_000) + b"{}",
        "truncated": valid[:-14],
        "bad_offsets": _header({"w": {**body["w"], "data_offsets": [0, 999]}}) + bytes(24),
        "empty": b"",
        "garbage": struct.pack("<Q", 4) + b"\xff\xfe\x00\x01",
        "not_object": _header([1, 2]),  # type: ignore[arg-type]
    }[kind]
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(UsageError, match="is not a valid safetensors file") as info:
        read_state_dict(path)
    assert message in info.value.one_line() and "safetensors.torch.save_file" in info.value.one_line()
    assert time.perf_counter() - start < 1.0  # nothing like the 0.87 GB read


def test_a_valid_safetensors_file_still_loads(tmp_path):
    from batchforge.export.weights import read_state_dict

    path = tmp_path / "ok.safetensors"
    path.write_bytes(_valid(tmp_path))
    assert read_state_dict(path)["w"].tolist() == list(range(6))


def test_export_with_a_huge_header_weights_file_exits_2_in_one_line(tmp_path, capsys):
    from user_models import spec_dict

    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(spec_dict()))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(struct.pack("<Q", 870_000_000) + b"{}")
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec),
                 "--weights", str(weights), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "the header claims 870,000,000 bytes" in err
    assert not (tmp_path / "out" / "user_tiny").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "m", "--input", "x", "--output", "o.jsonl", "--precision", "fp8"],
     "argument --precision: invalid choice: 'fp8' (choose from"),
    (["gallery", "m", "--input", "x", "--output", "g.npz", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["export", "m", "--max-batch", "0"], "argument --max-batch: expected an integer >= 1, got 0"),
    (["build", "m", "--max-batch", "0"], "argument --max-batch: expected an integer >= 1, got 0"),
    (["run", "m", "--input", "x", "--output", "o.jsonl", "--threads", "-1"],
     "argument --threads: expected an integer >= 0, got -1"),
    (["run", "m", "--input", "x", "--output", "o.jsonl", "--max-pixels", "0"],
     "argument --max-pixels: expected an integer >= 1, got 0"),
    (["run", "m", "--input", "x", "--output", "o.jsonl", "--batch-size", "two"],
     "argument --batch-size: expected an integer >= 1, got 'two'"),
    (["export", "m", "--trace-batch", "1"], "argument --trace-batch: expected an integer >= 2, got 1"),
])
def test_out_of_range_options_exit_2_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_output_naming_a_folder_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    code = main(["run", "no_such_model", "--input", str(tmp_path), "--output", str(folder),
                 "--output-dir", str(tmp_path / "artifacts"), *BACKEND])
    err = capsys.readouterr().err
    assert code == 2 and f"--output {folder} is a folder; expected a file path" in err
    assert "no artifacts" not in err  # checked before the model was even looked up
    assert list(folder.iterdir()) == []


def test_output_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["gallery", "m", "--input", str(tmp_path), "--output", str(tmp_path / "file" / "g.npz"),
                 "--output-dir", str(tmp_path)])
    assert code == 2 and "is a file, so no folder can be made there" in capsys.readouterr().err


def test_a_built_artifact_for_another_onnxruntime_says_why_it_is_not_used(tmp_path, capsys):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    manifest = build_ort_engine(artifacts, Precision.FP32, threads=1)
    write_manifest(artifacts.ort_manifest(Precision.FP32),
                   dataclasses.replace(manifest, onnxruntime_version="1.0.0"))
    good_images(tmp_path / "in", 1)
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "r.jsonl"),
                 "--output-dir", str(tmp_path / "artifacts"), *BACKEND])
    err = capsys.readouterr().err
    assert code == 0
    assert (f"engine.fp32.ort.onnx not used: it was built for onnxruntime 1.0.0 (here {manifest.onnxruntime_version}); "
            "running model.fp32.onnx instead") in err
    assert "batchforge build tiny --precision fp32 --backend onnxruntime" in err
