"""``run`` for the tensors family: small outputs in the JSON line, large ones in the side .npz."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import coverage_paused
from helpers import edit_export_spec
from user_models import SIZE, tensors_spec, two_heads

from batchforge.cli import main
from batchforge.export.reference import torch_preprocess
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.images import read_image
from batchforge.runtime.spec import Preprocess


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensors_run")
    (root / "two.json").write_text(json.dumps(tensors_spec("two", ("logits", "heatmap"))))
    with coverage_paused():
        assert main(["export", "--factory", "user_models:two_heads", "--spec", str(root / "two.json"),
                     "--output-dir", str(root / "artifacts")]) == 0
    assert main(["samples", "tensors", "--out", str(root / "images"), "--count", "3"]) == 0
    return root


def run(root, artifacts, out) -> list[dict]:
    assert main(["run", "two", "--input", str(root / "images"), "--output", str(out),
                 "--output-dir", str(artifacts), "--backend", "onnxruntime"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def reference(root) -> tuple[np.ndarray, np.ndarray]:
    """The module on torch-preprocessed images (independent of the runtime's preprocessing)."""
    files = sorted((root / "images").iterdir())
    batch = torch.stack([torch_preprocess(read_image(f), Preprocess(SIZE, SIZE))[0] for f in files])
    with torch.inference_mode():
        logits, heatmap = two_heads()(batch)
    return logits.numpy(), heatmap.numpy()


def test_small_outputs_go_in_the_line_and_large_ones_in_the_npz(exported, tmp_path):
    records = run(exported, exported / "artifacts", tmp_path / "r.jsonl")
    logits, heatmap = reference(exported)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.outputs.npz"]
    with np.load(tmp_path / "r.outputs.npz") as npz:
        assert npz.files == ["line000000/heatmap", "line000001/heatmap", "line000002/heatmap"]
        for index, record in enumerate(records):
            small, large = record["outputs"]["logits"], record["outputs"]["heatmap"]
            assert small["shape"] == [10] and small["dtype"] == "float32" and "npz" not in small
            np.testing.assert_allclose(small["values"], logits[index], atol=1e-3)
            assert small["top"][0]["index"] == int(np.argmax(logits[index])) and len(small["top"]) == 3
            assert large == {"shape": [4, 16, 16], "dtype": "float32", "npz": "r.outputs.npz",
                             "key": f"line{index:06d}/heatmap"}
            np.testing.assert_allclose(npz[large["key"]], heatmap[index], atol=1e-3)


def test_a_raised_inline_limit_puts_every_output_in_the_line_and_drops_the_stale_npz(exported, tmp_path):
    shutil.copytree(exported / "artifacts", tmp_path / "artifacts")
    out = tmp_path / "out" / "r.jsonl"
    run(exported, tmp_path / "artifacts", out)
    assert (out.parent / "r.outputs.npz").is_file()
    edit_export_spec(ModelArtifacts.at(tmp_path / "artifacts", "two"),
                     lambda s: s["postprocess"].update(inline_max_values=1024))
    records = run(exported, tmp_path / "artifacts", out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.jsonl"]
    _, heatmap = reference(exported)
    for index, record in enumerate(records):
        np.testing.assert_allclose(record["outputs"]["heatmap"]["values"], heatmap[index], atol=1e-3)


def test_npy_items_feed_a_single_input_model_and_a_float64_one_is_a_named_error(exported, tmp_path, capsys):
    files = sorted((exported / "images").iterdir())
    folder = tmp_path / "arrays"
    folder.mkdir()
    first = torch_preprocess(read_image(files[0]), Preprocess(SIZE, SIZE))[0].numpy()
    np.save(folder / "a.npy", first)
    np.save(folder / "b.npy", first.astype(np.float64))
    out = tmp_path / "r.jsonl"
    assert main(["run", "two", "--input", str(folder), "--output", str(out),
                 "--output-dir", str(exported / "artifacts"), "--backend", "onnxruntime"]) == 1
    good, bad = (json.loads(line) for line in out.read_text().splitlines())
    logits, _ = reference(exported)
    np.testing.assert_allclose(good["outputs"]["logits"]["values"], logits[0], atol=1e-4)
    assert bad["ok"] is False
    assert bad["error"]["message"].endswith("b.npy: input 'image' is float32, the item's array is float64 "
                                            "(convert it explicitly (array.astype(np.float32)); nothing is "
                                            "cast silently)")
    assert "1/2 inputs processed" in capsys.readouterr().out
