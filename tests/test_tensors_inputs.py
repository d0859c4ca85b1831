"""A two-input model (image + mask) as family tensors through export, parity, run, bench and
calibrate; its inputs swapped in the exported graph fail parity by name; bad items are named."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import coverage_paused
from helpers import replant_onnx
from user_models import SIZE, image_and_mask, tensors_spec

from batchforge.cli import main
from batchforge.export.reference import torch_preprocess
from batchforge.export.samples import generate
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.spec import Preprocess

TRUSTED = ("--factory", "user_models:image_and_mask")  # parity imports no factory a record names


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensors_two_inputs")
    (root / "im.json").write_text(json.dumps(tensors_spec("im", mask=True)))
    with coverage_paused():
        assert main(["export", "--factory", "user_models:image_and_mask", "--spec", str(root / "im.json"),
                     "--output-dir", str(root / "artifacts")]) == 0
    return root / "artifacts"


def items(count: int, seed: int) -> dict[str, np.ndarray]:
    """Preprocessed images (torch side, not the runtime's) and smooth disc masks, stacked."""
    pre = Preprocess(SIZE, SIZE)
    images = np.stack([torch_preprocess(img, pre)[0].numpy() for _, img in generate("tensors", count, seed)])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rng = np.random.default_rng(seed)
    masks = np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[None]
                      for cy, cx, r in rng.integers([8, 8, 5], [24, 24, 14], size=(count, 3))])
    return {"image": images, "mask": masks.astype(np.float32)}


def report_of(path) -> dict:
    (model,) = json.loads(path.read_text())["reports"]
    return model


