"""tensors parity: output kinds a spec declares (probability_map, boxes_scores), the preprocessing
floor, and the spec errors of their options. Each kind's checks fail by name on a planted fault
and do not fail where the generic checks misjudge the output."""

import json
import shutil

import numpy as np
import pytest
from conftest import coverage_paused
from helpers import edit_export_spec, export_factory, planted_copy
from user_models import BACKGROUND_ANCHOR, map_items

from batchforge.cli import main
from batchforge.errors import ConfigError
from batchforge.parity.preprocess_floor import OutputFloor, floored
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.post.tensors import TensorsOptions
from batchforge.tolerances import limits_for

FACTORIES = ("near_empty_map", "boxes_scores")
TRUSTED = [arg for f in FACTORIES for arg in ("--factory", f"user_models:{f}")]
BOXES = {"kind": "boxes_scores", "box_channels": [0, 4], "score_channels": [4, 5], "score_threshold": 0.3}


def export(root, factory: str, spec: dict) -> ModelArtifacts:
    with coverage_paused():
        assert export_factory(root, factory, spec) == 0
    return ModelArtifacts.at(root / "artifacts", spec["name"])


def spec(name: str, shape: list, output: str, options: dict) -> dict:
    return {"name": name, "family": "tensors",
            "inputs": [{"name": "x", "shape": ["batch", *shape], "dtype": "float32"}],
            "outputs": [output], "profile": {"min": 1, "opt": 4, "max": 8},
            "postprocess": {"outputs": {output: options}}}


@pytest.fixture(scope="module")
def text_map(tmp_path_factory):
    """The near-empty map model, exported and converted to fp16 (on other items than parity's)."""
    root = tmp_path_factory.mktemp("text_map")
    artifacts = export(root, "near_empty_map", spec("textmap", [1, 16, 16], "map", {"kind": "probability_map"}))
    np.savez(root / "held_out.npz", x=map_items(8))
    np.savez(root / "calib.npz", x=map_items(8)[::-1].copy())
    assert main(["convert", "textmap", "--output-dir", str(artifacts.dir.parent),
                 "--data", str(root / "calib.npz")]) == 0
    return root


