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
