"""``batchforge build`` on a machine without TensorRT, and the GPU check script's degradation."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.cli import main

ROOT = Path(__file__).resolve().parents[2]
no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                 reason="checks the behaviour on machines without TensorRT")


@no_tensorrt
def test_build_tensorrt_without_tensorrt_exits_2_with_one_line(tmp_path, capsys):
    write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    code = main(["build", "tiny", "--backend", "tensorrt", "--output-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "TensorRT is not installed" in lines[0]
    assert "pip install 'batchforge[tensorrt]'" in lines[0] and "[tensorrt-cu12]" in lines[0]
    assert "pypi.nvidia.com" not in lines[0]  # the PyPI wheels need no extra index
    assert not (tmp_path / "tiny" / "engine.fp32.plan").exists()


@no_tensorrt
def test_build_auto_falls_back_to_onnxruntime_and_says_so(tmp_path, capsys):
    write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    code = main(["build", "tiny", "--output-dir", str(tmp_path), "--max-batch", "16"])
    captured = capsys.readouterr()
    assert code == 0
    assert "backend auto -> onnxruntime: TensorRT is not usable here" in captured.err
    assert "--max-batch shape TensorRT profiles" in captured.err
    manifest = json.loads((tmp_path / "tiny" / "engine.fp32.ort.json").read_text())
    assert manifest["backend"] == "onnxruntime"


def test_build_without_artifacts_names_the_export_command(tmp_path, capsys):
    assert main(["build", "nothing", "--backend", "onnxruntime", "--output-dir", str(tmp_path)]) == 2
    assert "create them with `batchforge export nothing`" in capsys.readouterr().err


def test_build_an_ensemble_builds_its_members(tmp_path, capsys):
    for name in ("a", "b"):
        write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec(name=name))
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps({
        "name": "ens", "family": "reid", "members": [{"model": "a", "weight": 0.5},
                                                     {"model": "b", "weight": 0.5}]}))
    assert main(["build", "ens", "--backend", "onnxruntime", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "a" / "engine.fp32.ort.onnx").is_file()
    assert (tmp_path / "b" / "engine.fp32.ort.onnx").is_file()


@no_tensorrt
def test_gpu_check_script_says_what_is_missing(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--work-dir", str(tmp_path / "gc"),
                           "--output-dir", str(tmp_path / "artifacts")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "backends:" in proc.stdout  # doctor ran first
    assert "cannot run the GPU check on this machine; missing:" in proc.stdout
    assert "TensorRT: the tensorrt package is not installed" in proc.stdout
    assert not (tmp_path / "artifacts").exists()
