"""The numeric comparisons the gate is built on."""

import numpy as np

from batchforge.metrics import compare_arrays, rowwise_cosine


def test_rowwise_cosine_does_not_let_a_zero_output_pass():
    ref = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0], [1.0, 0.0]])
    act = np.array([[2.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(rowwise_cosine(ref, act), [1.0, 1.0, 0.0, 0.0])


def test_compare_arrays_reports_abs_rel_and_cosine():
    ref = np.array([[1.0, -2.0], [4.0, 0.0]])
    max_abs, max_rel, cosine = compare_arrays(ref, ref + np.array([[0.0, 0.1], [0.0, 0.0]]))
    assert np.isclose(max_abs, 0.1) and np.isclose(max_rel, 0.1 / 4) and 0.999 < cosine < 1
    assert compare_arrays(ref, np.zeros_like(ref))[2] == 0.0


def _retrieval(ref, eng, n_query, precision="fp32"):
    from batchforge.parity.reid import retrieval_checks
    from batchforge.tolerances import limits_for

    checks, _ = retrieval_checks(ref, eng, n_query, dict(limits_for("reid", precision)))
    return {c.name: c for c in checks}


def test_retrieval_near_ties_are_tier_relative():
    """Two gallery items 5e-4 apart for a query: a swap is within fp16 resolution (a tie there),
    but a real disagreement at fp32."""
    query = np.zeros(8, np.float32)
    query[0] = 1.0
    gallery = np.eye(8, dtype=np.float32)[1:7]  # four more items, orthogonal to the query
    gallery[0, :2] = [0.6, 0.8]
    gallery[1, :2] = [0.6 - 5e-4, np.sqrt(1 - (0.6 - 5e-4) ** 2)]
    gallery[1, 2] = 0.0
    ref = np.vstack([query, gallery])
    eng = np.vstack([query, gallery[[1, 0, 2, 3, 4, 5]]])  # the engine ranks the other one first
    assert _retrieval(ref, eng, 1, "fp32")["top1_agreement"].value == 0.0
    fp16 = _retrieval(ref, eng, 1, "fp16")["top1_agreement"]
    assert fp16.value == 1.0 and "1 queries at top-1 (largest 2-way)" in fp16.detail


def test_retrieval_ties_are_reported_not_scored_as_disagreement():
    # every image the same embedding: every gallery item is tied for every query
    same = np.ones((12, 8), dtype=np.float32)
    checks = _retrieval(same, same.copy(), n_query=4)
    assert checks["top1_agreement"].value == 1.0 and checks["top5_overlap"].value == 1.0
    assert "4 queries at top-1 (largest 8-way)" in checks["top1_agreement"].detail
    # an exact two-way tie: the engine ranks the other tied item first and still agrees
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10, 16)).astype(np.float32)
    ref[7] = ref[6]  # gallery items 2 and 3 are the same for the reference
    ref[0] = ref[6] + 1e-3 * rng.normal(size=16).astype(np.float32)  # query 0's best: the tie
    eng = ref.copy()
    eng[7] += 0.5 * (ref[0] - ref[7])  # the engine breaks the tie the other way
    from batchforge.runtime.post.reid import cosine_matches

    assert cosine_matches(eng[:4], eng[4:], 1)[0][0, 0] == 3  # reference's first maximum: item 2
    assert cosine_matches(ref[:4], ref[4:], 1)[0][0, 0] == 2
    checks = _retrieval(ref, eng, n_query=4)
    assert checks["top1_agreement"].value == 1.0
    assert "1 queries at top-1 (largest 2-way)" in checks["top1_agreement"].detail


def test_retrieval_disagreement_still_fails_when_nothing_is_tied():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(24, 16)).astype(np.float32)
    ref[:8] = ref[8:16] + 0.1 * rng.normal(size=(8, 16)).astype(np.float32)  # query i matches gallery i
    eng = ref.copy()
    eng[8:] = eng[8:][::-1]  # planted: the engine's gallery rows come back in the wrong order
    checks = _retrieval(ref, eng, n_query=8)
    assert not checks["top1_agreement"].passed and checks["top1_agreement"].value < 0.2
    assert not checks["top5_overlap"].passed
    assert "0 queries at top-1" in checks["top1_agreement"].detail
