"""The tensors family's options, item checks, side file and tie-aware score checks (no export)."""

import json

import numpy as np
import pytest
from helpers import readme_blocks

from batchforge.errors import ConfigError, InputValidationError
from batchforge.parity.tensors import output_limits, score_checks
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.pipelines.tensors import SideArrays, TensorsPipeline, check_item_feed
from batchforge.runtime.post.tensors import OutputKind, TensorsOptions
from batchforge.runtime.spec import ModelSpec, parse_options
from batchforge.tolerances import TOLERANCES, Limit


def spec(**postprocess) -> ModelSpec:
    return ModelSpec.from_dict({
        "name": "m", "family": "tensors",
        "inputs": [{"name": "image", "shape": ["batch", 3, 4, 4]}, {"name": "mask", "shape": ["batch", 1, 4, 4]}],
        "outputs": ["logits", "map"], "profile": {"min": 1, "opt": 2, "max": 4},
        "preprocess": {"height": 4, "width": 4}, "postprocess": postprocess})


def parse(data):
    return parse_options(TensorsOptions, data, "tensors postprocess options")


def test_options_parse_kinds_and_per_precision_tolerances():
    opts = parse({"outputs": {"logits": {"kind": "logits", "tolerances": {"int8": {"min_cosine": 0.9}}}},
                  "top_k": 2})
    assert opts.output("logits").kind is OutputKind.LOGITS and opts.top_k == 2
    assert opts.output("logits").tolerances.int8.min_cosine == 0.9
    assert opts.output("logits").tolerances.fp32 is None
    assert opts.output("map").kind is OutputKind.VALUES  # not named: values


def test_unknown_keys_and_wrong_values_are_each_named():
    with pytest.raises(ConfigError) as info:
        parse({"outputs": {"logits": {"kind": "logit", "tolerence": {},
                                      "tolerances": {"fp16": {"max_rel": -1, "cos": 1}, "bf16": {}}}},
               "top_k": 0})
    problems = info.value.problems
    assert "unknown key 'outputs.logits.tolerence'" in problems
    assert ("outputs.logits.kind: expected one of 'values', 'logits', 'probabilities', 'probability_map', "
            "'boxes_scores', got str 'logit'") in problems
    assert "outputs.logits.tolerances.fp16.max_rel: expected a number >= 0, got -1.0" in problems
    assert "unknown key 'outputs.logits.tolerances.bf16'" in problems
    assert "unknown key 'outputs.logits.tolerances.fp16.cos'" in problems
    assert "top_k: expected an integer >= 1, got 0" in problems
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        parse({"topk": 3})


def test_options_naming_an_output_the_model_lacks_are_refused():
    with pytest.raises(ConfigError, match=r"name outputs \['logit'\] that model 'm' does not have; its outputs: "
                                          r"\['logits', 'map'\]"):
        TensorsPipeline(spec(outputs={"logit": {"kind": "logits"}}), runner=None)


def test_a_spec_tolerance_replaces_the_tier_for_that_output_and_precision():
    opts = parse({"outputs": {"logits": {"tolerances": {"int8": {"min_cosine": 0.9, "max_abs": 0.5}}}}})
    tier = TOLERANCES["tensors"][Precision.INT8]
    merged = output_limits(tier, opts.output("logits"), "logits", Precision.INT8)
    assert merged["row_cosine"] == Limit(0.9, "min", "spec: postprocess.outputs.logits.tolerances.int8.min_cosine")
    assert merged["max_abs"].value == 0.5 and merged["max_abs"].kind == "max"
    assert merged["argmax_agreement"] is tier["argmax_agreement"]
    assert output_limits(tier, opts.output("logits"), "logits", Precision.FP16) == tier  # other precision
    assert output_limits(tier, opts.output("map"), "map", Precision.INT8) == tier  # other output


