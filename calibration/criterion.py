"""What INT8 calibration stops on: the parity gate's checks that need no decoding, measured against
the FP32 graph on the calibration items, at the gate's own limits.

The gate (parity/) compares the engine with the PyTorch reference; calibration has the FP32 ONNX
graph, which agrees with that reference to ~1e-5, far inside any int8 limit. Per output:

- ``raw_cosine[o]`` and ``raw_max_rel[o]``: the gate's raw checks, every family;
- ``row_cosine_min[o]``: the worst item's cosine, where the gate has that check on raw values
  (family ``tensors``, its ``row_cosine`` limit; ``reid``, ``embedding_cosine`` on the embedding;
  left out for outputs of one value per item, as the gate leaves it);
- ``max_abs[o]``, ``argmax_agreement[o]``, ``top{k}_overlap[o]``: family ``tensors`` where the spec
  declares the limit or the output as class scores (tie-aware, as the gate);
- the family's decoded checks that need nothing but the outputs: ``mtcnn`` stage networks
  (``face_prob_abs_max``, ``threshold_agreement`` on the stage's face threshold and, for O-Net,
  ``landmark_crop_px_max``), as the gate's per-stage checks;
- ``mean_output_cosine``: the mean over items and outputs must reach ``--target-cosine`` too:
  headroom for the checks the gate decodes with the family's reference decoding (boxes,
  keypoints, maps), which do not run here.

A candidate passes when every check passes. Candidates that fail are ordered by how many checks
fail, then by the worst normalised shortfall, so "best measured" means closest to the gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from batchforge.metrics import compare_arrays, rowwise_cosine, tie_aware_scores
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.spec import ModelSpec, parse_options
from batchforge.tolerances import Limit, at_least, limits_for, tensors_output_limits

MEAN_REASON = ("calibrate --target-cosine: headroom for the gate's decoded checks, which need the "
               "family's reference decoding and cannot run at calibration")
ROW_LIMIT = {"tensors": "row_cosine", "reid": "embedding_cosine"}  # family -> worst-item limit on raw values


@dataclass(frozen=True)
class Measured:
    name: str
    value: float
    limit: Limit

    @property
    def passed(self) -> bool:
        return bool(self.limit.passes(self.value))

    @property
    def margin(self) -> float:
        """Distance to the limit, as a share of the limit's room (negative: failed by that much)."""
        value, limit = self.value, self.limit.value
        if not math.isfinite(value):
            return -math.inf
        if self.limit.kind == "min":
            room = 1.0 - limit if limit < 1.0 else 1.0
            return (value - limit) / room
        return (limit - value) / (limit if limit > 0 else 1.0)


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Measured, ...]
    min_cosine: float
    mean_cosine: float
    item_badness: tuple[float, ...] = ()  # per item, its worst share of a limit's room (see judge)

    @property
    def damage(self) -> float:
        """How far the checks are from perfect, summed (0 for a perfect candidate): a check that
        every candidate fails alike (one saturated pixel) still leaves the others to tell them apart."""
        return float(sum(1.0 - c.margin for c in self.checks if math.isfinite(c.margin)))

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def rank_key(self) -> tuple[int, float]:
        """Smaller is closer to passing: failed checks, then the worst margin (negated)."""
        return len(self.failed), -min((c.margin for c in self.checks), default=0.0)

    def as_dict(self) -> dict[str, object]:
        """The step record: the cosines (as before), the verdict and each failed check's value."""
        return {"min_cosine": round(self.min_cosine, 6), "mean_cosine": round(self.mean_cosine, 6),
                "passes_gate_checks": self.passed,
                "failed": {c.name: f"{c.value:.4g} (limit {c.limit.symbol} {c.limit.value:g})"
                           for c in self.checks if not c.passed}}


