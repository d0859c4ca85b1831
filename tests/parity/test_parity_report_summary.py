"""report.md starts with one row per model and precision: status, checks passed, and the check
nearest its limit (or furthest past it), before the per-check detail."""

import math

from batchforge.parity.report import SANITY, SHOWN, Check, ModelReport, room_used, to_markdown, worst_check
from batchforge.tolerances import at_least, at_most


def test_room_used_for_maxima_cosines_and_counts():
    assert room_used(Check("raw_max_rel[y]", 0.05, at_most(0.25, "t"))) == 0.2
    assert math.isclose(room_used(Check("raw_cosine[y]", 0.99, at_least(0.98, "t"))), 0.5)
    assert room_used(Check("raw_cosine[y]", 1.0000001, at_least(0.98, "t"))) == 0.0
    assert room_used(Check("face_recall", 0.45, at_least(0.9, "t"))) > 1  # failed: past its limit
    assert room_used(Check("count", 4.0, at_least(2.0, "t"))) == 0.5
    assert room_used(Check("raw_max_rel[y]", float("nan"), at_most(0.25, "t"))) == math.inf


def test_the_summary_row_names_the_worst_agreement_check_and_counts_judged_checks():
    checks = [Check("raw_cosine[y]", 0.999, at_least(0.98, "t")),
              Check("raw_max_rel[y]", 0.2, at_most(0.25, "t")),  # 80% of its room: the worst passing
              Check("sanity_classes[y]", 1.0, at_least(2.0, "t"), role=SANITY),  # not agreement
              Check("argmax_plain_agreement[y]", 0.5, at_least(1.0, "t"), role=SHOWN)]  # not judged
    passing = ModelReport("m", "int8", "onnxruntime", checks=checks[:2])
    assert worst_check(passing).name == "raw_max_rel[y]"
    failing = ModelReport("m", "fp16", "onnxruntime", checks=[*checks, Check("score_abs_max", 0.5, at_most(0.05, "t"))])
    assert worst_check(failing).name == "score_abs_max"  # 2 of 4 judged pass: the sanity check fails too
    md = to_markdown([passing, failing, ModelReport("n", "fp32", "onnxruntime", error="no engine")])
    head = md.split("## Every check")[0]
    assert "| m | int8 | passed | 2/2 | raw_max_rel[y] = 0.2 (limit <= 0.25, 80%) |" in head
    assert "| m | fp16 | FAILED | 2/4 | score_abs_max = 0.5 (limit <= 0.05, 1000%) |" in head
    assert "| n | fp32 | could not run | 0/0 | could not run: no engine |" in head
    assert md.index("## Summary") < md.index("## Every check") < md.index("| m | int8 | onnxruntime | raw_cosine[y]")
