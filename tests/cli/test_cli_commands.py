import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from batchforge.cli import build_parser, main
from batchforge.runtime.images import write_image


def test_help_teaches_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("models", "export", "convert", "calibrate", "build", "parity", "run", "bench",
                    "inspect", "doctor", "gallery", "samples", "validate-config", "deploy", "bundle"):
        assert command in out
    assert "exit codes" in out


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "batchforge", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("batchforge ")


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().out


def test_models_lists_the_zoo_with_tolerances(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "reid_resnet50" in out and "reid_ensemble" in out and "1/8/32" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    resnet = next(r for r in rows if r["name"] == "reid_resnet50")
    assert resnet["tolerances"]["int8"]["embedding_cosine"] == 0.98


def test_unknown_model_is_one_line_exit_2(capsys):
    assert main(["export", "resnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'resnet'" in err[0] and "batchforge models" in err[0]


def test_unknown_backend_and_precision(capsys, tmp_path):
    assert main(["parity", "reid_resnet50", "--backend", "cuda", "--output-dir", str(tmp_path)]) == 2
    assert main(["parity", "reid_resnet50", "--precision", "fp8", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown precision 'fp8'" in err


def test_run_writes_jsonl_with_error_records(user_tiny_artifacts, tmp_path, capsys):
    root, name = user_tiny_artifacts
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        write_image(folder / f"{i}.png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    gray = (rng.integers(0, 65535, (30, 30), dtype=np.uint16))
    import cv2

    cv2.imwrite(str(folder / "6.png"), gray)  # 16-bit grayscale: converted by the documented rule
    out = tmp_path / "r.jsonl"
    code = main(["run", name, "--input", str(folder), "--output", str(out), "--output-dir", str(root),
                 "--backend", "onnxruntime", "--batch-size", "2"])
    assert code == 1  # one input failed; all others are in the file
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ok"] for r in records] == [True, True, False, True, True, True]
    assert records[2]["error"]["type"] == "InputValidationError" and "truncated" in records[2]["error"]["message"]
    assert records[5]["embedding_dim"] == 12
    captured = capsys.readouterr()
    assert "5/6 inputs processed, 1 error record(s)" in captured.out
    assert "skipped" in captured.err and "2.png" in captured.err


def test_run_with_no_inputs_and_missing_model(user_tiny_artifacts, tmp_path, capsys):
    root, name = user_tiny_artifacts
    (tmp_path / "empty").mkdir()
    assert main(["run", name, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "r.jsonl"),
                 "--output-dir", str(root), "--backend", "onnxruntime"]) == 2
    assert not (tmp_path / "r.jsonl").exists()
    assert main(["run", "nothing", "--input", str(tmp_path), "--output", str(tmp_path / "r.jsonl"),
                 "--output-dir", str(root), "--backend", "onnxruntime"]) == 2
    assert "batchforge export nothing" in capsys.readouterr().err


def test_gallery_then_run_matches(user_tiny_artifacts, tmp_path, capsys):
    root, name = user_tiny_artifacts
    folder = tmp_path / "g"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        write_image(folder / f"item{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    common = ["--output-dir", str(root), "--backend", "onnxruntime"]
    assert main(["gallery", name, "--input", str(folder), "--output", str(tmp_path / "g.npz"), *common]) == 0
    assert main(["run", name, "--input", str(folder), "--output", str(tmp_path / "r.jsonl"),
                 "--gallery", str(tmp_path / "g.npz"), *common]) == 0
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["matches"][0]["label"] for r in records] == [f"item{i}" for i in range(4)]
    (folder / "bad.png").write_bytes(b"")
    assert main(["gallery", name, "--input", str(folder), "--output", str(tmp_path / "g2.npz"), *common]) == 2
    assert not (tmp_path / "g2.npz").exists()


def test_inspect_and_doctor(user_tiny_artifacts, tmp_path, capsys):
    root, name = user_tiny_artifacts
    assert main(["inspect", str(root / name), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["artifacts"]["fp32"].startswith("ok")
    assert info["fp32_onnx"]["inputs"][0]["shape"][0] == "batch" and info["fp32_onnx"]["batch_lint"] == []
    copy = tmp_path / name
    shutil.copytree(root / name, copy)
    (copy / "model.fp32.onnx").write_bytes((copy / "model.fp32.onnx").read_bytes()[:-10])
    assert main(["inspect", str(copy)]) == 0
    assert "REFUSED" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "nope.onnx")]) == 2
    assert main(["doctor"]) == 0
    assert "onnxruntime-cpu" in capsys.readouterr().out


def test_samples_command(tmp_path, capsys):
    assert main(["samples", "reid", "--out", str(tmp_path / "s"), "--count", "3"]) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 3
    assert main(["samples", "nope", "--out", str(tmp_path / "s")]) == 2


def test_bench_json(user_tiny_artifacts, tmp_path, capsys):
    root, name = user_tiny_artifacts
    assert main(["bench", name, "--batch-sizes", "1,4", "--repeats", "1", "--threads", "1",
                 "--output-dir", str(root), "--json", str(tmp_path / "b.json"),
                 "--factory", "user_models:tiny_embedder"]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 4] and rows[0]["runner_over_raw"] > 0
    assert "ort_speedup_over_torch" in rows[1]
    assert main(["bench", name, "--batch-sizes", "64", "--output-dir", str(root)]) == 2


def test_every_parser_handler_resolves():
    import importlib

    def handlers(parser, prefix=""):
        """(command, handler) of every leaf parser; ``deploy triton`` is a nested one."""
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return [(prefix.strip(), parser.get_default("handler"))]
        return [h for name, p in sub.choices.items() for h in handlers(p, f"{prefix} {name}")]

    found = handlers(build_parser())
    assert ("deploy triton", "batchforge.deploy.commands:cmd_deploy_triton") in found
    for name, handler in found:
        module, _, attr = handler.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_the_venv_was_set_up_from_the_tested_lock():
    """scripts/setup_venv.sh installs with `pip -c constraints.txt`: every pin is what is installed."""
    import tomllib

    from batchforge.lock import default_lock, drift, read_lock

    lock = default_lock()
    assert lock is not None and lock.name == "constraints.txt"
    pins = read_lock(lock)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert {"numpy", "onnxruntime", "opencv-python-headless", "onnx", "scipy"} <= set(pins)
    exported = tomllib.loads((lock.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "torch==2.14.1" in exported["export"]  # the lock and pyproject agree on the exact pins
    assert [d.describe() for d in drift(pins)] == []


def test_doctor_names_a_package_that_drifted_from_the_lock(tmp_path, capsys):
    from importlib.metadata import version

    lock = tmp_path / "constraints.txt"
    lock.write_text(f"# a lock\nnumpy==0.0.1\nonnxruntime=={version('onnxruntime')}\nno-such-dist==1.0\n")
    assert main(["doctor", "--lock", str(lock)]) == 0  # doctor reports; it does not fail by default
    out = capsys.readouterr().out
    assert f"2 of 3 pinned packages differ: no-such-dist not installed (lock 1.0); numpy {version('numpy')} " \
           "(lock 0.0.1)" in out
    assert main(["doctor", "--lock", str(lock), "--strict-lock", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)["lock"]
    assert report["pinned"] == 3 and len(report["drift"]) == 2
    lock.write_text(f"onnxruntime=={version('onnxruntime')}\n")
    assert main(["doctor", "--lock", str(lock), "--strict-lock"]) == 0
    assert "all 1 pinned packages match" in capsys.readouterr().out
    lock.write_text("numpy>=1\n")
    assert main(["doctor", "--lock", str(lock)]) == 2
    assert "expected `name==version`, got 'numpy>=1'" in capsys.readouterr().err
