"""tensors parity: the FP32 reference's own response to its input, judged before agreement.

A model whose output is the same for every input agrees with any engine that reproduces that
constant: the gate says UNINFORMATIVE (a WARNING on stderr, marked in report.md/json, exit 0;
``--strict`` exit 1), never a plain pass. Worst items are named by their source, not an index.
"""

import json

import numpy as np
import pytest
from conftest import coverage_paused
from helpers import export_factory
from user_models import tensors_spec

from batchforge.cli import main
from batchforge.parity.report import ModelReport, to_markdown
from batchforge.parity.sanity import sanity_checks
from batchforge.parity.tensors import plain_argmax_check, score_checks, value_checks
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.images import write_image
from batchforge.runtime.post.tensors import OutputKind
from batchforge.tolerances import limits_for

FACTORIES = ("constant_logits", "tiny_classifier")
TRUSTED = [arg for f in FACTORIES for arg in ("--factory", f"user_models:{f}")]


def export(root, factory: str, name: str) -> None:
    with coverage_paused():
        assert export_factory(root, factory, tensors_spec(name)) == 0


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    root = tmp_path_factory.mktemp("constant")
    export(root, "constant_logits", "const")
    return root / "artifacts"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    export(root, "tiny_classifier", "cls")
    return root / "artifacts"


def run_parity(artifacts, name, report, capsys, *extra):
    capsys.readouterr()
    code = main(["parity", name, "--output-dir", str(artifacts), "--report", str(report), "--eval-size", "8",
                 *TRUSTED, *extra])
    out, err = capsys.readouterr()
    return code, json.loads(report.read_text()), out, err


def test_a_constant_model_is_uninformative_warned_and_exits_0(constant, tmp_path, capsys):
    code, report, out, err = run_parity(constant, "const", tmp_path / "r.json", capsys)
    assert code == 0
    assert report["verdict"] == "UNINFORMATIVE" and report["exit_code"] == 0
    (model,) = report["reports"]
    assert model["status"] == "UNINFORMATIVE"
    flagged = {c["name"] for c in model["checks"] if c["result"] == "UNINFORMATIVE"}
    assert flagged == {"sanity_item_spread[logits]", "sanity_identical_pairs[logits]", "sanity_classes[logits]"}
    # every agreement check passes: the engine reproduces the constant
    assert all(c["passed"] for c in model["checks"] if c["role"] == "agreement")
    spread = next(c for c in model["checks"] if c["name"] == "sanity_item_spread[logits]")
    assert spread["value"] < 1e-6 and spread["role"] == "sanity"
    pairs = next(c for c in model["checks"] if c["name"] == "sanity_identical_pairs[logits]")
    assert pairs["value"] == 1.0 and "28 of 28 item pairs" in pairs["detail"]
    assert ("WARNING: const [fp32] UNINFORMATIVE: the FP32 reference gives (nearly) the same output for "
            "different inputs: sanity_item_spread[logits] = 0") in err
    assert "agreement with a reference that does not respond to its input proves little" in err
    assert "parity --strict makes this exit 1" in err
    assert "parity UNINFORMATIVE: 0/1 model/precision runs passed, 1 UNINFORMATIVE" in out
    assert "parity PASSED" not in out
    md = (tmp_path / "r.md").read_text()
    assert "| const | fp32 | onnxruntime | sanity_item_spread[logits] | 0 | >= 0.001 | **UNINFORMATIVE** |" in md
    assert "Warnings:\n- **UNINFORMATIVE** const fp32: the FP32 reference gives (nearly) the same output" in md


def test_strict_makes_an_uninformative_run_exit_1(constant, tmp_path, capsys):
    code, report, out, err = run_parity(constant, "const", tmp_path / "r.json", capsys, "--strict")
    assert code == 1 and report["exit_code"] == 1 and report["strict"] is True
    assert report["verdict"] == "UNINFORMATIVE"
    assert "WARNING: const [fp32] UNINFORMATIVE" in err
    assert "1 UNINFORMATIVE (failed: --strict)" in out


def test_a_responding_model_passes_its_sanity_checks(classifier, tmp_path, capsys):
    code, report, out, err = run_parity(classifier, "cls", tmp_path / "r.json", capsys, "--strict")
    assert code == 0 and report["verdict"] == "PASSED", out
    (model,) = report["reports"]
    sanity = {c["name"]: c for c in model["checks"] if c["role"] == "sanity"}
    assert set(sanity) == {"sanity_item_spread[logits]", "sanity_identical_pairs[logits]",
                           "sanity_map_spread[logits]", "sanity_classes[logits]"}
    assert all(c["passed"] for c in sanity.values()) and sanity["sanity_classes[logits]"]["value"] >= 2
    assert "WARNING" not in err


def test_an_uninformative_reference_never_hides_a_failed_check():
    from batchforge.parity.report import Check
    from batchforge.tolerances import at_least

    report = ModelReport("m", "fp32", "onnxruntime", checks=[
        Check("raw_cosine[o]", 0.5, at_least(0.99, "x")),
        Check("sanity_classes[o]", 1.0, at_least(2.0, "x"), role="sanity")])
    assert report.status == "FAILED" and not report.agrees and not report.passed


