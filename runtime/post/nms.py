"""Greedy non-maximum suppression in NumPy, keeping exactly what ``torchvision.ops.nms`` keeps.

torchvision's CPU kernel sorts boxes by score (descending, stable: ties keep the lower index
first), then walks them in that order: a box not yet suppressed is kept and suppresses every
later box whose IoU with it is ``> iou_threshold``. IoU is computed in float32 as
``inter / (area_i + area_j - inter)`` with ``area = (x2 - x1) * (y2 - y1)`` and the comparison
is made against the threshold as a double. The same arithmetic is reproduced here, so zero-area
boxes (IoU 0/0 = NaN never suppresses), exact ties and all-overlapping clusters give identical
indices, in the same order.

Two exact strategies share the work (both give the greedy result, they differ in cost):

- *block phase*: the best ``_BLOCK`` remaining boxes against all remaining boxes as one dense
  IoU matrix. Cheap while each block suppresses many boxes (clustered detector output).
- *sweep phase*: once suppression turns sparse, only pairs that can reach the threshold are
  formed (a sort-and-sweep on x with the exact bounds IoU <= overlap_x / width and
  IoU <= overlap_y / height), and the greedy decisions are resolved over that sparse graph in
  a few vectorised rounds.

Boxes are computed on in float32: compare with torchvision on float32 tensors.
"""

from __future__ import annotations

import numpy as np

from batchforge.errors import InputValidationError

