"""The numeric comparisons the gate is built on."""

import numpy as np

from batchforge.parity.metrics import compare_arrays, rowwise_cosine


def test_rowwise_cosine_does_not_let_a_zero_output_pass():
    ref = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0], [1.0, 0.0]])
    act = np.array([[2.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(rowwise_cosine(ref, act), [1.0, 1.0, 0.0, 0.0])


def test_compare_arrays_reports_abs_rel_and_cosine():
    ref = np.array([[1.0, -2.0], [4.0, 0.0]])
    max_abs, max_rel, cosine = compare_arrays(ref, ref + np.array([[0.0, 0.1], [0.0, 0.0]]))
    assert np.isclose(max_abs, 0.1) and np.isclose(max_rel, 0.1 / 4) and 0.999 < cosine < 1
    assert compare_arrays(ref, np.zeros_like(ref))[2] == 0.0