def test_the_worst_item_is_named_by_its_file(classifier, tmp_path, capsys):
    """Six photographs in a folder; the gate's per-item checks name the worst one by file name."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(5)
    names = ["00_sun.png", "01_tree.png", "02_car.png", "03_cat.png", "04_sea.png", "05_moon.png"]
    for name in names:
        write_image(photos / name, rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    code, report, out, _ = run_parity(classifier, "cls", tmp_path / "r.json", capsys, "--data", str(photos))
    assert code == 0, out
    (model,) = report["reports"]
    row = next(c for c in model["checks"] if c["name"] == "row_cosine_min[logits]")
    assert "min over 6 items (worst " in row["detail"] and "(item " not in row["detail"]
    worst = row["detail"].split("(worst ")[1].split(")")[0]
    assert worst in names


def test_value_checks_name_the_worst_item_by_source():
    names = ["00_sun.png", "01_tree.png", "02_car.png", "03_cat.png", "04_sea.png", "05_moon.png"]
    ref = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    eng = ref.copy()
    eng[5] += np.random.default_rng(1).normal(0, 0.1, 10).astype(np.float32)  # item 5 moves
    limits = {**limits_for("tensors", Precision.FP32), "max_abs": limits_for("tensors", Precision.FP32)["raw_max_rel"]}
    row, max_abs = value_checks("logits", ref, eng, limits, [f"/data/photos/{n}" for n in names])
    assert not row.passed and "(worst 05_moon.png)" in row.detail
    assert "worst 05_moon.png" in max_abs.detail


def test_plain_and_tie_aware_argmax_are_both_in_the_report():
    """Rows 0-1 of the reference tie their two best classes (within the fp32 score_tie); the engine
    picks the other class of the tie: tie-aware agreement 1.0 decides, plain 0.5 is shown beside it."""
    ref = np.array([[2.0, 2.0, 0.0], [1.0, 1.0 + 1e-7, 0.0], [0.0, 3.0, 1.0], [5.0, 0.0, 1.0]], np.float32)
    eng = np.array([[1.9, 2.0, 0.0], [1.0 + 2e-7, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 0.0, 1.0]], np.float32)
    sources = ["a.png", "b.png", "c.png", "d.png"]
    limits = limits_for("tensors", Precision.FP32)
    checks = score_checks("logits", ref, eng, limits, 2, sources)
    checks += plain_argmax_check("logits", ref, eng, limits, sources)
    by_name = {c.name: c for c in checks}
    tie_aware, plain = by_name["argmax_agreement[logits]"], by_name["argmax_plain_agreement[logits]"]
    assert tie_aware.value == 1.0 and tie_aware.passed
    assert plain.value == 0.5 and plain.role == "shown" and plain.result == "shown (not judged)"
    assert "2 of 4 rows pick another class than the reference's argmax; first a.png: reference class 0, engine 1" \
        in plain.detail
    assert "0 rows disagree" in tie_aware.detail
    eng[3] = [0.0, 1.0, 6.0]  # d.png: the engine's best is no tied best of the reference
    worse = {c.name: c for c in score_checks("logits", ref, eng, limits_for("tensors", Precision.FP32), 2, sources)}
    assert worse["argmax_agreement[logits]"].value == 0.75
    assert "1 rows disagree; first d.png: reference class 0, engine 2" in worse["argmax_agreement[logits]"].detail
    assert worse["top2_overlap[logits]"].detail.endswith("; worst d.png")
    md = to_markdown([ModelReport("m", "fp32", "onnxruntime", checks=checks)])
    assert "| argmax_agreement[logits] | 1 | >= 1 | pass |" in md
    assert "| argmax_plain_agreement[logits] | 0.5 | >= 1 | shown (not judged) |" in md


def test_sanity_of_a_single_class_set_and_of_a_constant_map():
    sources = [f"s{i}" for i in range(4)]
    logits = np.tile(np.array([[0.0, 3.0, 1.0]], np.float32), (4, 1)) + np.arange(4, dtype=np.float32)[:, None] * 0.1
    checks = {c.name: c for c in sanity_checks("logits", logits, OutputKind.LOGITS, sources)}
    assert checks["sanity_classes[logits]"].value == 1.0 and not checks["sanity_classes[logits]"].passed
    assert "class 1 on 4 rows" in checks["sanity_classes[logits]"].detail
    assert checks["sanity_item_spread[logits]"].passed  # the values respond, the decision does not
    flat = np.stack([np.full((1, 4, 4), v, np.float32) for v in (0.1, 0.2, 0.3, 0.4)])
    checks = {c.name: c for c in sanity_checks("map", flat, OutputKind.VALUES, sources)}
    assert checks["sanity_map_spread[map]"].value == 0.0 and not checks["sanity_map_spread[map]"].passed
    assert "4 of 4 items nearly constant" in checks["sanity_map_spread[map]"].detail
