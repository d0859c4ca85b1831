"""`batchforge run --workers/--profile`, NaN outputs and allocation failures end to end."""

import json

import numpy as np
import pytest
from helpers import random_images, sqrt_embedder_onnx, tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.cli import main
from batchforge.runtime.images import write_image
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner
from batchforge.runtime.spec import ProfileRange


def folder_of(tmp_path, images, name="in"):
    folder = tmp_path / name
    folder.mkdir()
    for i, image in enumerate(images):
        write_image(folder / f"img{i:02d}.png", image)
    return folder


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def nan_setup(tmp_path):
    """The Sqrt embedder (dark images -> NaN) and six inputs, img01 and img04 dark."""
    root = tmp_path / "artifacts"
    write_artifact(root, sqrt_embedder_onnx(), tiny_spec())
    rng = np.random.default_rng(2)
    images = [np.zeros((10, 10, 3), np.uint8) if i in (1, 4) else rng.integers(200, 256, (10, 10, 3), dtype=np.uint8)
              for i in range(6)]
    return root, folder_of(tmp_path, images)


@pytest.mark.parametrize("extra", [[], ["--include-embedding"]])
def test_nan_output_gives_error_records_exit_1_and_a_complete_file(nan_setup, tmp_path, capsys, extra):
    root, folder = nan_setup
    out = tmp_path / "r.jsonl"
    code = main(["run", "tiny", "--input", str(folder), "--output", str(out), "--output-dir", str(root),
                 "--backend", "onnxruntime", "--batch-size", "4", *extra])
    assert code == 1
    lines = records(out)
    assert [r["source"].rsplit("/", 1)[1] for r in lines] == [f"img{i:02d}.png" for i in range(6)]
    assert [r["ok"] for r in lines] == [True, False, True, True, False, True]
    for bad in (lines[1], lines[4]):
        assert bad["error"]["type"] == "NonFiniteOutputError" and "'embedding'" in bad["error"]["message"]
    assert all(("embedding" in r) == bool(extra) for r in lines if r["ok"])
    assert "4/6 inputs processed, 2 error record(s)" in capsys.readouterr().out


def test_gallery_refuses_nan_embeddings_and_writes_nothing(nan_setup, tmp_path, capsys):
    root, folder = nan_setup
    out = tmp_path / "g.npz"
    assert main(["gallery", "tiny", "--input", str(folder), "--output", str(out), "--output-dir", str(root),
                 "--backend", "onnxruntime"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "2 gallery image(s) could not be embedded" in err and "img01.png" in err and "Traceback" not in err


def test_allocation_failure_at_batch_32_still_gives_every_input_one_result(tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    write_artifact(root, tiny_embedder_onnx(), tiny_spec(profile=ProfileRange(1, 8, 32)))
    folder = folder_of(tmp_path, random_images(70, shape=(9, 9)))
    common = ["--input", str(folder), "--output-dir", str(root), "--backend", "onnxruntime", "--batch-size", "32"]
    assert main(["run", "tiny", "--output", str(tmp_path / "fits.jsonl"), *common]) == 0
    real, batches = OnnxRuntimeRunner.infer_impl, []

    def fails_above_8(runner, feed):
        batches.append(len(feed["images"]))
        if len(feed["images"]) > 8:
            raise RuntimeError("Failed to allocate memory for requested buffer of size 1048576")
        return real(runner, feed)

    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", fails_above_8)
    assert main(["run", "tiny", "--output", str(tmp_path / "backoff.jsonl"), *common]) == 0
    assert (tmp_path / "backoff.jsonl").read_bytes() == (tmp_path / "fits.jsonl").read_bytes()
    assert batches[:3] == [32, 16, 8] and max(batches[3:]) == 8


def test_workers_0_and_2_write_identical_jsonl_and_a_profile(tmp_path, capsys):
    root = tmp_path / "artifacts"
    write_artifact(root, tiny_embedder_onnx(), tiny_spec())
    folder = folder_of(tmp_path, random_images(9, shape=(15, 11)))
    (folder / "img03.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    common = ["--input", str(folder), "--output-dir", str(root), "--backend", "onnxruntime", "--batch-size", "4"]
    assert main(["run", "tiny", "--output", str(tmp_path / "w0.jsonl"), "--workers", "0", *common]) == 1
    assert main(["run", "tiny", "--output", str(tmp_path / "w2.jsonl"), "--workers", "2",
                 "--profile", str(tmp_path / "prof" / "p.json"), *common]) == 1
    assert (tmp_path / "w0.jsonl").read_bytes() == (tmp_path / "w2.jsonl").read_bytes()
    profile = json.loads((tmp_path / "prof" / "p.json").read_text())
    assert profile["workers"] == 2 and profile["results"] == 9
    assert profile["stages"]["infer"]["items"] == 8 and profile["stages"]["write"]["items"] == 9
    assert profile["bottleneck"] in profile["stages"]
    err = capsys.readouterr().err
    assert "bottleneck:" in err and "postprocess" in err
    assert main(["run", "tiny", "--output", str(tmp_path / "x.jsonl"), "--profile", str(tmp_path), *common]) == 2
    assert "--profile" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
