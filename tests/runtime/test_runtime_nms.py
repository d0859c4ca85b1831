"""NumPy NMS keeps exactly what torchvision keeps (ties, zero-area boxes, clusters)."""

import os
import tempfile
from unittest import mock

# Hypothesis caches source constants on disk when pytest collects (even without a database):
# keep that cache in the system temporary folder, not in the working tree. Read lazily, so
# setting it while this module is collected is early enough.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      os.path.join(tempfile.gettempdir(), "batchforge-hypothesis"))

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchforge.errors import InputValidationError
from batchforge.runtime.post import nms as nms_module
from batchforge.runtime.post.nms import batched_nms, nms

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


THRESHOLDS = st.sampled_from([0.0, 0.2, 0.25, 1 / 3, 0.45, 0.5, 0.7, 0.9, 1.0])


@st.composite
def box_sets(draw):
    """Boxes on a coarse integer grid (exact IoU ties), with zero-area boxes, exact duplicates,
    and optionally an all-overlapping cluster; scores drawn from few values (score ties)."""
    small, side = st.integers(0, 12), st.integers(0, 6)
    drawn = draw(st.lists(st.tuples(small, small, side, side), max_size=70))
    boxes = [(x, y, x + w, y + h) for x, y, w, h in drawn]
    if boxes:
        boxes += [boxes[i] for i in draw(st.lists(st.integers(0, len(boxes) - 1), max_size=20))]
    if draw(st.booleans()):  # a cluster of near-identical boxes
        jitter = st.integers(-1, 1)
        boxes += [(20 + a, 20 + b, 40 + c, 40 + d)
                  for a, b, c, d in draw(st.lists(st.tuples(jitter, jitter, jitter, jitter), max_size=40))]
    levels = draw(st.integers(1, 6))
    scores = draw(st.lists(st.integers(0, levels), min_size=len(boxes), max_size=len(boxes)))
    classes = draw(st.lists(st.integers(0, 2), min_size=len(boxes), max_size=len(boxes)))
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32) / levels,
            np.array(classes, np.int64))


# 0: blocks until at most one block remains; 10**9: straight to the sweep after the first block
@pytest.mark.parametrize("min_removed", [0, 10**9])
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=box_sets(), threshold=THRESHOLDS)
def test_nms_keeps_exactly_what_torchvision_keeps(min_removed, data, threshold):
    boxes, scores, classes = data
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    with mock.patch.object(nms_module, "_MIN_REMOVED_PER_BLOCK", min_removed):
        got = nms(boxes, scores, threshold)
        got_batched = batched_nms(boxes, scores, classes, threshold)
    assert got.dtype == np.int64
    assert got.tolist() == torchvision.ops.nms(tb, ts, threshold).tolist()
    expected = torchvision.ops.batched_nms(tb, ts, torch.from_numpy(classes), threshold)
    assert sorted(got_batched.tolist()) == sorted(expected.tolist())
    # best first, equal scores by index: deterministic whatever the class grouping
    order = sorted(got_batched.tolist(), key=lambda i: (-scores[i], i))
    assert got_batched.tolist() == order


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_large_sets_match_torchvision_on_both_paths_and_both_batched_modes(kind):
    rng = np.random.default_rng(3)
    n = 1500  # above 1000 boxes torchvision's batched_nms switches from offsets to per-class NMS
    if kind == "random":
        centres, sizes = rng.uniform(0, 640, (n, 2)), np.exp(rng.uniform(2, 5.5, (n, 2)))
    else:
        seeds = rng.uniform(0, 640, (30, 2))
        centres = seeds[rng.integers(0, 30, n)] + rng.normal(0, 3, (n, 2))
        sizes = np.exp(rng.normal(4, 0.1, (n, 2)))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = np.round(rng.random(n), 3).astype(np.float32)  # rounded: plenty of ties
    classes = rng.integers(0, 4, n)
    tb, ts, tc = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
    for threshold in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, threshold).tolist() == torchvision.ops.nms(tb, ts, threshold).tolist()
        for count in (900, n):
            got = batched_nms(boxes[:count], scores[:count], classes[:count], threshold)
            want = torchvision.ops.batched_nms(tb[:count], ts[:count], tc[:count], threshold)
            assert sorted(got.tolist()) == sorted(want.tolist())
    kept = nms(boxes, scores, 0.5)
    assert 0 < len(kept) < n  # something was suppressed, something kept
    if kind == "clustered":
        assert len(kept) < n // 10


def test_degenerate_inputs():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).tolist() == []
    zero_area = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], np.float32)
    # two identical points never suppress each other (IoU 0/0 is NaN, as in torchvision)
    assert nms(zero_area, np.array([0.9, 0.8, 0.7], np.float32), 0.0).tolist() == [0, 1, 2]
    same = np.tile(np.array([[0, 0, 10, 10]], np.float32), (4, 1))
    assert nms(same, np.ones(4, np.float32), 0.5).tolist() == [0]  # a tie keeps the lowest index
    with pytest.raises(InputValidationError, match="finite"):
        nms(np.array([[0, 0, np.nan, 1]]), np.ones(1), 0.5)
    with pytest.raises(InputValidationError, match=r"boxes \(N, 4\)"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(InputValidationError, match=r"in \[0, 1\]"):
        nms(np.zeros((1, 4)), np.zeros(1), 1.5)
