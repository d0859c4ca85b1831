"""INT8 calibration aims at the gate (calibration/criterion.py): the checks it stops on are the
gate's own for the family, per output and per worst item, at the gate's limits; the search keeps
the fewest nodes FP32 that make them pass."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from test_calibration_ladder import _fragile_model
from user_models import tensors_spec

from batchforge.calibration.criterion import GateCriterion, fewest_passing
from batchforge.calibration.data import CalibrationData
from batchforge.calibration.int8 import Int8Options, calibrate_int8
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.spec import ModelSpec
from batchforge.tolerances import at_least, at_most, limits_for


def _spec(**postprocess) -> ModelSpec:
    return ModelSpec.from_dict(tensors_spec("c", ("logits", "feat"), postprocess=postprocess or None))


def test_tensors_criterion_takes_the_gate_tier_the_spec_overrides_and_the_score_outputs():
    spec = _spec(outputs={"logits": {"kind": "logits", "tolerances": {"int8": {"min_cosine": 0.9, "max_rel": 0.5}}}},
                 top_k=3)
    criterion = GateCriterion.for_spec(spec, Precision.INT8, 0.99)
    tier = limits_for("tensors", Precision.INT8)
    assert criterion.limits["feat"]["row_cosine"] == tier["row_cosine"]
    assert criterion.limits["logits"]["row_cosine"].value == 0.9
    assert criterion.limits["logits"]["raw_max_rel"].value == 0.5
    assert criterion.score_outputs == {"logits": 3} and criterion.row_outputs == ("logits", "feat")
    reid = GateCriterion.for_spec(ModelSpec.from_dict({**tensors_spec("r", ("emb",)), "family": "reid"}),
                                  Precision.INT8, 0.99)
    assert reid.row_limit == "embedding_cosine" and reid.row_outputs == ("emb",)


def _outputs(rng, items=16, classes=10):
    logits = rng.normal(size=(items, classes)).astype(np.float32)
    logits[np.arange(items), rng.integers(0, classes, items)] += 3.0  # a clear winner per row
    feat = rng.uniform(1.0, 2.0, size=(items, 32)).astype(np.float32)
    return [logits[:8], feat[:8]], [logits[8:], feat[8:]]


def test_a_planted_fault_fails_the_check_it_breaks_while_the_mean_cosine_still_passes():
    rng = np.random.default_rng(0)
    criterion = GateCriterion.for_spec(_spec(), Precision.INT8, 0.98)
    ref = _outputs(rng)
    assert criterion.judge(["logits", "feat"], ref, ref).passed

    def planted(edit):
        got = [[a.copy() for a in batch] for batch in ref]
        edit(got)
        return criterion.judge(["logits", "feat"], ref, got)

    def one_feature_off(got):  # one value of one item far off: max_rel, not the mean
        got[1][1][3, 5] += 2.5 * np.abs(ref[1][1]).max()
    verdict = planted(one_feature_off)
    assert "raw_max_rel[feat]" in verdict.failed and verdict.mean_cosine > 0.98
    assert "mean_output_cosine" not in verdict.failed

    def one_item_noisy(got):  # +-0.4 on every feature of one item: its cosine 0.97, the output's 0.998
        got[0][1][2] += 0.4 * np.resize([1.0, -1.0], 32)
    verdict = planted(one_item_noisy)
    assert verdict.failed == ["row_cosine_min[feat]"]

    for row in (0, 1):  # a runner-up 0.1 below the winner (2.5% of the row's largest |value|: no tie)
        winner = int(np.argmax(ref[0][0][row]))
        ref[0][0][row, (winner + 1) % 10] = ref[0][0][row, winner] - 0.1

    def two_argmax_flips(got):  # those two rows' winner and runner-up swapped: argmax agreement only
        for row in (0, 1):
            winner = int(np.argmax(ref[0][0][row]))
            second = (winner + 1) % 10
            got[0][0][row, [winner, second]] = ref[0][0][row, [second, winner]]
    verdict = planted(two_argmax_flips)
    assert verdict.failed == ["argmax_agreement[logits]"]
    assert verdict.as_dict()["failed"]["argmax_agreement[logits]"].startswith("0.875")


def test_fewest_passing_finds_the_smallest_count_by_doubling_and_bisection():
    asked = []

    def needs(n):
        def passes(k):
            asked.append(k)
            return k >= n
        return passes

    assert fewest_passing(16, needs(5)) == 5
    assert asked == [1, 2, 4, 8, 6, 5]  # doubling to 8, then bisection between 4 and 8
    asked.clear()
    assert fewest_passing(16, needs(1)) == 1 and asked == [1]
    asked.clear()
    assert fewest_passing(10, needs(11)) is None and asked == [1, 2, 4, 8, 10]
    assert fewest_passing(0, needs(0)) is None


def _fragile(path):
    """test_calibration_ladder's model: x's column 15 is a 1000x outlier that MatMul "fragile"
    ignores; int8 with one scale for x wipes out the columns it uses."""
    _, items = _fragile_model(np.random.default_rng(0), path)
    return CalibrationData(tuple({"x": a} for a in items), "test", "0" * 64, synthetic=False)


def test_the_search_stops_on_the_gate_checks_not_on_the_mean_cosine(tmp_path):
    """A mean cosine target the all-int8 model already meets keeps no node FP32; the gate's
    worst-item check on the same output fails there, and the search keeps "fragile" FP32."""
    data = _fragile(tmp_path / "m.onnx")
    options = Int8Options(method="minmax", weights="per-channel", target_cosine=0.0, max_excluded=2)
    mean_only = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q0.onnx", data, options)
    assert mean_only["excluded_by_sensitivity"] == [] and mean_only["effect"]["passes_gate_checks"] is True
    gate = GateCriterion({"y": {"raw_cosine": at_least(0.0, "test"), "raw_max_rel": at_most(10.0, "test"),
                                "row_cosine": at_least(0.99, "test")}}, ("y",), "row_cosine", {}, 0.0)
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", data, options, criterion=gate)
    assert list(report["steps"][0]["failed"]) == ["row_cosine_min[y]"]
    assert [s["node"] for s in report["excluded_by_sensitivity"]] == ["fragile"]
    assert report["effect"]["passes_gate_checks"] is True and report["effect"]["failed"] == {}
    assert report["criterion"].endswith("raw_cosine[y], raw_max_rel[y], row_cosine_min[y], mean_output_cosine")


def test_every_method_and_granularity_is_tried_and_the_winner_recorded(tmp_path):
    """One value in 131,072 is a 400-sigma outlier, in a column nothing reads: minmax's scale for x
    covers it and rounds most used values to 0; percentile (99.999th) clips it and keeps them."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4096, 8)).astype(np.float32)
    w[7] = 0.0
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4096])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "m.onnx"))
    items = (rng.normal(size=(32, 4096)) * 0.05).astype(np.float32)
    items[0, 7] = 20.0
    data = CalibrationData(tuple({"x": a} for a in items), "test", "0" * 64, synthetic=False)
    report = calibrate_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", data,
                            Int8Options(method="minmax,percentile", weights="both", max_excluded=0))
    by = {(t["method"], t["weights"]): t for t in report["method_trial"]}
    # tried in order until one passes: percentile per-channel passes, per-tensor is not needed
    assert list(by) == [("minmax", "per-channel"), ("minmax", "per-tensor"), ("percentile", "per-channel")]
    assert by[("minmax", "per-channel")]["mean_cosine"] < 0.8 < 0.999 < by[("percentile", "per-channel")]["mean_cosine"]
    assert not by[("minmax", "per-channel")]["passes_gate_checks"]
    assert report["method"] == "percentile" and report["steps"][0]["passes_gate_checks"] is True
    assert report["steps"][0]["mean_cosine"] == by[("percentile", report["weights"])]["mean_cosine"]


