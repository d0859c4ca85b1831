"""The parity tolerance table: one entry per family and precision, each with its reason.

A change to a value needs a measured reason written beside it (SPEC §6). Values marked
"SPEC starting tier" are the design's starting points; the others were tuned on measurements
recorded in their reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from batchforge.errors import ConfigError
from batchforge.runtime.artifacts import Precision

FP32, FP16, INT8 = Precision.FP32, Precision.FP16, Precision.INT8


@dataclass(frozen=True)
class Limit:
    """A bound on one metric: ``value`` is a minimum or a maximum."""

    value: float
    kind: Literal["min", "max"]
    reason: str

    def passes(self, measured: float) -> bool:
        return measured >= self.value if self.kind == "min" else measured <= self.value

    @property
    def symbol(self) -> str:
        return ">=" if self.kind == "min" else "<="


def at_least(value: float, reason: str) -> Limit:
    return Limit(value, "min", reason)


def at_most(value: float, reason: str) -> Limit:
    return Limit(value, "max", reason)


SPEC = "SPEC starting tier"

TOLERANCES: dict[str, dict[Precision, dict[str, Limit]]] = {
    "reid": {
        FP32: {
            "raw_cosine": at_least(0.99999, SPEC),
            "raw_max_rel": at_most(1e-4, "ORT CPU vs torch CPU FP32 measured <= 1e-6 on the reid zoo"),
            "embedding_cosine": at_least(0.99999, SPEC),
            "top1_agreement": at_least(1.0, SPEC),
            "top5_overlap": at_least(0.99, "ranks 2-5 of unrelated gallery items can tie within "
                                           "1e-6; top-1 agreement carries the strict check"),
            "batch_max_abs": at_most(1e-5, "unit-norm embeddings; SPEC batch tier for fp32"),
        },
        FP16: {
            "raw_cosine": at_least(0.9995, SPEC),
            "raw_max_rel": at_most(2e-2, "fp16 has an 11-bit mantissa (4.9e-4 per rounding) "
                                         "accumulated over ~50 layers"),
            "embedding_cosine": at_least(0.9995, SPEC),
            "top1_agreement": at_least(0.99, SPEC),
            "top5_overlap": at_least(0.95, "near-tied ranks 2-5 may swap at fp16 resolution"),
            "batch_max_abs": at_most(1e-3, "SPEC batch tier for fp16 (1e-3 rel)"),
        },
        INT8: {
            "raw_cosine": at_least(0.98, SPEC),
            "raw_max_rel": at_most(0.25, "per-tensor int8 activations: 1/255 of the range per "
                                         "rounding, accumulated"),
            "embedding_cosine": at_least(0.98, SPEC),
            "top1_agreement": at_least(0.95, SPEC),
            "top5_overlap": at_least(0.85, "near-tied ranks 2-5 swap at int8 resolution"),
            "batch_max_abs": at_most(1e-2, "SPEC batch tier for int8 (1e-2 rel)"),
        },
    },
}


def limits_for(family: str, precision: Precision) -> dict[str, Limit]:
    """The limits of one family and precision; unknown pairs raise ConfigError."""
    try:
        return TOLERANCES[family][Precision(precision)]
    except KeyError:
        raise ConfigError(
            f"no parity tolerances for family {family!r} at {Precision(precision).value}; "
            f"known families: {', '.join(sorted(TOLERANCES))}"
        ) from None