def test_parity_run_and_bench_take_both_inputs(two_inputs, tmp_path, capsys):
    assert main(["parity", "im", *TRUSTED, "--output-dir", str(two_inputs), "--report", str(tmp_path / "r.json")]) == 0
    model = report_of(tmp_path / "r.json")
    cosine = next(c for c in model["checks"] if c["name"] == "row_cosine_min[logits]")
    assert "synthetic: sample images + uniform [0, 1) mask" in cosine["detail"]
    arrays = items(3, 7)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"item{i}.npz", image=arrays["image"][i], mask=arrays["mask"][i])
    out = tmp_path / "out" / "r.jsonl"
    assert main(["run", "im", "--input", str(folder), "--output", str(out), "--output-dir", str(two_inputs),
                 "--backend", "onnxruntime"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    with torch.inference_mode():
        expected = image_and_mask()(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["mask"])).numpy()
    got = np.array([r["outputs"]["logits"]["values"] for r in records])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert [r["outputs"]["logits"]["top"][0]["index"] for r in records] == list(expected.argmax(axis=1))
    capsys.readouterr()
    assert main(["bench", "im", "--batch-sizes", "1,2", "--repeats", "1", "--output-dir", str(two_inputs)]) == 0
    assert "runner/raw" in capsys.readouterr().out


def test_inputs_swapped_in_the_exported_graph_fail_parity(two_inputs, tmp_path):
    """An export that concatenates (mask, image) where the module concatenates (image, mask)."""
    shutil.copytree(two_inputs, tmp_path / "artifacts")

    def swap(model):
        (concat,) = [n for n in model.graph.node if n.op_type == "Concat"]
        first, second = concat.input
        concat.input[:] = [second, first]

    replant_onnx(ModelArtifacts.at(tmp_path / "artifacts", "im"), Precision.FP32, swap)
    code = main(["parity", "im", *TRUSTED, "--output-dir", str(tmp_path / "artifacts"),
                 "--report", str(tmp_path / "r.json")])
    assert code == 1
    failed = {c["name"] for c in report_of(tmp_path / "r.json")["checks"] if not c["passed"]}
    assert {"raw_cosine[logits]", "row_cosine_min[logits]", "argmax_agreement[logits]"} <= failed


def test_an_image_alone_is_a_named_error_record_for_a_two_input_model(two_inputs, tmp_path, capsys):
    assert main(["samples", "tensors", "--out", str(tmp_path / "images"), "--count", "2"]) == 0
    out = tmp_path / "r.jsonl"
    assert main(["run", "im", "--input", str(tmp_path / "images"), "--output", str(out),
                 "--output-dir", str(two_inputs), "--backend", "onnxruntime"]) == 1
    first = json.loads(out.read_text().splitlines()[0])
    assert first["ok"] is False
    assert ("takes inputs ['image', 'mask'], this item gives an image for 'image' (missing ['mask']) "
            "(an image feeds only the first input; give one .npz per item") in first["error"]["message"]
    assert "0/2 inputs processed" in capsys.readouterr().out


def test_calibrate_and_gate_int8_on_two_input_arrays(two_inputs, tmp_path, capsys):
    shutil.copytree(two_inputs, tmp_path / "artifacts")
    np.savez(tmp_path / "calib.npz", **items(8, 4000))
    np.savez(tmp_path / "held_out.npz", **items(12, 2000))
    assert main(["calibrate", "im", "--data", str(tmp_path / "calib.npz"), "--samples", "8",
                 "--output-dir", str(tmp_path / "artifacts")]) == 0
    record = json.loads((tmp_path / "artifacts" / "im" / "calibration.json").read_text())
    assert record["data"]["items"] == 8
    code = main(["parity", "im", *TRUSTED, "--precision", "int8", "--data", str(tmp_path / "held_out.npz"),
                 "--output-dir", str(tmp_path / "artifacts"), "--report", str(tmp_path / "r.json")])
    model = report_of(tmp_path / "r.json")
    assert code == 0, [c for c in model["checks"] if not c["passed"]]
    assert "warning:" not in capsys.readouterr().err


def test_bad_parity_data_for_two_inputs_is_one_line_and_exit_2(two_inputs, tmp_path, capsys):
    assert main(["samples", "tensors", "--out", str(tmp_path / "images"), "--count", "2"]) == 0
    arrays = items(4, 5)
    np.savez(tmp_path / "swapped.npz", image=arrays["mask"], mask=arrays["image"])
    for data, expected in (
        (tmp_path / "images", "takes inputs ['image', 'mask'], this item gives an image for 'image' (missing "
                              "['mask']) (an image feeds only the first input; give one .npz per item"),
        (tmp_path / "swapped.npz", "swapped.npz: array 'image' has items of shape (1, 32, 32), expected (3, 32, 32)"),
    ):
        capsys.readouterr()
        assert main(["parity", "im", *TRUSTED, "--output-dir", str(two_inputs), "--data", str(data)]) == 2
        out, err = capsys.readouterr()
        (line,) = [line for line in out.splitlines() if "could not run" in line]
        assert expected in line, line
        assert "Traceback" not in out + err


def test_calibrating_a_two_input_model_on_images_is_one_line_naming_the_cause(two_inputs, tmp_path, capsys):
    """Every image fails the same way: said once, with the item error's own hint (use .npz)."""
    assert main(["samples", "tensors", "--out", str(tmp_path / "images"), "--count", "8"]) == 0
    shutil.copytree(two_inputs, tmp_path / "artifacts")
    assert main(["calibrate", "im", "--data", str(tmp_path / "images"), "--samples", "8",
                 "--output-dir", str(tmp_path / "artifacts")]) == 2
    out, err = capsys.readouterr()
    (line,) = [line for line in (out + err).splitlines() if "could not be read" in line]
    assert "8 of 8 calibration file(s) could not be read, each for the same reason" in line
    assert "missing ['mask']" in line and ".npz" in line and line.count("missing") == 1
    assert not (tmp_path / "artifacts" / "im" / "model.int8.onnx").exists()


def test_a_nan_item_is_its_own_error_record_and_the_others_are_processed(two_inputs, tmp_path, capsys):
    arrays = items(3, seed=11)
    folder = tmp_path / "npz"
    folder.mkdir()
    for i in range(3):
        item = {name: a[i] for name, a in arrays.items()}
        if i == 1:
            item["mask"] = item["mask"].copy()
            item["mask"][0, 3, 4] = np.nan
        np.savez(folder / f"item{i}.npz", **item)
    out = tmp_path / "r.jsonl"
    assert main(["run", "im", "--input", str(folder), "--output", str(out),
                 "--output-dir", str(two_inputs), "--backend", "onnxruntime"]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ok"] for r in rows] == [True, False, True]
    assert rows[1]["source"].endswith("item1.npz")
    assert "input 'mask' holds 1 NaN/Inf value(s), first at (0, 3, 4)" in rows[1]["error"]["message"]
    assert "2/3 inputs processed" in capsys.readouterr().out
