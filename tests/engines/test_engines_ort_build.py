"""``batchforge build --backend onnxruntime``: optimised model + manifest, preferred by open_runner."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
from helpers import tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.cli import main
from batchforge.engines.onnxruntime_builder import build_ort_engine
from batchforge.errors import IntegrityError
from batchforge.runtime.artifacts import Precision, file_record, sha256_file, write_json_atomic
from batchforge.runtime.loading import open_runner
from batchforge.runtime.manifest import read_ort_manifest, write_manifest

FP32 = Precision.FP32


@pytest.fixture
def built(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    manifest = build_ort_engine(artifacts, FP32, threads=1)
    return artifacts, manifest


def _outputs(runner, x):
    with runner:
        return runner.infer({"images": x})["embedding"]


def test_build_writes_the_optimised_model_and_its_manifest(built):
    artifacts, manifest = built
    engine = artifacts.ort_engine(FP32)
    assert engine.is_file() and onnx.load(str(engine)).graph.node
    recorded = json.loads(artifacts.ort_manifest(FP32).read_text())
    assert recorded["engine_sha256"] == sha256_file(engine)
    assert recorded["source_sha256"] == sha256_file(artifacts.onnx(FP32))
    assert recorded["providers"] == ["CPUExecutionProvider"]
    assert recorded["graph_optimization"] == "extended"
    assert recorded["onnxruntime_version"] == __import__("onnxruntime").__version__
    assert read_ort_manifest(artifacts.ort_manifest(FP32)) == manifest
    assert not list(artifacts.dir.glob(".*partial"))


def test_open_runner_prefers_the_built_artifact_and_matches_the_plain_onnx(built, tmp_path):
    artifacts, _ = built
    runner = open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu", threads=1)
    assert runner.model == str(artifacts.ort_engine(FP32)) and runner.name.endswith(":built")
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    plain_dir = tmp_path / "plain"
    plain = open_runner(write_artifact(plain_dir, tiny_embedder_onnx(), tiny_spec()), precision=FP32,
                        backend="onnxruntime-cpu", threads=1)
    assert plain.model.endswith("model.fp32.onnx")
    np.testing.assert_allclose(_outputs(runner, x), _outputs(plain, x), rtol=1e-5, atol=1e-6)


def test_tampered_artifact_is_refused(built):
    artifacts, _ = built
    engine = artifacts.ort_engine(FP32)
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0x01
    engine.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"engine\.fp32\.ort\.onnx does not match its manifest") as info:
        open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu")
    assert "batchforge build tiny --precision fp32 --backend onnxruntime" in info.value.one_line()


def test_artifact_built_from_an_older_export_is_refused(built):
    artifacts, _ = built
    onnx.save(tiny_embedder_onnx(seed=7), str(artifacts.onnx(FP32)))
    record = json.loads(artifacts.export_record_path.read_text())
    record["onnx"] = file_record(artifacts.onnx(FP32), artifacts.dir)  # a consistent re-export
    write_json_atomic(artifacts.export_record_path, record)
    with pytest.raises(IntegrityError, match="the artifact is stale"):
        open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu")


@pytest.mark.parametrize("field", ["onnxruntime_version", "providers", "graph_optimization"])
def test_artifact_for_another_runtime_falls_back_to_the_plain_onnx(built, field):
    artifacts, manifest = built
    other = {"onnxruntime_version": "1.0.0", "providers": ("CUDAExecutionProvider", "CPUExecutionProvider"),
             "graph_optimization": "basic"}[field]
    write_manifest(artifacts.ort_manifest(FP32), dataclasses.replace(manifest, **{field: other}))
    runner = open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu")
    assert runner.model == str(artifacts.onnx(FP32))


def test_cli_build_onnxruntime(tmp_path, capsys):
    write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    code = main(["build", "tiny", "--backend", "onnxruntime", "--output-dir", str(tmp_path)])
    assert code == 0
    assert "ONNX Runtime" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "engine.fp32.ort.json").is_file()


def test_cli_build_for_a_missing_precision_names_the_command(tmp_path, capsys):
    write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    code = main(["build", "tiny", "--backend", "onnxruntime", "--precision", "fp16",
                 "--output-dir", str(tmp_path)])
    assert code == 2
    assert "batchforge convert tiny --precision fp16" in capsys.readouterr().err