@dataclass(frozen=True)
class GateCriterion:
    """The checks of the module docstring for one model: ``limits`` per output, the outputs
    with a worst-item check, the class-score outputs (with their top k)."""

    limits: Mapping[str, Mapping[str, Limit]]
    row_outputs: tuple[str, ...] = ()
    row_limit: str = "row_cosine"
    score_outputs: Mapping[str, int] = field(default_factory=dict)
    target_mean_cosine: float = 0.995
    mtcnn_stage: str | None = None  # an MTCNN network: its decoded stage checks, at ``decoded_limits``
    decoded_limits: Mapping[str, Limit] = field(default_factory=dict)

    @classmethod
    def mean_only(cls, target: float) -> GateCriterion:
        """Only the mean output cosine (a model without a spec: tests, library calls)."""
        return cls({}, target_mean_cosine=target)

    @classmethod
    def for_spec(cls, spec: ModelSpec, precision: Precision, target: float) -> GateCriterion:
        """The gate's limits for ``spec``'s family at ``precision`` (tensors: with the spec's
        per-output overrides)."""
        tier = limits_for(spec.family, precision)
        outputs = tuple(spec.outputs)
        if spec.family == "tensors":
            from batchforge.runtime.post.tensors import TensorsOptions

            options: TensorsOptions = parse_options(TensorsOptions, spec.postprocess, "tensors postprocess options")
            limits = {o: tensors_output_limits(tier, options.output(o), o, precision) for o in outputs}
            scores = {o: options.top_k for o in outputs if options.output(o).kind.is_scores}
            return cls(limits, outputs, "row_cosine", scores, target)
        row = ROW_LIMIT.get(spec.family)
        stage = str(spec.postprocess.get("stage", "pnet")) if spec.family == "mtcnn" else None
        return cls({o: tier for o in outputs}, outputs if row else (), row or "row_cosine", {}, target,
                   stage, tier if stage else {})

    def judge(self, names: Sequence[str], reference: Sequence[Sequence[np.ndarray]],
              candidate: Sequence[Sequence[np.ndarray]]) -> Verdict:
        """``reference``/``candidate``: per batch, the outputs in ``names`` order."""
        # per output, every item's cosine (batches may differ in shape: dynamic height and width)
        rows_of = [np.concatenate([rowwise_cosine(want[p], got[p]) for want, got in zip(reference, candidate)])
                   for p in range(len(names))]
        per_item = np.concatenate(rows_of)
        # per item, how far it goes toward the limits: its cosine deficit and its largest error (as
        # a share of the output's largest |value|, as raw_max_rel) over the limit's room; the
        # worst output counts. Without limits: 1 - its lowest cosine.
        badness = 1.0 - np.min(rows_of, axis=0)  # replaced where an output has limits
        limited = False
        checks: list[Measured] = []
        for position, name in enumerate(names):
            limits = self.limits.get(name)
            if not limits:
                continue
            if not limited:
                badness, limited = np.zeros_like(badness), True
            # whole-output values over the flattened batches, item values batch by batch
            refs = [batch[position] for batch in reference]
            gots = [batch[position] for batch in candidate]
            max_abs, max_rel, cosine = compare_arrays(np.concatenate([a.ravel() for a in refs]),
                                                      np.concatenate([b.ravel() for b in gots]))
            rows = rows_of[position]
            checks.append(Measured(f"raw_cosine[{name}]", cosine, limits["raw_cosine"]))
            row = limits.get(self.row_limit) if name in self.row_outputs else None
            room = 1.0 - (row or limits["raw_cosine"]).value
            badness = np.maximum(badness, (1.0 - rows) / (room if room > 0 else 1.0))
            scale = max((float(np.max(np.abs(a))) for a in refs if a.size), default=0.0) or 1.0
            if "raw_max_rel" in limits:
                item_err = np.concatenate([np.abs(a.astype(np.float64) - b).reshape(len(a), -1).max(axis=1)
                                           if a.size else np.zeros(len(a)) for a, b in zip(refs, gots)]) / scale
                badness = np.maximum(badness, item_err / (limits["raw_max_rel"].value or 1.0))
                checks.append(Measured(f"raw_max_rel[{name}]", max_rel, limits["raw_max_rel"]))
            if name in self.row_outputs and self.row_limit in limits and refs[0].size // max(len(refs[0]), 1) > 1:
                checks.append(Measured(f"row_cosine_min[{name}]", float(rows.min()), limits[self.row_limit]))
            if "max_abs" in limits:
                checks.append(Measured(f"max_abs[{name}]", max_abs, limits["max_abs"]))
            if name in self.score_outputs and len({a.shape[-1] for a in refs}) == 1:
                classes = refs[0].shape[-1] if refs[0].ndim > 1 else 1
                scores = tie_aware_scores(np.concatenate([a.reshape(-1, classes) for a in refs]),
                                          np.concatenate([b.reshape(-1, classes) for b in gots]),
                                          limits["score_tie"].value, self.score_outputs[name])
                if scores is not None:
                    checks.append(Measured(f"argmax_agreement[{name}]", scores.agreement, limits["argmax_agreement"]))
                    if scores.overlap is not None:
                        checks.append(Measured(f"top{self.score_outputs[name]}_overlap[{name}]", scores.overlap,
                                               limits["topk_overlap"]))
        if self.mtcnn_stage is not None:
            decoded, item_share = self._mtcnn_checks(names, reference, candidate)
            checks += decoded
            badness = np.maximum(badness, item_share)
        mean = float(np.mean(per_item))
        checks.append(Measured("mean_output_cosine", mean, at_least(self.target_mean_cosine, MEAN_REASON)))
        return Verdict(tuple(checks), float(np.min(per_item)), mean, tuple(float(b) for b in badness))

    def _mtcnn_checks(self, names: Sequence[str], reference: Sequence[Sequence[np.ndarray]],
                      candidate: Sequence[Sequence[np.ndarray]]) -> tuple[list[Measured], np.ndarray]:
        """The gate's per-stage checks of an MTCNN network (parity/mtcnn.py) on the outputs, and
        per item its largest probability error as a share of the limit."""
        from batchforge.runtime.post.mtcnn import LANDMARK_CROP_PX, face_probability, stage_threshold

        assert self.mtcnn_stage is not None
        limits, cut = self.decoded_limits, stage_threshold(self.mtcnn_stage)

        def side(batches: Sequence[Sequence[np.ndarray]], output: str) -> list[np.ndarray]:
            return [batch[names.index(output)] for batch in batches]

        want = [face_probability(a) for a in side(reference, "face_logit")]
        got = [face_probability(b) for b in side(candidate, "face_logit")]
        per_item = np.concatenate([np.abs(a.astype(np.float64) - b).reshape(len(a), -1).max(axis=1)
                                   for a, b in zip(want, got)])
        flat_want, flat_got = (np.concatenate([x.ravel() for x in xs]) for xs in (want, got))
        checks = [Measured("face_prob_abs_max", float(per_item.max(initial=0.0)), limits["face_prob_abs_max"]),
                  Measured("threshold_agreement", float(np.mean((flat_want > cut) == (flat_got > cut))),
                           limits["threshold_agreement"])]
        if "landmarks" in names and "landmark_crop_px_max" in limits:
            error = max(float(np.max(np.abs(a.astype(np.float64) - b))) * LANDMARK_CROP_PX
                        for a, b in zip(side(reference, "landmarks"), side(candidate, "landmarks")))
            checks.append(Measured("landmark_crop_px_max", error, limits["landmark_crop_px_max"]))
        return checks, per_item / (limits["face_prob_abs_max"].value or 1.0)


def fewest_passing(count: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest ``k`` in 1..count for which ``passes(k)`` (the first ``k`` nodes of a ranking
    kept FP32) holds, searched by doubling (1, 2, 4, ..., count) and then bisection between the
    last failing and the first passing count; None when ``count`` itself fails. Each ``k`` is
    asked at most once; more nodes in FP32 is assumed to help (not guaranteed: the callers
    record every step measured)."""
    failing, passing, k = 0, None, 1
    while count and passing is None:
        k = min(k, count)
        if passes(k):
            passing = k
        elif k == count:
            return None
        else:
            failing, k = k, 2 * k
    while passing is not None and passing - failing > 1:
        middle = (failing + passing) // 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    return passing
