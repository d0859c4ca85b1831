"""The preprocessing floor: what the runtime's preprocessing alone changes in a model's outputs.

The reference runs on torch-preprocessed images (independent of the runtime's OpenCV code), the
engine on the runtime's. Their difference in resize and rounding reaches the outputs even for a
perfect engine: issue #27 measured raw max_rel 1.9e-4 between them where the fp32 engine against
torch on the same input was 4.4e-5, above the fp32 tier of 1e-4. Measured once per model and
evaluation set (the FP32 module run once more, on the runtime's feeds):

- the floor: the reference on the runtime's input against the reference on torch's input;
- the engine's own error: the engine against the reference on the runtime's input.

A limit tighter than the floor would fail every engine, so such a limit becomes floor + limit
(the engine's own error adds on top of the preprocessing difference); a limit the floor stays
within is never changed (loosening it would hide engine errors). Covers the generic checks
(``raw_max_rel``, ``raw_cosine``, ``row_cosine`` and a declared ``max_abs``); the output kinds'
own checks keep their limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from batchforge.metrics import compare_arrays, rowwise_cosine
from batchforge.parity.report import SHOWN, Check
from batchforge.tolerances import Limit


@dataclass(frozen=True)
class OutputFloor:
    """One output: reference on the runtime's input vs on torch's input, and the engine's own error."""

    max_abs: float
    max_rel: float
    cosine: float
    row_cosine: float  # the worst item's
    engine_max_rel: float  # engine vs reference on the runtime's input

    def measured(self, key: str) -> float:
        return {"raw_max_rel": self.max_rel, "max_abs": self.max_abs, "raw_cosine": self.cosine,
                "row_cosine": self.row_cosine}[key]


FLOORED = ("raw_max_rel", "max_abs", "raw_cosine", "row_cosine")


def measure(reference: np.ndarray, on_runtime_input: np.ndarray, engine: np.ndarray) -> OutputFloor:
    """The floor of one output (all three arrays (N, ...) of the same shape)."""
    max_abs, max_rel, cosine = compare_arrays(reference, on_runtime_input)
    rows = rowwise_cosine(reference, on_runtime_input) if reference.size > len(reference) else np.ones(1)
    engine_rel = compare_arrays(on_runtime_input, engine)[1]
    return OutputFloor(max_abs, max_rel, cosine, float(rows.min()), engine_rel)


def floored(limits: Mapping[str, Limit], floor: OutputFloor) -> tuple[dict[str, Limit], list[str]]:
    """``limits`` with each one the floor exceeds raised to floor + limit; and the raised keys."""
    out, raised = dict(limits), []
    for key in FLOORED:
        limit = limits.get(key)
        if limit is None:
            continue
        value = floor.measured(key)
        if limit.kind == "max" and value > limit.value:
            out[key] = Limit(value + limit.value, "max", f"preprocessing floor {value:.3g} + {limit.value:g} "
                                                         f"({limit.reason})")
            raised.append(key)
        elif limit.kind == "min" and 1 - value > 1 - limit.value:
            gap = (1 - value) + (1 - limit.value)
            out[key] = Limit(1 - gap, "min", f"preprocessing floor: cosine {value:.8f}, 1 - {1 - limit.value:.3g} "
                                             f"more ({limit.reason})")
            raised.append(key)
    return out, raised


def floor_check(name: str, floor: OutputFloor, limits: Mapping[str, Limit], raised: list[str]) -> Check:
    """The floor as a shown value beside the raw_max_rel limit in force."""
    change = (f"limits set to floor + limit: {', '.join(raised)}" if raised
              else "every limit stays (the floor is within them)")
    return Check(f"preprocess_floor_max_rel[{name}]", floor.max_rel, limits["raw_max_rel"],
                 f"FP32 reference on the runtime's preprocessed input against it on torch's: cosine "
                 f"{floor.cosine:.8f}, worst item cosine {floor.row_cosine:.8f}; the engine against the "
                 f"reference on the runtime's input: max_rel {floor.engine_max_rel:.3g}; {change}", SHOWN)
