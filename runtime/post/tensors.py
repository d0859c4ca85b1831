"""Options of the generic ``tensors`` family (the spec's ``postprocess``), typed and checked.

``outputs`` maps an output name to its ``kind`` (``values``; ``logits`` or ``probabilities``: class
scores over the last axis; ``probability_map``; ``boxes_scores``, see OutputKind), the kind's
options and optional per-precision ``tolerances`` that replace the parity tiers for that
output; ``top_k`` classes are listed per score output; outputs of more than
``inline_max_values`` values go to the side ``.npz`` in ``run``. Every unknown key and wrong value
is named by its path (``outputs.logits.tolerances.int8.min_cosine``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchforge.errors import ConfigError
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.typed_options import build, convert, settle


class OutputKind(str, enum.Enum):
    """What an output's values are; logits and probabilities are class scores over the last axis;
    ``probability_map`` is a dense map of 0-1 values (a segmentation or text map, judged where the
    reference is above ``floor`` and binarised at ``threshold``); ``boxes_scores`` is a tensor whose
    last axis mixes box channels (pixels) with score channels (0-1), judged apart."""

    VALUES = "values"
    LOGITS = "logits"
    PROBABILITIES = "probabilities"
    PROBABILITY_MAP = "probability_map"
    BOXES_SCORES = "boxes_scores"

    @property
    def is_scores(self) -> bool:
        return self in (OutputKind.LOGITS, OutputKind.PROBABILITIES)


@dataclass(frozen=True)
class OutputTolerance:
    """Per-output limits replacing the tier defaults at one precision (None: the tier's)."""

    max_abs: float | None = None
    max_rel: float | None = None
    min_cosine: float | None = None
    argmax_agreement: float | None = None
    topk_overlap: float | None = None
    min_iou: float | None = None  # probability_map: binarised IoU per item
    box_px: float | None = None  # boxes_scores: box channels' abs error on scored anchors
    score_abs: float | None = None  # boxes_scores: score channels' abs error

    def __post_init__(self) -> None:
        settle(self)

    def value_problems(self) -> list[tuple[tuple[str, ...], str]]:
        found = []
        for name in ("max_abs", "max_rel", "box_px", "score_abs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                found.append(((name,), f"{name}: expected a number >= 0, got {value}"))
        for name in ("min_cosine", "argmax_agreement", "topk_overlap", "min_iou"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                found.append(((name,), f"{name}: expected a number in [-1, 1], got {value}"))
        return found


@dataclass(frozen=True)
class PrecisionTolerances:
    fp32: OutputTolerance | None = None
    fp16: OutputTolerance | None = None
    int8: OutputTolerance | None = None

    def __post_init__(self) -> None:
        settle(self)


# probability_map defaults: starting values, not measurements. 0.3 is DBNet's binarisation
# threshold (its post-processing ``thresh``), the detector whose text map showed the problem
# (issue #27: ~1e-11 on photographs without text); 0.01 keeps out the background, whose values
# are orders below any decision yet dominate a per-item cosine.
MAP_THRESHOLD = 0.3
MAP_FLOOR = 0.01
# boxes_scores: an anchor counts (its boxes are judged, its score can flip) from this score on;
# a starting value (common detector post-processing thresholds are 0.25-0.5)
SCORE_THRESHOLD = 0.3


@dataclass(frozen=True)
class OutputOptions:
    """One output's kind, kind options and per-precision tolerances. ``threshold`` / ``floor``:
    probability_map; ``box_channels`` / ``score_channels`` ([start, stop) along the last axis) and
    ``score_threshold``: boxes_scores."""

    kind: OutputKind = OutputKind.VALUES
    tolerances: PrecisionTolerances = field(default_factory=PrecisionTolerances)
    threshold: float = MAP_THRESHOLD
    floor: float = MAP_FLOOR
    box_channels: tuple[int, int] | None = None
    score_channels: tuple[int, int] | None = None
    score_threshold: float = SCORE_THRESHOLD

    def __post_init__(self) -> None:
        settle(self)

    def value_problems(self) -> list[tuple[tuple[str, ...], str]]:
        found = []
        for name in ("threshold", "score_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                found.append(((name,), f"{name}: expected a number between 0 and 1, got {getattr(self, name)}"))
        if not 0.0 <= self.floor < self.threshold:
            found.append((("floor", "threshold"), f"floor: expected a number >= 0 below threshold "
                                                   f"{self.threshold}, got {self.floor}"))
        for name in ("box_channels", "score_channels"):
            value = getattr(self, name)
            if value is not None and not 0 <= value[0] < value[1]:
                found.append(((name,), f"{name}: expected [start, stop] with 0 <= start < stop, got {list(value)}"))
            if value is None and self.kind is OutputKind.BOXES_SCORES:
                found.append(((name, "kind"), f"{name}: a boxes_scores output needs it ([start, stop] "
                                              "channels of the last axis), got none"))
        if self.box_channels and self.score_channels and (
                self.box_channels[0] < self.score_channels[1] and self.score_channels[0] < self.box_channels[1]):
            found.append((("box_channels", "score_channels"), f"box_channels {list(self.box_channels)} and "
                          f"score_channels {list(self.score_channels)} overlap"))
        return found


def _output_options(name: str, data: Any) -> tuple[OutputOptions | None, list[str]]:
    """One output's options from JSON, every problem named by its path. Built level by level
    with typed_options' converters (its ``build`` names problems of one nesting level)."""
    if isinstance(data, OutputOptions):
        return data, []
    prefix = f"outputs.{name}."
    if not isinstance(data, Mapping):
        return None, [f"outputs.{name}: expected an object, got {type(data).__name__}"]
    plain = ("threshold", "floor", "box_channels", "score_channels", "score_threshold")
    problems = [f"unknown key '{prefix}{key}'" for key in sorted(map(str, data))
                if key not in ("kind", "tolerances", *plain)]
    kind, found = convert(data.get("kind", OutputKind.VALUES.value), OutputKind, prefix + "kind")
    problems += found
    tolerances = data.get("tolerances") or {}
    per_precision: dict[str, OutputTolerance | None] = {}
    if not isinstance(tolerances, Mapping):
        problems.append(f"{prefix}tolerances: expected an object of precision -> limits, got "
                        f"{type(tolerances).__name__}")
    else:
        known = [p.value for p in Precision]
        problems += [f"unknown key '{prefix}tolerances.{key}'" for key in sorted(map(str, tolerances))
                     if key not in known]
        for precision in known:
            limits = tolerances.get(precision)
            if limits is None:
                continue
            if not isinstance(limits, Mapping):
                problems.append(f"{prefix}tolerances.{precision}: expected an object, got {type(limits).__name__}")
                continue
            per_precision[precision], found = build(OutputTolerance, limits, f"{prefix}tolerances.{precision}.")
            problems += found
    if problems:
        return None, problems
    try:
        return OutputOptions(kind, PrecisionTolerances(**per_precision),
                             **{key: data[key] for key in plain if key in data}), []
    except ConfigError as exc:
        return None, [prefix + p for p in exc.problems]


@dataclass(frozen=True)
class TensorsOptions:
    """``outputs``: output name -> OutputOptions (outputs not named are ``values``);
    ``top_k``: classes listed per score output; ``inline_max_values``: larger outputs go to the
    side ``.npz`` in ``run``."""

    outputs: Mapping[str, OutputOptions] = field(default_factory=dict)
    top_k: int = 5
    inline_max_values: int = 64

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, hint in (("top_k", int), ("inline_max_values", int)):
            _, found = convert(getattr(self, name), hint, name)
            problems += found
        if not problems and self.top_k < 1:
            problems.append(f"top_k: expected an integer >= 1, got {self.top_k}")
        if not problems and self.inline_max_values < 0:
            problems.append(f"inline_max_values: expected an integer >= 0, got {self.inline_max_values}")
        outputs: dict[str, OutputOptions] = {}
        if not isinstance(self.outputs, Mapping):
            problems.append(f"outputs: expected an object of output name -> options, got "
                            f"{type(self.outputs).__name__}")
        else:
            for name, value in self.outputs.items():
                built, found = _output_options(str(name), value)
                problems += found
                if built is not None:
                    outputs[str(name)] = built
        if problems:
            raise ConfigError("invalid tensors postprocess options", problems=problems)
        object.__setattr__(self, "outputs", outputs)

    def output(self, name: str) -> OutputOptions:
        return self.outputs.get(name, OutputOptions())


def goes_inline(value: np.ndarray, limit: int) -> bool:
    """Small, finite outputs are written into the JSON line (JSON has no NaN)."""
    return value.size <= limit and (not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all()))