def test_batches_of_different_shapes_are_judged_whole_and_item_by_item():
    """A model with dynamic height and width is calibrated on batches of several sizes (mtcnn's
    P-Net): whole-output checks over the flattened batches, items batch by batch."""
    rng = np.random.default_rng(2)
    criterion = GateCriterion({"m": limits_for("tensors", Precision.INT8)}, ("m",), "row_cosine", {}, 0.9)
    ref = [[rng.uniform(1, 2, size=(2, 1, 17, 17)).astype(np.float32)],
           [rng.uniform(1, 2, size=(3, 1, 11, 11)).astype(np.float32)]]
    got = [[a.copy() for a in batch] for batch in ref]
    assert criterion.judge(["m"], ref, got).passed
    got[1][0][2] *= -1.0  # the fifth item, in the second batch
    verdict = criterion.judge(["m"], ref, got)
    assert "row_cosine_min[m]" in verdict.failed and len(verdict.item_badness) == 5
    assert int(np.argmax(verdict.item_badness)) == 4


def _stage_spec(stage: str) -> ModelSpec:
    outputs = ("offsets", "face_logit", *(("landmarks",) if stage == "onet" else ()))
    return ModelSpec.from_dict({**tensors_spec(f"mtcnn_{stage}", outputs), "family": "mtcnn",
                                "postprocess": {"stage": stage}})


