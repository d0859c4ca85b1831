"""The reid gate on a real zoo model: passes clean, fails on every planted fault (SPEC §6)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import drop_cpu_int8, edit_export_spec, replant_cpu_int8, replant_onnx
from onnx import numpy_helper

from batchforge.cli import main
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.images import write_image

pytestmark = pytest.mark.slow
EVAL = ["--eval-size", "4", "--threads", "2"]


@pytest.fixture
def zoo_copy(resnet_artifacts, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(resnet_artifacts, root)
    return ModelArtifacts.at(root, "reid_resnet50")


def parity(artifacts, *extra):
    return main(["parity", "reid_resnet50", "--output-dir", str(artifacts.root), *EVAL, *extra])


def test_clean_artifact_passes_and_reports(zoo_copy, tmp_path):
    report = tmp_path / "r" / "parity.json"
    assert parity(zoo_copy, "--report", str(report)) == 0
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASSED"
    names = {c["name"] for c in data["reports"][0]["checks"]}
    assert {"embedding_cosine", "top1_agreement", "top5_overlap", "raw_cosine[embedding]",
            "batch1_vs_max[embedding]", "batch8_vs_max[embedding]"} <= names
    assert all(c["reason"] for c in data["reports"][0]["checks"])
    assert "| reid_resnet50 | fp32 |" in report.with_suffix(".md").read_text()


def swap_channels(spec):
    spec["preprocess"]["channel_order"] = "BGR"


def wrong_normalisation(spec):
    spec["preprocess"]["mean"] = [0.5, 0.5, 0.5]
    spec["preprocess"]["std"] = [0.5, 0.5, 0.5]


@pytest.mark.parametrize("edit", [swap_channels, wrong_normalisation], ids=["rgb-bgr", "mean-std"])
def test_preprocessing_config_faults_fail(zoo_copy, edit, tmp_path):
    edit_export_spec(zoo_copy, edit)
    report = tmp_path / "parity.json"
    assert parity(zoo_copy, "--report", str(report)) == 1
    assert {"embedding_cosine", "raw_cosine[embedding]"} <= failed_checks(report)


def perturb_weight(model):
    conv = next(t for t in model.graph.initializer if t.name.endswith("weight") or len(t.dims) == 4)
    array = numpy_helper.to_array(conv).copy()
    array.flat[: array.size // 4] *= 1.5
    conv.CopyFrom(numpy_helper.from_array(array, conv.name))


def drop_bias(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and len(n.input) == 3)
    del conv.input[2]


def mix_the_batch(model):
    """A batch-dependent graph (as a BatchNorm exported in training mode would be): every
    embedding gets 1% of the batch mean added."""
    from onnx import helper

    out = model.graph.output[0].name
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "unmixed"
    model.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "batch_axis"),
                                    numpy_helper.from_array(np.array(0.01, np.float32), "mix")])
    model.graph.node.extend([helper.make_node("ReduceMean", ["unmixed", "batch_axis"], ["batch_mean"]),
                             helper.make_node("Mul", ["batch_mean", "mix"], ["mixed"]),
                             helper.make_node("Add", ["unmixed", "mixed"], [out])])


@pytest.mark.parametrize("mutate, expected", [
    (perturb_weight, {"embedding_cosine", "raw_cosine[embedding]"}),
    (drop_bias, {"raw_max_rel[embedding]"}),
    (mix_the_batch, {"batch1_vs_max[embedding]", "batch8_vs_max[embedding]"}),
], ids=["perturbed-weight", "dropped-bias", "batch-mixing"])
def test_graph_faults_fail(zoo_copy, mutate, expected, tmp_path):
    replant_onnx(zoo_copy, Precision.FP32, mutate)
    report = tmp_path / "parity.json"
    assert parity(zoo_copy, "--report", str(report)) == 1
    assert expected <= failed_checks(report), failed_checks(report)


def test_missing_artifact_exits_2_with_the_command(tmp_path, capsys):
    assert main(["parity", "reid_resnet50", "--output-dir", str(tmp_path), "--eval-size", "4"]) == 2
    assert "batchforge export reid_resnet50" in capsys.readouterr().out


def failed_checks(report: Path) -> set[str]:
    return {c["name"] for c in json.loads(report.read_text())["reports"][0]["checks"] if not c["passed"]}


def test_int8_calibrated_on_noise_fails_the_embedding_checks(zoo_copy, tmp_path):
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        write_image(noise / f"{i:02d}.png", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    out = ["--output-dir", str(zoo_copy.root)]
    assert main(["calibrate", "reid_resnet50", "--data", str(noise), "--samples", "8", *out]) == 2
    assert main(["calibrate", "reid_resnet50", "--data", str(noise), "--samples", "8",
                 "--allow-random-data", "--max-excluded", "0", *out]) == 0
    # the TensorRT Q/DQ model (symmetric int8) calibrated on noise fails; measured: the CPU form
    # (asymmetric uint8) calibrated on the same noise passes reid_resnet50's 7 checks
    drop_cpu_int8(zoo_copy)
    report = tmp_path / "noise.json"
    assert parity(zoo_copy, "--precision", "int8", "--report", str(report)) == 1
    assert "embedding_cosine" in failed_checks(report)
    assert json.loads(report.read_text())["reports"][0]["artifacts"][0].endswith(":int8-qdq-as-written")


@pytest.mark.parametrize("form", ["qdq-as-written", "cpu"])
def test_int8_wrong_dequantize_scale_fails_and_is_localised(resnet_calibrated, tmp_path, form):
    """On the README tour's INT8 model (calibrated on real samples; the tour shows it passes), in
    the artifact the CPU backend runs: the CPU form, or the TensorRT form as written."""
    shutil.copytree(resnet_calibrated / "artifacts", tmp_path / "artifacts")
    artifacts = ModelArtifacts.at(tmp_path / "artifacts", "reid_resnet50")

    def wrong_dequantize_scale(model):
        inits = {t.name for t in model.graph.initializer}
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits][20]
        scale = next(t for t in model.graph.initializer if t.name == dq.input[1])
        planted = numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name + "_planted")
        model.graph.initializer.append(planted)
        dq.input[1] = planted.name

    if form == "cpu":
        if not artifacts.cpu_int8_onnx.is_file():
            pytest.skip("the tour's calibration did not adopt a CPU form on this CPU")
        replant_cpu_int8(artifacts, wrong_dequantize_scale)
    else:
        drop_cpu_int8(artifacts)
        replant_onnx(artifacts, Precision.INT8, wrong_dequantize_scale)
    report = tmp_path / "int8.json"
    assert parity(artifacts, "--precision", "int8", "--report", str(report)) == 1
    assert failed_checks(report) & {"embedding_cosine", "raw_cosine[embedding]"}, failed_checks(report)
    ran = json.loads(report.read_text())["reports"][0]["artifacts"][0]
    assert (":int8-cpu-" in ran) if form == "cpu" else ran.endswith(":int8-qdq-as-written"), ran
    if form == "cpu":  # localisation walks the TensorRT form's tensors, which are fine here
        return
    found = json.loads(report.read_text())["reports"][0]["localisation"]
    assert found["first_past_tolerance"]["tensor"], found
    assert found["worst"][0]["relative_error"] > found["limit"]
