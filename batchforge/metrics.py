"""Numeric comparisons shared by the export checks and the parity gate (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParityRow:
    batch: int
    output: str
    max_abs: float
    max_rel: float
    cosine: float

    def as_dict(self) -> dict[str, float | int | str]:
        return {"batch": self.batch, "output": self.output, "max_abs": self.max_abs,
                "max_rel": self.max_rel, "cosine": self.cosine}


def compare_arrays(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, max abs error / max |reference|, cosine of the flattened arrays)."""
    ref = reference.astype(np.float64).ravel()
    act = actual.astype(np.float64).ravel()
    if ref.shape != act.shape:
        raise ValueError(f"output shapes differ: reference {reference.shape}, got {actual.shape}")
    max_abs = float(np.max(np.abs(ref - act))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    denom = np.linalg.norm(ref) * np.linalg.norm(act)
    cosine = float(ref @ act / denom) if denom > 0 else float(np.array_equal(ref, act))
    return max_abs, max_rel, cosine


def rowwise_cosine(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (N, ...) arrays (float64); 1 for two zero rows,
    0 for a zero row against a non-zero one."""
    ref = reference.reshape(reference.shape[0], -1).astype(np.float64)
    act = actual.reshape(actual.shape[0], -1).astype(np.float64)
    ref_norm, act_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(act, axis=1)
    denom = ref_norm * act_norm
    dots = np.sum(ref * act, axis=1)
    # a zero row agrees only with a zero row (an engine that outputs zeros must not pass)
    return np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), (ref_norm == act_norm).astype(np.float64))


@dataclass(frozen=True)
class ScoreAgreement:
    """Tie-aware agreement of class scores (rows x classes): see ``tie_aware_scores``."""

    rows: int
    classes: int
    agreement: float  # share of rows whose engine top-1 is tied with the reference's best
    overlap: float | None  # mean share of the engine's top k within the reference's (None: classes <= k)
    tied_first: int  # rows with more than one class tied at top-1
    largest_tie: int
    tied_top: int  # rows with reference ties at rank k
    disagreeing: tuple[int, ...] = ()  # rows whose engine top-1 is no tied best of the reference
    worst_overlap_row: int | None = None  # the row of the smallest top-k overlap (None: all full, or classes <= k)


def tie_aware_scores(reference: np.ndarray, actual: np.ndarray, tie: float, k: int) -> ScoreAgreement | None:
    """Argmax agreement and top-k overlap of class scores over the last axis, tie-aware:
    reference scores within ``tie`` (relative to the row's largest |value|) have no order, so an
    engine picking any of them agrees. None for fewer than two classes."""
    from batchforge.runtime.post.common import top_k

    classes = reference.shape[-1] if reference.ndim > 1 else 1
    if classes < 2:
        return None
    ref_rows = reference.reshape(-1, classes).astype(np.float64)
    act_rows = actual.reshape(-1, classes)
    scale = np.max(np.abs(ref_rows), axis=1, keepdims=True)
    margin = tie * np.where(scale > 0, scale, 1.0)
    tied_first = ref_rows >= ref_rows.max(axis=1, keepdims=True) - margin  # (R, C): tied with the best
    rows = np.arange(len(ref_rows))
    k = min(k, classes)
    act_top, _ = top_k(act_rows, k)
    agrees = tied_first[rows, act_top[:, 0]]
    agreement = float(np.mean(agrees))
    overlap, tied_top, worst = None, 0, None
    if classes > k:
        kth = np.sort(ref_rows, axis=1)[:, -k][:, None]
        within = ref_rows >= kth - margin  # (R, C): within the top k, ties included
        shares = within[rows[:, None], act_top].sum(axis=1) / k
        overlap, worst = float(np.mean(shares)), (int(np.argmin(shares)) if shares.min() < 1 else None)
        tied_top = int(np.sum(within.sum(axis=1) > k))
    return ScoreAgreement(len(ref_rows), classes, agreement, overlap, int(np.sum(tied_first.sum(axis=1) > 1)),
                          int(tied_first.sum(axis=1).max()), tied_top,
                          tuple(int(r) for r in np.flatnonzero(~agrees)), worst)