@pytest.fixture(scope="module")
def anchors(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchors")
    export(root, "boxes_scores", spec("anchors", [12, 6], "head", BOXES))
    return root / "artifacts"


def parity(artifacts, name, report, *extra) -> tuple[int, list[dict]]:
    code = main(["parity", name, "--output-dir", str(artifacts), "--report", str(report), *TRUSTED, *extra])
    return code, json.loads(report.read_text())["reports"]


def failing(run: dict) -> set[str]:
    return {c["name"] for c in run["checks"] if not c["passed"]}


def check(run: dict, name: str) -> dict:
    return next(c for c in run["checks"] if c["name"] == name)


def test_a_near_empty_probability_map_passes_fp32_and_fp16(text_map, tmp_path):
    code, runs = parity(text_map / "artifacts", "textmap", tmp_path / "r.json", "--precision", "fp32,fp16",
                        "--data", str(text_map / "held_out.npz"))
    assert code == 0, [failing(r) for r in runs]
    for run in runs:
        names = [c["name"] for c in run["checks"]]
        assert {"map_cosine_min[map]", "map_max_abs[map]", "map_iou_min[map]"} <= set(names)
        assert "row_cosine_min[map]" not in names  # per-item cosine over ~1e-11 background is noise
        cosine = check(run, "map_cosine_min[map]")
        assert "4 items judged, 4 with no element above the floor" in cosine["detail"]
        assert "held_out.npz[" in cosine["detail"]


def test_the_same_map_judged_as_plain_values_fails_on_its_empty_items(text_map, tmp_path):
    """Why the kind exists: declared ``values``, the empty items' per-item cosine (reference ~1.4e-11
    everywhere, the engine's sigmoid 0) fails fp32 and fp16 though nothing is wrong."""
    shutil.copytree(text_map / "artifacts", tmp_path / "artifacts")
    edit_export_spec(ModelArtifacts.at(tmp_path / "artifacts", "textmap"),
                     lambda s: s["postprocess"]["outputs"]["map"].update(kind="values"))
    code, runs = parity(tmp_path / "artifacts", "textmap", tmp_path / "r.json", "--precision", "fp32,fp16",
                        "--data", str(text_map / "held_out.npz"))
    assert code == 1 and [failing(r) for r in runs] == [{"row_cosine_min[map]"}] * 2
    assert "(worst held_out.npz[0])" in check(runs[0], "row_cosine_min[map]")["detail"]


def test_a_map_whose_region_the_engine_zeroes_fails_the_map_checks(text_map, tmp_path):
    planted_copy(text_map / "artifacts", tmp_path, "textmap", lambda n, a: a * 0.0 if n == "conv.weight" else None)
    code, (run,) = parity(tmp_path / "artifacts", "textmap", tmp_path / "r.json",
                          "--data", str(text_map / "held_out.npz"))
    assert code == 1
    assert failing(run) == {"raw_cosine[map]", "raw_max_rel[map]", "map_cosine_min[map]", "map_max_abs[map]",
                            "map_iou_min[map]"}
    iou = check(run, "map_iou_min[map]")
    assert iou["value"] == 0.0 and "engine 0," in iou["detail"] and "held_out.npz[" in iou["detail"]


def test_a_map_weakened_under_its_threshold_fails_iou_by_name(text_map, tmp_path):
    """The engine's map moves down (conv weight x0.8): the blob's weaker elements fall under 0.3."""
    planted_copy(text_map / "artifacts", tmp_path, "textmap", lambda n, a: a * 0.8 if n == "conv.weight" else None)
    code, (run,) = parity(tmp_path / "artifacts", "textmap", tmp_path / "r.json",
                          "--data", str(text_map / "held_out.npz"))
    assert code == 1 and "map_iou_min[map]" in failing(run) and "map_max_abs[map]" in failing(run)
    assert check(run, "map_iou_min[map]")["value"] < 0.99


def test_boxes_and_scores_pass_fp32(anchors, tmp_path):
    code, (run,) = parity(anchors, "anchors", tmp_path / "r.json")
    assert code == 0, failing(run)
    assert [c["name"] for c in run["checks"] if c["name"].split("[")[0] in ("box_px", "score_abs",
            "score_threshold_flips")] == ["box_px[head]", "score_abs[head]", "score_threshold_flips[head]"]
    assert check(run, "raw_max_rel[head]")["detail"].endswith("score channels [4, 5] only")


def test_scores_pushed_under_the_threshold_fail_by_that_check(anchors, tmp_path):
    planted_copy(anchors, tmp_path, "anchors", lambda n, a: a - 0.6 if n == "score.bias" else None)
    code, (run,) = parity(tmp_path / "artifacts", "anchors", tmp_path / "r.json")
    assert code == 1
    assert failing(run) == {"score_threshold_flips[head]", "score_abs[head]", "raw_max_rel[head]", "raw_cosine[head]"}
    flips = check(run, "score_threshold_flips[head]")
    assert flips["value"] > 0 and "dropped under 0.3, 0 raised over it" in flips["detail"]
    assert "worst synthetic00" in flips["detail"] and "score channel 0: reference" in flips["detail"]
    assert check(run, "box_px[head]")["passed"]


def test_a_large_box_error_on_a_background_anchor_does_not_dominate(anchors, tmp_path):
    """143 px on the box of an anchor the reference never scores above 1e-5: no box of it is used."""
    def shift(name, array):
        if name != "anchor_box":
            return None
        array[BACKGROUND_ANCHOR] += 143.0
        return array

    copy = planted_copy(anchors, tmp_path, "anchors", shift)
    code, (run,) = parity(tmp_path / "artifacts", "anchors", tmp_path / "r.json")
    assert code == 0, failing(run)
    assert check(run, "box_px[head]")["value"] < 1e-3
    # the same fault, the tensor declared plain values: the background box dominates raw max_rel
    edit_export_spec(copy, lambda s: s["postprocess"]["outputs"]["head"].update(
        kind="values", box_channels=None, score_channels=None))
    code, (run,) = parity(tmp_path / "artifacts", "anchors", tmp_path / "r2.json")
    assert code == 1 and "raw_max_rel[head]" in failing(run)


@pytest.mark.parametrize(("options", "problem"), [
    ({"kind": "boxes_scores", "box_channels": [0, 4]}, "outputs.head.score_channels: a boxes_scores output needs it"),
    ({**BOXES, "score_channels": [3, 5]}, "outputs.head.box_channels [0, 4] and score_channels [3, 5] overlap"),
    ({**BOXES, "box_channels": [0]}, "outputs.head.box_channels: expected a list of 2 integers or null, got list [0]"),
    ({"kind": "probability_map", "threshold": 1.5}, "outputs.head.threshold: expected a number between 0 and 1"),
    ({"kind": "probability_map", "floor": 0.5}, "outputs.head.floor: expected a number >= 0 below threshold 0.3"),
    ({"kind": "probability_map", "thresh": 0.5}, "unknown key 'outputs.head.thresh'"),
])
def test_kind_options_are_checked_by_path(options, problem):
    with pytest.raises(ConfigError) as caught:
        TensorsOptions(outputs={"head": options})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_channel_ranges_past_the_output_are_refused_naming_it(anchors, tmp_path):
    shutil.copytree(anchors, tmp_path / "artifacts")
    edit_export_spec(ModelArtifacts.at(tmp_path / "artifacts", "anchors"),
                     lambda s: s["postprocess"]["outputs"]["head"].update(score_channels=[4, 7]))
    code = main(["parity", "anchors", "--output-dir", str(tmp_path / "artifacts"), "--report",
                 str(tmp_path / "r.json"), *TRUSTED])
    (run,) = json.loads((tmp_path / "r.json").read_text())["reports"]
    assert code == 2
    assert ("output 'head': box_channels [0, 4] and score_channels [4, 7] need 7 channels on the last axis, "
            "the output has 5 (shape (12, 5) per item)") in run["error"]


def test_the_preprocessing_floor_raises_only_limits_it_exceeds():
    tier = limits_for("tensors", Precision.FP32)
    above = OutputFloor(max_abs=1e-3, max_rel=1.9e-4, cosine=0.999995, row_cosine=0.99998, engine_max_rel=4.4e-5)
    limits, raised = floored(tier, above)
    assert raised == ["raw_max_rel", "row_cosine"]
    assert limits["raw_max_rel"].value == pytest.approx(1.9e-4 + 1e-4)
    assert limits["raw_max_rel"].reason.startswith("preprocessing floor 0.00019 + 0.0001")
    assert limits["row_cosine"].value == pytest.approx(1 - (2e-5 + 1e-5))
    assert limits["raw_cosine"] is tier["raw_cosine"]  # 5e-6 below the floor's 1e-5: kept
    below = OutputFloor(max_abs=1e-8, max_rel=1e-7, cosine=1.0, row_cosine=1.0, engine_max_rel=1e-7)
    limits, raised = floored(tier, below)
    assert raised == [] and limits == tier  # never loosened when the floor is lower


def test_the_preprocessing_floor_is_reported_for_image_inputs(tmp_path):
    from user_models import tensors_spec

    export(tmp_path, "tiny_classifier", tensors_spec("cls"))
    code = main(["parity", "cls", "--output-dir", str(tmp_path / "artifacts"), "--report", str(tmp_path / "r.json"),
                 "--eval-size", "8", "--factory", "user_models:tiny_classifier"])
    (run,) = json.loads((tmp_path / "r.json").read_text())["reports"]
    assert code == 0
    floor = check(run, "preprocess_floor_max_rel[logits]")
    assert floor["role"] == "shown" and 0 < floor["value"] < 1e-4
    assert "the engine against the reference on the runtime's input: max_rel" in floor["detail"]
    assert floor["detail"].endswith("every limit stays (the floor is within them)")


def test_a_declared_limit_below_the_preprocessing_floor_is_raised_to_it(tmp_path):
    """The identity's engine error is 0, so its raw max_rel is the floor itself (torch's resize
    against the runtime's, ~1.8e-7 on the sample images): a declared fp32 max_rel of 1e-9 would fail
    every engine; it becomes floor + 1e-9, and the report says so."""
    from user_models import tensors_spec

    declared = {"outputs": {"out": {"tolerances": {"fp32": {"max_rel": 1e-9}}}}}
    export(tmp_path, "scaled_identity", tensors_spec("ident", ("out",), postprocess=declared))
    code = main(["parity", "ident", "--output-dir", str(tmp_path / "artifacts"), "--report", str(tmp_path / "r.json"),
                 "--eval-size", "8", "--factory", "user_models:scaled_identity"])
    (run,) = json.loads((tmp_path / "r.json").read_text())["reports"]
    assert code == 0, failing(run)
    floor, raw = check(run, "preprocess_floor_max_rel[out]"), check(run, "raw_max_rel[out]")
    assert floor["value"] > 1e-9 and raw["value"] == pytest.approx(floor["value"])
    assert raw["limit"] == pytest.approx(floor["value"] + 1e-9)
    assert raw["reason"].startswith("preprocessing floor ") and "spec: postprocess.outputs.out" in raw["reason"]
    assert "the engine against the reference on the runtime's input: max_rel 0;" in floor["detail"]
    assert floor["detail"].endswith("limits set to floor + limit: raw_max_rel")
