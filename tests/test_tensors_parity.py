"""tensors family end to end: export -> parity with per-output checks; planted faults fail by name."""

import json

import numpy as np
import pytest
from conftest import coverage_paused
from helpers import edit_export_spec, export_factory, planted_copy
from user_models import tensors_spec

from batchforge.cli import main


def export(root, factory: str, spec: dict) -> None:
    with coverage_paused():
        assert export_factory(root, factory, spec) == 0


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensors_classifier")
    export(root, "tiny_classifier", tensors_spec("cls"))
    return root / "artifacts"


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensors_two_heads")
    export(root, "two_heads", tensors_spec("two", ("logits", "heatmap")))
    return root / "artifacts"


def parity(artifacts, name: str, report, *extra: str) -> tuple[int, dict]:
    factories = ("tiny_classifier", "two_heads", "batch_coupled")  # parity imports none a record names
    trusted = [arg for f in factories for arg in ("--factory", f"user_models:{f}")]
    code = main(["parity", name, "--output-dir", str(artifacts), "--report", str(report), *trusted, *extra])
    (model,) = json.loads(report.read_text())["reports"]
    return code, model


def failing(model: dict) -> set[str]:
    return {c["name"] for c in model["checks"] if not c["passed"]}


def head_bias(name: str) -> bool:
    return name.endswith("head.bias")


def test_classifier_passes_fp32_with_its_checks_per_output(classifier, tmp_path):
    code, model = parity(classifier, "cls", tmp_path / "r.json")
    assert code == 0, model
    assert [c["name"] for c in model["checks"]] == [
        "raw_cosine[logits]", "raw_max_rel[logits]", "sanity_item_spread[logits]", "sanity_identical_pairs[logits]",
        "sanity_map_spread[logits]", "sanity_classes[logits]", "preprocess_floor_max_rel[logits]",
        "row_cosine_min[logits]", "argmax_agreement[logits]",
        "argmax_plain_agreement[logits]", "top3_overlap[logits]", "batch1_vs_max[logits]", "batch4_vs_max[logits]"]
    argmax = next(c for c in model["checks"] if c["name"] == "argmax_agreement[logits]")
    assert argmax["value"] == 1.0 and "32 rows of 10 classes" in argmax["detail"]


def test_a_shifted_bias_fails_max_rel_alone(classifier, tmp_path):
    """Every logit moves by 5e-4 (max |logit| ~1.5): ranks and cosines keep, the relative error does not."""
    planted_copy(classifier, tmp_path, "cls", lambda n, a: a + 5e-4 if head_bias(n) else None)
    code, model = parity(tmp_path / "artifacts", "cls", tmp_path / "r.json")
    assert code == 1
    assert failing(model) == {"raw_max_rel[logits]"}


def test_two_swapped_classes_fail_argmax_and_topk(classifier, tmp_path):
    """Classes 0 and 3 trade their head rows (an export that permuted the classes)."""
    def swap(name, array):
        if not (name.endswith("head.weight") or head_bias(name)):
            return None
        array[[0, 3]] = array[[3, 0]]
        return array

    planted_copy(classifier, tmp_path, "cls", swap)
    code, model = parity(tmp_path / "artifacts", "cls", tmp_path / "r.json")
    assert code == 1
    assert failing(model) == {"argmax_agreement[logits]", "top3_overlap[logits]", "row_cosine_min[logits]",
                              "raw_cosine[logits]", "raw_max_rel[logits]"}


@pytest.mark.parametrize(("field", "limit"), [("max_abs", 2e-6), ("max_rel", 1e-6)])
def test_a_declared_limit_is_checked_for_that_output(classifier, tmp_path, field, limit):
    """The spec tightens one limit for the logits at fp32: a 1e-5 shift of every logit passes the
    tier (raw max_rel 1e-4) but fails the declared limit, whose reason names the spec path."""
    copy = planted_copy(classifier, tmp_path, "cls", lambda n, a: a + 1e-5 if head_bias(n) else None)
    edit_export_spec(copy, lambda s: s["postprocess"]["outputs"]["logits"].update(
        tolerances={"fp32": {field: limit}}))
    code, model = parity(tmp_path / "artifacts", "cls", tmp_path / "r.json")
    assert code == 1
    name = {"max_abs": "max_abs[logits]", "max_rel": "raw_max_rel[logits]"}[field]
    assert failing(model) == {name}
    check = next(c for c in model["checks"] if c["name"] == name)
    assert check["reason"] == f"spec: postprocess.outputs.logits.tolerances.fp32.{field}"


def test_a_declared_max_rel_can_loosen_the_tier_for_that_output(classifier, tmp_path):
    """The 5e-4 bias shift that fails the fp32 tier (see above) passes once the spec declares a
    max rel above what it measures; the check then reports the spec's limit and reason."""
    copy = planted_copy(classifier, tmp_path, "cls", lambda n, a: a + 5e-4 if head_bias(n) else None)
    edit_export_spec(copy, lambda s: s["postprocess"]["outputs"]["logits"].update(
        tolerances={"fp32": {"max_rel": 1e-2}}))
    code, model = parity(tmp_path / "artifacts", "cls", tmp_path / "r.json")
    assert code == 0, failing(model)
    check = next(c for c in model["checks"] if c["name"] == "raw_max_rel[logits]")
    assert check["limit"] == 1e-2 and 1e-4 < check["value"] < 1e-2
    assert check["reason"] == "spec: postprocess.outputs.logits.tolerances.fp32.max_rel"


def test_two_outputs_are_judged_apart(two_heads, tmp_path):
    code, model = parity(two_heads, "two", tmp_path / "clean.json")
    assert code == 0, model
    names = [c["name"] for c in model["checks"]]
    assert "row_cosine_min[heatmap]" in names and "argmax_agreement[heatmap]" not in names  # values, not scores
    planted_copy(two_heads, tmp_path, "two", lambda n, a: a * 1.01 if n.endswith("dense.weight") else None)
    code, model = parity(tmp_path / "artifacts", "two", tmp_path / "r.json")
    assert code == 1
    assert failing(model) == {"raw_max_rel[heatmap]", "raw_cosine[heatmap]", "row_cosine_min[heatmap]"}


def test_an_output_depending_on_its_batch_mates_fails_batch_equivalence(tmp_path):
    export(tmp_path, "batch_coupled", tensors_spec("coupled"))
    code, model = parity(tmp_path / "artifacts", "coupled", tmp_path / "r.json", "--eval-size", "12")
    assert code == 1
    assert {"batch1_vs_max[logits]", "batch4_vs_max[logits]"} <= failing(model)


def test_parity_scales_batch_quantities_by_the_outputs_largest_value():
    from batchforge.parity.tensors import TensorsParity
    from batchforge.runtime.pipelines.tensors import TensorsResult
    from batchforge.runtime.post.tensors import OutputKind

    results = [TensorsResult(str(i), {"x": np.array([v, -2 * v], np.float32)}, {"x": OutputKind.VALUES})
               for i, v in enumerate((100.0, 50.0))]
    (quantity,) = TensorsParity().batch_quantities(results).values()
    np.testing.assert_allclose(quantity, [[0.5, -1.0], [0.25, -0.5]])