_BLOCK = 16
# a block that removes fewer boxes than this is a sign of sparse suppression: sweep the rest
_MIN_REMOVED_PER_BLOCK = 2 * _BLOCK
# IoU <= overlap_x / width holds exactly; the margin absorbs float32 rounding of the IoU itself
_BOUND_MARGIN = 1e-5
_ZERO = np.float32(0.0)
# torchvision's batched_nms on CPU offsets coordinates per class up to this many values
_COORDINATE_TRICK_MAX_NUMEL = 4000


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS with torchvision's semantics (see the module docstring).

    Args:
        boxes: (N, 4) xyxy boxes (computed on in float32).
        scores: (N,) scores.
        iou_threshold: boxes with IoU > threshold against a kept box are discarded; in [0, 1].
    Returns:
        int64 indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    boxes, scores = _check(boxes, scores, iou_threshold)
    if not len(boxes):
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order]
    area = (ranked[:, 2] - ranked[:, 0]) * (ranked[:, 3] - ranked[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return order[_greedy(ranked, area, float(iou_threshold))].astype(np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                iou_threshold: float) -> np.ndarray:
    """Class-aware NMS with the same result as ``torchvision.ops.batched_nms`` on CPU.

    Up to 1000 boxes torchvision offsets each class's boxes by ``class * (max + 1)`` and runs
    one NMS (float32 offsets can round an IoU at the threshold); above that it runs NMS per
    class. Both paths are reproduced so the kept set is identical.

    Args:
        boxes: (N, 4) xyxy boxes.
        scores: (N,) scores.
        classes: (N,) integer class ids.
        iou_threshold: see ``nms``.
    Returns:
        int64 indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    boxes, scores = _check(boxes, scores, iou_threshold)
    classes = np.asarray(classes)
    if classes.shape != scores.shape:
        raise InputValidationError(
            f"batched_nms: expected {scores.shape[0]} class ids, got shape {classes.shape}")
    if not len(boxes):
        return np.zeros(0, np.int64)
    if boxes.size <= _COORDINATE_TRICK_MAX_NUMEL:
        offsets = classes.astype(np.float32) * (boxes.max() + np.float32(1.0))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = np.zeros(len(boxes), bool)
    for class_id in np.unique(classes):
        members = np.flatnonzero(classes == class_id)
        keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = np.flatnonzero(keep)
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)


def _check(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise InputValidationError(
            f"nms expects boxes (N, 4) and scores (N,), got {boxes.shape} and {scores.shape}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise InputValidationError("nms expects finite boxes and scores, got NaN or inf",
                                   hint="check the model outputs for overflow")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise InputValidationError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    return boxes, scores


def pair_iou(a: np.ndarray, area_a: np.ndarray, b: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """float32 IoU of boxes ``a`` and ``b`` in torchvision's operation order (call it under
    ``np.errstate(invalid="ignore", divide="ignore")``: two zero-area boxes give 0/0).

    Args:
        a, b: coordinate-major boxes, ``(4, ...)`` as x1, y1, x2, y2 (they broadcast).
        area_a, area_b: their areas.
    """
    iw = np.maximum(np.minimum(a[2], b[2]) - np.maximum(a[0], b[0]), _ZERO)
    ih = np.maximum(np.minimum(a[3], b[3]) - np.maximum(a[1], b[1]), _ZERO)
    inter = iw * ih
    return inter / (area_a + area_b - inter)  # 0/0 for two zero-area boxes: NaN, never > t


def _greedy(ranked: np.ndarray, area: np.ndarray, threshold: float) -> np.ndarray:
    """Ranks (positions in score order) of the kept boxes, ascending."""
    coords = np.ascontiguousarray(ranked.T)  # (4, N): contiguous rows keep the ufuncs fast
    remaining = np.arange(len(ranked))
    kept: list[np.ndarray] = []
    while remaining.size > _BLOCK:
        block = remaining[:_BLOCK]
        ovr = pair_iou(coords[:, block, None], area[block, None],
                       np.take(coords, remaining, axis=1), area[remaining])
        hits = ovr > _float32_below(threshold)  # as the C++ kernel's double comparison
        rows = _resolve_block(hits[:, :_BLOCK])
        kept.append(block[rows])
        survivors = ~hits[rows].any(axis=0)[_BLOCK:]
        before = remaining.size - _BLOCK
        remaining = remaining[_BLOCK:][survivors]
        if before - remaining.size < _MIN_REMOVED_PER_BLOCK:
            break
    if remaining.size:
        kept.append(remaining[_sweep(np.take(coords, remaining, axis=1), area[remaining], threshold)])
    return np.concatenate(kept)


def _resolve_block(hits: np.ndarray) -> list[int]:
    """Greedy decisions inside one block; ``hits[i, j]``: box i would suppress box j."""
    masks = [int.from_bytes(row, "little") for row in np.packbits(hits, axis=1, bitorder="little")]
    suppressed = 0
    rows = []
    for i, mask in enumerate(masks):
        if not (suppressed >> i) & 1:
            rows.append(i)
            suppressed |= mask
    return rows


def _sweep(coords: np.ndarray, area: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean keep mask of ranked boxes (coordinate-major), from the sparse graph of pairs
    over the threshold."""
    count = coords.shape[1]
    src, dst = _suppression_pairs(coords, area, threshold)
    # status: 0 undecided, 1 kept, 2 suppressed. A box is kept once every box that would
    # suppress it is suppressed; it is suppressed once one of them is kept. Each round decides
    # at least the best undecided box, and in practice a few rounds decide all of them.
    status = np.zeros(count, np.int8)
    while src.size:
        pending = np.bincount(dst[status[src] != 2], minlength=count)
        status[(status == 0) & (pending == 0)] = 1
        status[dst[status[src] == 1]] = 2
        undecided = status[dst] == 0
        src, dst = src[undecided], dst[undecided]
    return status != 2


def _suppression_pairs(coords: np.ndarray, area: np.ndarray,
                       threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(higher rank, lower rank) pairs whose IoU is over the threshold.

    For a pair with x1_a <= x1_b, IoU <= (x2_a - x1_b) / width_a, so IoU > t needs
    x1_b < x1_a + (1 - t) * width_a: after sorting by x1 each box has a contiguous window of
    candidate partners. The same bound on y, |y1_a - y1_b| < (1 - t) * max(height), drops most
    of the window's boxes before the IoU is computed.
    """
    n = coords.shape[1]
    by_x = np.argsort(coords[0], kind="stable")
    boxes, box_area = np.take(coords, by_x, axis=1), area[by_x]
    x1 = boxes[0].astype(np.float64)
    slack = max(1.0 - threshold + _BOUND_MARGIN, 0.0)
    reach = x1 + slack * np.maximum(boxes[2] - boxes[0], 0.0).astype(np.float64)
    counts = np.maximum(np.searchsorted(x1, reach, side="right") - np.arange(n) - 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    # pairs of x-sorted positions (first, second): each box with the next counts[i] boxes
    first = np.repeat(np.arange(n), counts)
    second = np.arange(total) - np.repeat(np.cumsum(counts) - counts - np.arange(n) - 1, counts)
    height = np.maximum(boxes[3] - boxes[1], 0.0)
    taller = np.maximum(height[first], height[second])
    near = np.abs(boxes[1, first] - boxes[1, second]) <= np.float32(slack) * taller
    first, second = first[near], second[near]
    ovr = pair_iou(np.take(boxes, first, axis=1), box_area[first],
                   np.take(boxes, second, axis=1), box_area[second])
    hits = ovr > _float32_below(threshold)
    a, b = by_x[first[hits]], by_x[second[hits]]
    return np.minimum(a, b), np.maximum(a, b)


def _float32_below(threshold: float) -> np.float32:
    """The largest float32 <= ``threshold``: for a float32 v, ``v > threshold`` compared as
    doubles (torchvision's C++) is exactly ``v > _float32_below(threshold)`` in float32."""
    value = np.float32(threshold)
    return value if float(value) <= threshold else np.nextafter(value, np.float32(-np.inf))
