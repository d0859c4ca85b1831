"""docs/your-own-model.md's walkthrough, run as written (on a copy of examples/ in a tmp folder):
torchvision squeezenet1_1 export -> convert -> calibrate -> parity fp32/fp16/int8 on held-out
images, and a two-input model export -> parity -> run; a perturbed weight fails parity by name."""

import json
import runpy
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import coverage_paused
from helpers import readme_blocks, replant_onnx
from onnx import numpy_helper

from batchforge.cli import main
from batchforge.runtime.artifacts import ModelArtifacts, Precision

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.slow
SANITY = ["sanity_item_spread[{o}]", "sanity_identical_pairs[{o}]", "sanity_map_spread[{o}]"]
SQUEEZENET_CHECKS = ["raw_cosine[logits]", "raw_max_rel[logits]", *(n.format(o="logits") for n in SANITY),
                     "sanity_classes[logits]", "preprocess_floor_max_rel[logits]", "row_cosine_min[logits]",
                     "argmax_agreement[logits]", "argmax_plain_agreement[logits]", "top5_overlap[logits]",
                     "batch1_vs_max[logits]", "batch2_vs_max[logits]"]


def run_line(line: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """One walkthrough console line: ``export PYTHONPATH=...``, ``python SCRIPT ...`` or ``batchforge ...``."""
    command = shlex.split(line.split("#")[0].removeprefix("$ "))
    if command[0] == "export":
        name, _, value = command[1].partition("=")
        assert name == "PYTHONPATH", line
        monkeypatch.syspath_prepend(str(root / value))
        return 0
    if command[0] == "python":
        monkeypatch.setattr("sys.argv", command[1:])
        try:
            runpy.run_path(command[1], run_name="__main__")
        except SystemExit as done:
            return int(done.code or 0)
        return 0
    assert command[0] == "batchforge", line
    if command[1] == "export":
        with coverage_paused():  # torch.onnx.export measures nothing of the runtime
            return main(command[1:])
    return main(command[1:])


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The folder where the walkthrough's blocks ran, and each line's exit code."""
    root = tmp_path_factory.mktemp("own_model")
    shutil.copytree(EXAMPLES, root / "examples")
    blocks = [b for b in readme_blocks("console") if "own_model" in b]
    assert len(blocks) == 2 and "own_model:squeezenet" in blocks[0] and "own_model:masked_classifier" in blocks[1]
    codes = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        for line in "".join(blocks).splitlines():
            codes[line] = run_line(line, root, monkeypatch)
    return root, codes


def reports(path: Path) -> dict[str, dict]:
    return {r["precision"]: r for r in json.loads(path.read_text())["reports"]}


def not_passed(run: dict, role: str | None = None) -> set[str]:
    return {c["name"] for c in run["checks"] if not c["passed"] and role in (None, c["role"])}


def test_the_walkthrough_runs_as_written_with_its_verdicts(walked):
    root, codes = walked
    assert len(codes) == 12 and all(code == 0 for code in codes.values()), codes
    squeezenet = reports(root / "reports/squeezenet.json")
    assert list(squeezenet) == ["fp32", "fp16", "int8"]
    # both walkthrough models are untrained: every held-out image gets the same top class (squeezenet
    # 416, masked 9), so every engine agrees on argmax whatever it computes: UNINFORMATIVE, exit 0
    for run in squeezenet.values():
        assert run["status"] == "UNINFORMATIVE" and [c["name"] for c in run["checks"]] == SQUEEZENET_CHECKS, run
        assert not_passed(run) == {"sanity_classes[logits]"}
    (masked,) = reports(root / "reports/masked.json").values()
    assert masked["status"] == "UNINFORMATIVE" and not_passed(masked) == {"sanity_classes[logits]"}
    assert sorted(c["name"] for c in masked["checks"]) == sorted([
        "raw_cosine[logits]", "raw_max_rel[logits]", "row_cosine_min[logits]", "argmax_agreement[logits]",
        "top5_overlap[logits]", "batch1_vs_max[logits]", "batch2_vs_max[logits]",
        "raw_cosine[heatmap]", "raw_max_rel[heatmap]", "row_cosine_min[heatmap]", "batch1_vs_max[heatmap]",
        "batch2_vs_max[heatmap]", "argmax_plain_agreement[logits]", "sanity_classes[logits]",
        *(n.format(o=o) for n in SANITY for o in ("logits", "heatmap"))])
    lines = [json.loads(line) for line in (root / "masked.jsonl").read_text().splitlines()]
    assert [Path(r["source"]).name for r in lines] == sorted(p.name for p in (root / "items").iterdir())
    first = lines[0]["outputs"]
    assert len(first["logits"]["values"]) == 10 and len(first["logits"]["top"]) == 5
    assert first["heatmap"]["npz"] == "masked.outputs.npz" and first["heatmap"]["key"] == "line000000/heatmap"
    assert np.load(root / "masked.outputs.npz")["line000000/heatmap"].shape == (1, 16, 16)


def test_the_readme_two_input_spec_is_the_example_file():
    (block,) = [b for b in readme_blocks("json") if '"family": "tensors"' in b]
    assert json.loads(block) == json.loads((EXAMPLES / "masked.json").read_text())


def test_a_perturbed_weight_fails_parity_naming_its_checks(walked, tmp_path):
    """Noise of 5% of its spread on one fire module's squeeze weights, in the exported graph only:
    the logits move (cosine, max_rel, top-5) while argmax and batch equivalence still hold."""
    root, _ = walked
    shutil.copytree(root / "artifacts", tmp_path / "artifacts")
    copy = ModelArtifacts.at(tmp_path / "artifacts", "squeezenet")

    def perturb(model):
        (init,) = [i for i in model.graph.initializer if i.name == "features.9.squeeze.weight"]
        weight = numpy_helper.to_array(init)
        noise = np.random.default_rng(0).normal(0.0, 0.05 * weight.std(), weight.shape)
        init.CopyFrom(numpy_helper.from_array((weight + noise).astype(weight.dtype), init.name))

    replant_onnx(copy, Precision.FP32, perturb)
    report = tmp_path / "r.json"
    code = main(["parity", "squeezenet", "--data", str(root / "photos/held_out"), "--output-dir",
                 str(tmp_path / "artifacts"), "--report", str(report), "--factory", "own_model:squeezenet"])
    assert code == 1
    (run,) = reports(report).values()
    assert not_passed(run, "agreement") == {
        "raw_cosine[logits]", "raw_max_rel[logits]", "row_cosine_min[logits]", "top5_overlap[logits]"}
    assert run["status"] == "FAILED"  # an uninformative reference never hides a failed check
