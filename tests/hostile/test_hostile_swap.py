"""Issue #29 case 9: a model file replaced between open_runner/load_pipeline and activate(), or
between deactivate() and a later activate(), is refused at activate (its integrity checks run
again there), never run unverified."""

import hashlib

import numpy as np
import onnx
import pytest
from helpers import tiny_embedder_onnx
from hostile_files import point_external_data_at, rerecord, tiny_artifacts

from batchforge.errors import IntegrityError
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.loading import load_pipeline, open_runner

FP32 = Precision.FP32


def _swap_model(artifacts):
    """Another valid model (other weights) in place of the verified one; its record is untouched."""
    onnx.save(tiny_embedder_onnx(seed=7), str(artifacts.onnx(FP32)))


def test_a_model_swapped_before_the_first_activate_is_refused(tmp_path):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    pipeline = load_pipeline("tiny", output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1)
    _swap_model(artifacts)
    with pytest.raises(IntegrityError, match=r"model\.fp32\.onnx does not match its record") as info:
        pipeline.activate()
    assert "the file changed after it was written" in info.value.one_line()
    assert not pipeline.runner.is_active and pipeline.runner.session is None


def test_a_model_swapped_between_deactivate_and_activate_is_refused(tmp_path):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    runner = open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu", threads=1)
    with runner:
        first = runner.infer({"images": np.ones((1, 3, 8, 8), np.float32)})
    with runner:  # reactivating unchanged files works
        again = runner.infer({"images": np.ones((1, 3, 8, 8), np.float32)})
    assert np.array_equal(first["embedding"], again["embedding"])
    _swap_model(artifacts)
    with pytest.raises(IntegrityError, match="does not match its record"):
        runner.activate()
    assert not runner.is_active


def test_an_engine_built_beside_an_opened_runner_is_no_swap(tmp_path):
    """The main job builds a model's precisions side by side: an fp32 engine that appears after
    a runner of the plain model was opened is not what that runner opens, so it still activates
    (the plain model verified again); the next runner opened takes the engine."""
    from batchforge.cli import main

    artifacts = tiny_artifacts(tmp_path / "artifacts")
    runner = open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu", threads=1)
    assert ":built" not in runner.name
    assert main(["build", "tiny", "--precision", "fp32", "--backend", "onnxruntime", "--no-speed-check",
                 "--output-dir", str(artifacts.root)]) == 0
    with runner:
        runner.infer({"images": np.ones((1, 3, 8, 8), np.float32)})
    assert ":built" in open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu", threads=1).name


def test_external_data_swapped_between_deactivate_and_activate_is_refused(tmp_path):
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, "weights.bin")
    data = artifacts.dir / "weights.bin"
    rerecord(artifacts, {"weights.bin": hashlib.sha256(data.read_bytes()).hexdigest()})
    runner = open_runner(artifacts, precision=FP32, backend="onnxruntime-cpu", threads=1)
    with runner:
        pass
    changed = bytearray(data.read_bytes())
    changed[0] ^= 0xFF
    data.write_bytes(bytes(changed))
    with pytest.raises(IntegrityError, match=r"external data 'weights\.bin' of model\.fp32\.onnx is missing"):
        runner.activate()


def test_bundle_refuses_a_model_swapped_between_its_check_and_its_copy(tmp_path, capsys, monkeypatch):
    import shutil

    from batchforge.cli import main
    from batchforge.deploy import bundle as deploy_bundle

    artifacts = tiny_artifacts(tmp_path / "artifacts")
    real = shutil.copyfile

    def swap_then_copy(source, target, **kwargs):
        if str(source).endswith("model.fp32.onnx"):
            _swap_model(artifacts)
        return real(source, target, **kwargs)

    monkeypatch.setattr(deploy_bundle.shutil, "copyfile", swap_then_copy)
    out = tmp_path / "b.tar.gz"
    code = main(["bundle", "tiny", "--out", str(out), "--output-dir", str(artifacts.root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "tiny: the artifacts under" in err and "changed while they were being bundled" in err
    assert "model.fp32.onnx does not match its record" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]  # no bundle, no staging folder


def test_deploy_refuses_a_model_swapped_between_its_check_and_its_copy(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tritonclient.grpc")
    from batchforge.cli import main
    from batchforge.deploy import triton

    artifacts = tiny_artifacts(tmp_path / "artifacts")
    real = triton.graph_io

    def read_then_swap(path):  # runs after choose_source verified the files, before they are copied
        found = real(path)
        _swap_model(artifacts)
        return found

    monkeypatch.setattr(triton, "graph_io", read_then_swap)
    repo = tmp_path / "repo"
    code = main(["deploy", "triton", "tiny", "--out", str(repo), "--output-dir", str(artifacts.root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "model.fp32.onnx changed after it was verified" in err and "nothing was written" in err
    assert list(repo.iterdir()) == []  # the staging folder removed, no model folder