def test_an_mtcnn_stage_is_judged_on_its_face_probability_as_the_gate_judges_it():
    """P-Net int8 passed every raw check at calibration and then failed the gate's
    face_prob_abs_max (0.28 on photographs): the criterion now has the gate's stage checks."""
    rng = np.random.default_rng(1)
    names = ["offsets", "face_logit", "landmarks"]
    criterion = GateCriterion.for_spec(_stage_spec("onet"), Precision.INT8, 0.98)
    assert criterion.mtcnn_stage == "onet"
    ref = [[rng.normal(size=(8, 4)).astype(np.float32), rng.normal(0, 3, size=(8, 1)).astype(np.float32),
            rng.uniform(0, 1, size=(8, 10)).astype(np.float32)] for _ in range(2)]
    clean = criterion.judge(names, ref, ref)
    assert clean.passed and {"face_prob_abs_max", "threshold_agreement", "landmark_crop_px_max"} <= {
        c.name for c in clean.checks}
    got = [[a.copy() for a in batch] for batch in ref]
    # one logit moved by 0.3 near the steepest point of the sigmoid: its probability moves by 0.074
    # (both under O-Net's 0.7) while the logit output's raw checks stay within the int8 tier
    ref[1][1][2, 0], got[1][1][2, 0] = 0.1, 0.4
    verdict = criterion.judge(names, ref, got)
    assert verdict.failed == ["face_prob_abs_max"], verdict.failed
    assert int(np.argmax(verdict.item_badness)) == 10  # batch 2, item 3: the item that moved
    got = [[a.copy() for a in batch] for batch in ref]
    got[0][2][5, 3] += 3.0 / 48  # 3 px of the 48 px crop
    assert criterion.judge(names, ref, got).failed == ["landmark_crop_px_max"]
    pnet = GateCriterion.for_spec(_stage_spec("pnet"), Precision.INT8, 0.98)
    assert [c.name for c in pnet.judge(names[:2], [b[:2] for b in ref], [b[:2] for b in ref]).checks
            if c.name.startswith(("face", "threshold", "landmark"))] == ["face_prob_abs_max", "threshold_agreement"]


def test_small_inputs_are_judged_on_more_items_than_large_ones():
    from batchforge.calibration.int8 import EVAL_ITEMS, eval_items

    def data(shape, count):
        feeds = tuple({"x": np.zeros(shape, np.float32)} for _ in range(count))
        return CalibrationData(feeds, "t", "0" * 64, False)

    assert eval_items(data((3, 224, 224), 100)) == EVAL_ITEMS
    assert eval_items(data((3, 640, 640), 100)) == EVAL_ITEMS  # never fewer than 16
    assert eval_items(data((3, 24, 24), 100)) == 100  # all of them: 100 R-Net crops are 0.17 MB
    assert eval_items(data((3, 24, 24), 5)) == 5