def test_item_feeds_are_checked_by_name_dtype_and_shape_without_casting():
    s = spec()
    image, mask = np.zeros((3, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32)
    check_item_feed({"image": image, "mask": mask}, s, "ok")
    with pytest.raises(InputValidationError) as info:
        check_item_feed({"image": image}, s, "a.png", from_image=True)
    text = info.value.one_line()
    assert ("a.png: model 'm' takes inputs ['image', 'mask'], this item gives an image for 'image' "
            "(missing ['mask'])") in text
    assert "one .npz per item with one array per input name" in text
    with pytest.raises(InputValidationError, match=r"this item gives arrays \['image'\] \(missing \['mask'\]\)"):
        check_item_feed({"image": image}, s, "a.npz")
    with pytest.raises(InputValidationError, match=r"gives an image for 'image' and arrays \['label'\] "
                                                   r"\(missing \['mask'\]\) \(unexpected \['label'\]\)"):
        check_item_feed({"image": image, "label": mask}, s, "a.png", from_image=True)
    for feed, expected in (
        ({"image": image, "mask": mask.astype(np.float64)},
         "b.npz: input 'mask' is float32, the item's array is float64 (convert it explicitly (array.astype("
         "np.float32)); nothing is cast silently)"),
        ({"image": image, "mask": mask[None]},
         "b.npz: input 'mask' expects one item of shape (1, 4, 4), the item's array has shape (1, 1, 4, 4) "
         "(items carry no batch dim: drop the leading 1)"),
        ({"image": mask, "mask": image},
         "b.npz: input 'image' expects one item of shape (3, 4, 4), the item's array has shape (1, 4, 4) "
         "(check which array belongs to which input)"),
    ):
        with pytest.raises(InputValidationError) as info:
            check_item_feed(feed, s, "b.npz")
        assert info.value.one_line() == expected


def test_side_file_appears_only_on_commit_and_a_stale_one_goes(tmp_path):
    path = tmp_path / "r.outputs.npz"
    aborted = SideArrays(path)
    aborted.add("line000000/map", np.ones((2, 3), np.float32))
    aborted.close(commit=False)
    assert list(tmp_path.iterdir()) == []
    written = SideArrays(path)
    written.add("line000001/map", np.arange(6, dtype=np.float32).reshape(2, 3))
    written.close(commit=True)
    with np.load(path) as npz:
        assert npz.files == ["line000001/map"]
        np.testing.assert_array_equal(npz["line000001/map"], [[0, 1, 2], [3, 4, 5]])
    SideArrays(path).close(commit=True)  # a later run with only small outputs
    assert list(tmp_path.iterdir()) == []


def _limits(tie: float) -> dict:
    return {"score_tie": Limit(tie, "max", "t"), "argmax_agreement": Limit(1.0, "min", "t"),
            "topk_overlap": Limit(1.0, "min", "t")}


def test_argmax_and_topk_count_reference_ties_as_agreement():
    # row 0: classes 0 and 1 tie (5.0 vs 5.0 - 1e-7); row 1: a clear winner
    ref = np.array([[5.0, 5.0 - 1e-7, 1.0, 0.0, -1.0], [0.0, 3.0, 2.0, 1.0, -1.0]])
    picks_tied = np.array([[4.9, 5.0, 1.0, 0.0, -1.0], [0.0, 3.0, 2.0, 1.0, -1.0]])
    argmax, top2 = score_checks("logits", ref, picks_tied, _limits(1e-6), 2)
    assert (argmax.name, argmax.value, argmax.passed) == ("argmax_agreement[logits]", 1.0, True)
    assert "1 rows at top-1 (largest 2-way)" in argmax.detail
    assert (top2.name, top2.value) == ("top2_overlap[logits]", 1.0)
    # the same engine with a tie margin too small to cover the 1e-7 gap disagrees on row 0
    argmax, _ = score_checks("logits", ref, picks_tied, _limits(1e-9), 2)
    assert argmax.value == 0.5 and not argmax.passed
    # row 1 ranks class 3 above class 2: top-2 is {1, 3} against {1, 2}
    swapped = np.array([[5.0, 4.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 2.0, -1.0]])
    argmax, top2 = score_checks("logits", ref, swapped, _limits(1e-9), 2)
    assert argmax.value == 1.0 and top2.value == 0.75 and not top2.passed


def test_no_topk_check_when_k_covers_every_class():
    ref = np.array([[1.0, 2.0, 3.0]])
    assert [c.name for c in score_checks("p", ref, ref, _limits(1e-6), 3)] == ["argmax_agreement[p]"]


def test_the_readme_tensors_spec_is_valid():
    (block,) = [b for b in readme_blocks("json") if '"family": "tensors"' in b]
    readme = ModelSpec.from_dict(json.loads(block))
    pipeline = TensorsPipeline(readme, runner=None)
    assert [t.name for t in readme.inputs] == ["image", "mask"]
    assert pipeline.options.output("logits").tolerances.int8.argmax_agreement == 0.97


def test_non_finite_or_large_outputs_never_go_into_the_line():
    from batchforge.runtime.pipelines.tensors import TensorsResult
    from batchforge.runtime.results import jsonable

    outputs = {"small": np.array([1.0, 2.0], np.float32), "nan": np.array([np.nan], np.float32),
               "large": np.zeros(65, np.float32)}
    record = jsonable(TensorsResult("x", outputs, {"small": OutputKind.LOGITS}, top_k=1).to_record()["outputs"])
    assert record["small"] == {"shape": [2], "dtype": "float32", "values": [1.0, 2.0],
                               "top": [{"index": 1, "score": 2.0}]}
    assert record["nan"] == {"shape": [1], "dtype": "float32", "npz": None}  # JSON has no NaN
    assert record["large"] == {"shape": [65], "dtype": "float32", "npz": None}  # no side file placed
