"""Issue #29 cases 7 and 12: external data must be a regular file with one link inside the model
folder (a hard link to an outside file is refused like a symlink), and its offset + length must lie
within that file; `run`, `convert`, `calibrate`, `bundle`, `deploy` and `build` refuse in one line,
exit 2, writing nothing."""

import hashlib
import os

import pytest
from hostile_files import BACKEND, good_images, point_external_data_at, rerecord, tiny_artifacts

from batchforge.cli import main
from batchforge.errors import ArtifactError
from batchforge.onnx_external import checked_external_files
from batchforge.runtime.artifacts import Precision

FP32 = Precision.FP32


def _record_as_is(artifacts):
    """export.json rewritten so every hash matches the files as they are now (what a hostile user
    would do); batchforge's own checks are not used to write it."""
    data = artifacts.dir / "weights.bin"
    rerecord(artifacts, {"weights.bin": hashlib.sha256(data.read_bytes()).hexdigest()})


def _commands(tmp_path, artifacts):
    root = str(artifacts.root)
    good_images(tmp_path / "in", 8)  # calibrate needs eight
    return {
        "run": (["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "r.jsonl"),
                 "--output-dir", root, *BACKEND], tmp_path / "r.jsonl"),
        "convert": (["convert", "tiny", "--precision", "fp16", "--output-dir", root], artifacts.onnx(Precision.FP16)),
        "calibrate": (["calibrate", "tiny", "--data", str(tmp_path / "in"), "--output-dir", root],
                      artifacts.onnx(Precision.INT8)),
        "bundle": (["bundle", "tiny", "--out", str(tmp_path / "b.tar.gz"), "--output-dir", root],
                   tmp_path / "b.tar.gz"),
        "deploy": (["deploy", "triton", "tiny", "--out", str(tmp_path / "repo"), "--output-dir", root],
                   tmp_path / "repo"),
        "build": (["build", "tiny", "--backend", "onnxruntime", "--output-dir", root],
                  artifacts.ort_engine(FP32)),
    }


@pytest.fixture
def hardlinked(tmp_path):
    """A model whose weights.bin is a hard link to a file outside the model folder."""
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, "weights.bin")
    outside = tmp_path / "outside.bin"
    os.replace(artifacts.dir / "weights.bin", outside)
    os.link(outside, artifacts.dir / "weights.bin")
    _record_as_is(artifacts)
    return artifacts


@pytest.mark.parametrize("command", ["run", "convert", "calibrate", "bundle", "deploy", "build"])
def test_hardlinked_external_data_is_refused(tmp_path, capsys, hardlinked, command):
    argv, output = _commands(tmp_path, hardlinked)[command]
    before = sorted(p.name for p in hardlinked.dir.iterdir())
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "tensor 'W' keeps its data at 'weights.bin', which is a hard link (2 names" in err
    assert "refusing to load it" in err
    assert not output.exists() and sorted(p.name for p in hardlinked.dir.iterdir()) == before
    assert not list(tmp_path.glob(".b.tar.gz*")) and not list(tmp_path.glob(".r.jsonl*"))


def test_a_single_link_copy_of_the_same_bytes_is_accepted(tmp_path, capsys, hardlinked):
    data = hardlinked.dir / "weights.bin"
    content = data.read_bytes()
    data.unlink()
    data.write_bytes(content)  # now a file of its own
    argv, output = _commands(tmp_path, hardlinked)["run"]
    assert main(argv) == 0, capsys.readouterr().err
    assert output.is_file()


@pytest.fixture
def short_data(tmp_path):
    """A model whose weights.bin is shorter than the offset + length its tensor names."""
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    point_external_data_at(artifacts, "weights.bin")
    data = artifacts.dir / "weights.bin"
    data.write_bytes(data.read_bytes()[:10])
    _record_as_is(artifacts)
    return artifacts


@pytest.mark.parametrize("command", ["run", "convert", "calibrate", "bundle", "deploy", "build"])
def test_external_data_running_past_its_file_is_refused(tmp_path, capsys, short_data, command):
    argv, output = _commands(tmp_path, short_data)[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "keeps its data at 'weights.bin', which asks for bytes 0 to" in err
    assert "of a 10-byte file (offset + length runs past its end)" in err
    assert not output.exists()
    assert not list(tmp_path.glob(".b.tar.gz*")) and not list(tmp_path.glob(".r.jsonl*"))


def test_an_offset_past_the_end_is_refused_by_the_reader(tmp_path, short_data):
    import onnx

    path = short_data.onnx(FP32)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "offset":
            entry.value = "4096"
    if not any(e.key == "offset" for e in model.graph.initializer[0].external_data):
        model.graph.initializer[0].external_data.add(key="offset", value="4096")
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match=r"asks for bytes 4,096 to .* of a 10-byte file"):
        checked_external_files(path)
