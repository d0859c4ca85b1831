"""Post-processing steps shared by several families (normalisation, top-k)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Scales vectors to unit L2 norm along ``axis`` (zero vectors stay zero)."""
    norm = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=axis, keepdims=True))
    return (x / np.maximum(norm, eps)).astype(x.dtype, copy=False)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest scores per row, best first.

    Ties are broken by the lower index so results are deterministic across runs and batch
    compositions.

    Args:
        scores: (N, M) array.
        k: how many to keep (clamped to M).
    Returns:
        (indices (N, k) int64, values (N, k)).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"top_k expects a 2-D score matrix, got shape {scores.shape}")
    k = min(int(k), scores.shape[1])
    if k <= 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), scores.dtype)
    # a stable sort of the negated scores keeps the lower index first among equal scores
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1)
