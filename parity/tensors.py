"""Tensors parity: any model's outputs, output by output, against the PyTorch reference.

The gate's raw checks (``raw_cosine[o]``, ``raw_max_rel[o]``: whole output, tier limits) run for
every output; this module adds per output:

- ``sanity_*[o]``: does the FP32 reference respond to its input at all (parity/sanity.py)? A
  failure makes the run UNINFORMATIVE, not FAILED;
- ``preprocess_floor_max_rel[o]`` (image inputs): what the runtime's preprocessing alone changes
  (parity/preprocess_floor.py), shown; a limit below it is raised to floor + limit;
- ``row_cosine_min[o]``: the worst item's cosine (one bad item cannot hide in a large batch);
  left out for outputs of one value per item, where a cosine is only a sign, and for the kinds
  with their own checks;
- ``max_abs[o]`` / ``max_rel[o]``: when the spec declares that limit for the output;
- for outputs the spec declares ``logits`` or ``probabilities`` (class scores over the last
  axis): ``argmax_agreement[o]`` and ``top{k}_overlap[o]`` (k = the options' ``top_k``, only when
  there are more than k classes). Tie-aware as reid's retrieval checks: reference scores within
  the tier's ``score_tie`` (relative to the row's largest |value|) have no order, so an engine
  picking any of them agrees; tied rows are counted in the detail. ``argmax_plain_agreement[o]``
  (ties not counted) is shown beside it, not judged;
- ``probability_map`` and ``boxes_scores`` outputs: their own checks (parity/tensors_kinds.py).

Every per-item check names its worst item by its source (file name or ``.npz`` key).

Limits: the ``tensors`` tiers of batchforge/tolerances.py, replaced per output by the spec's
``postprocess.outputs.<o>.tolerances.<precision>``. The reference is the FP32 module on inputs
built here: images through ``torch_preprocess`` (independent of the runtime's OpenCV code),
arrays (``parity --data X.npz`` or the synthetic auxiliary inputs) as given.

Evaluation set without ``--data``: images from the family's sample generator for the first
input when the spec has image preprocessing; every other float input gets seeded uniform [0, 1)
values (an integer input needs ``--data``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from batchforge.errors import UsageError
from batchforge.export.reference import torch_preprocess
from batchforge.export.samples import SEED_EVAL, generate
from batchforge.metrics import compare_arrays, rowwise_cosine, tie_aware_scores
from batchforge.parity.gate import register_family
from batchforge.parity.preprocess_floor import OutputFloor, floor_check, floored, measure
from batchforge.parity.report import SHOWN, Check, source_name
from batchforge.parity.sanity import sanity_checks
from batchforge.parity.session import EvalItem, EvalSet, FamilyParity, ModelContext
from batchforge.parity.tensors_kinds import boxes_scores_checks, map_checks, split_channels
from batchforge.runtime.pipelines.tensors import TensorItem, TensorsResult, as_tensor_item, check_item_feed
from batchforge.runtime.post.tensors import OutputKind, TensorsOptions
from batchforge.runtime.results import Result
from batchforge.runtime.spec import ModelSpec, parse_options
from batchforge.tolerances import Limit
from batchforge.tolerances import tensors_output_limits as output_limits

DEFAULT_EVAL = 32



def synthetic_items(spec: ModelSpec, count: int) -> tuple[EvalItem, ...]:
    """The deterministic evaluation items of the module docstring."""
    rng = np.random.default_rng(SEED_EVAL)
    images = generate("tensors", count, SEED_EVAL) if spec.preprocess is not None else None
    arrays_for = spec.inputs[1:] if images is not None else spec.inputs
    for tensor in arrays_for:
        if not np.issubdtype(np.dtype(tensor.dtype), np.floating):
            raise UsageError(f"{spec.name}: input {tensor.name!r} is {tensor.dtype}; synthetic values "
                             "for it would mean nothing", hint="pass your inputs with parity --data FILE.npz")
        if not all(isinstance(d, int) for d in tensor.item_shape):
            raise UsageError(f"{spec.name}: input {tensor.name!r} has named dims {tensor.item_shape}",
                             hint="pass your inputs with parity --data FILE.npz")
    items = []
    for index in range(count):
        arrays = {t.name: rng.random([int(d) for d in t.item_shape]).astype(t.dtype) for t in arrays_for}
        if images is not None:
            name, image = images[index]
            items.append(EvalItem(name, TensorItem(image, arrays)))
        else:
            items.append(EvalItem(f"synthetic{index:04d}", TensorItem(None, arrays)))
    return tuple(items)


def value_checks(name: str, ref: np.ndarray, eng: np.ndarray, limits: Mapping[str, Limit],
                 sources: Sequence[str], detail: str = "", cosine: bool = True) -> list[Check]:
    """Worst-item cosine (the item named by its source), and max abs where the spec declares it
    (a declared max rel is the limit of the gate's ``raw_max_rel[o]``, see
    ``TensorsParity.output_limits``)."""
    max_abs, max_rel, _ = compare_arrays(ref, eng)
    checks = []
    if cosine and ref.size // max(len(ref), 1) > 1:
        cos = rowwise_cosine(ref, eng)
        worst = int(np.argmin(cos))
        checks.append(Check(f"row_cosine_min[{name}]", float(cos[worst]), limits["row_cosine"],
                            f"min over {len(cos)} items (worst {source_name(sources[worst])}), "
                            f"mean {cos.mean():.6f}{detail}"))
    if "max_abs" in limits:
        rows = np.abs(ref.astype(np.float64) - eng.astype(np.float64)).reshape(len(ref), -1)
        worst = int(np.argmax(rows.max(axis=1))) if rows.size else 0
        checks.append(Check(f"max_abs[{name}]", max_abs, limits["max_abs"],
                            f"max rel {max_rel:.3g}; worst {source_name(sources[worst])}"))
    return checks


def _row_namer(sources: Sequence[str] | None, items: int, rows: int):
    """Names a row of class scores by its item's source (and its row within the item)."""
    per_item = rows // max(items, 1)

    def where(row: int) -> str:
        item = source_name(sources[row // per_item]) if sources is not None else f"row {row}"
        return item + (f" row {row % per_item}" if sources is not None and per_item > 1 else "")
    return where


def score_checks(name: str, ref: np.ndarray, eng: np.ndarray, limits: Mapping[str, Limit],
                 k: int, sources: Sequence[str] | None = None) -> list[Check]:
    """Tie-aware argmax agreement and top-k overlap of class scores over the last axis; the
    first disagreeing and the worst-overlap item named by their ``sources``."""
    tie = limits["score_tie"].value
    scores = tie_aware_scores(ref, eng, tie, k)
    if scores is None:
        return []
    where = _row_namer(sources, len(ref), scores.rows)
    ref_top = np.argmax(ref.reshape(-1, scores.classes), axis=1)
    eng_top = np.argmax(eng.reshape(-1, scores.classes), axis=1)
    first = scores.disagreeing[0] if scores.disagreeing else None
    detail = (f"{scores.rows} rows of {scores.classes} classes; reference ties within {tie:g} of the row's largest "
              f"|value|: {scores.tied_first} rows at top-1 (largest {scores.largest_tie}-way)")
    checks = [Check(f"argmax_agreement[{name}]", scores.agreement, limits["argmax_agreement"],
                    detail + f" (an engine picking any tied class agrees); {len(scores.disagreeing)} rows disagree"
                    + (f"; first {where(first)}: reference class {int(ref_top[first])}, engine {int(eng_top[first])}"
                       if first is not None else ""))]
    if scores.overlap is not None:
        worst = f"; worst {where(scores.worst_overlap_row)}" if scores.worst_overlap_row is not None else ""
        checks.append(Check(f"top{k}_overlap[{name}]", scores.overlap, limits["topk_overlap"],
                            f"{scores.rows} rows of {scores.classes} classes; {scores.tied_top} rows with reference "
                            f"ties at rank {k} within {tie:g} (an engine picking any tied class agrees){worst}"))
    return checks


def plain_argmax_check(name: str, ref: np.ndarray, eng: np.ndarray, limits: Mapping[str, Limit],
                       sources: Sequence[str]) -> list[Check]:
    """Plain argmax agreement (ties not counted), shown beside the tie-aware check that decides:
    issue #27 met tie-aware 1.0 where plain agreement was 0.94, and a user should see both."""
    classes = ref.shape[-1] if ref.ndim > 1 else 1
    if classes < 2:
        return []
    ref_top = np.argmax(ref.reshape(-1, classes), axis=1)
    eng_top = np.argmax(eng.reshape(-1, classes), axis=1)
    where = _row_namer(sources, len(ref), len(ref_top))
    differ = np.flatnonzero(ref_top != eng_top)
    detail = f"{len(differ)} of {len(ref_top)} rows pick another class than the reference's argmax"
    if len(differ):
        row = int(differ[0])
        detail += f"; first {where(row)}: reference class {int(ref_top[row])}, engine {int(eng_top[row])}"
    return [Check(f"argmax_plain_agreement[{name}]", float(np.mean(ref_top == eng_top)), limits["argmax_agreement"],
                  detail + "; ties not counted (argmax_agreement decides)", SHOWN)]


class TensorsParity(FamilyParity):
    family = "tensors"
    eval_set_per_model = True  # the synthetic auxiliary inputs follow each model's spec

    def eval_set(self, spec: ModelSpec, size: int | None) -> EvalSet:
        count = size or DEFAULT_EVAL
        items = synthetic_items(spec, count)
        aux = [t.name for t in (spec.inputs[1:] if spec.preprocess is not None else spec.inputs)]
        note = ("synthetic: " + ("sample images" if spec.preprocess is not None else "")
                + (" + " if aux and spec.preprocess is not None else "")
                + (f"uniform [0, 1) {', '.join(aux)}" if aux else ""))
        return EvalSet(f"tensors-{spec.name}-{count}", items, {"note": note})

    def reference_inputs(self, item: EvalItem, spec: ModelSpec) -> tuple[dict[str, np.ndarray], Any]:
        data = as_tensor_item(item.data, spec)
        feed: dict[str, np.ndarray] = {}
        geometry = None
        if data.image is not None:
            if spec.preprocess is None:
                raise UsageError(f"{item.source}: model {spec.name!r} has no image preprocessing in its spec, "
                                 "so images cannot feed it", hint="pass preprocessed arrays with --data FILE.npz")
            tensor, geometry = torch_preprocess(data.image, spec.preprocess)
            feed[spec.inputs[0].name] = tensor.numpy()
        feed.update(data.arrays)
        check_item_feed(feed, spec, item.source, from_image=data.image is not None)
        return feed, geometry

    def output_limits(self, ctx: ModelContext, output: str) -> dict[str, Limit]:
        """The tier with the spec's tolerances for ``output`` (a declared ``max_rel`` replaces the
        tier's raw max rel: it can loosen as well as tighten), never below the preprocessing floor
        (parity/preprocess_floor.py)."""
        return self._floored_limits(ctx, output)[0]

    def _floored_limits(self, ctx: ModelContext, output: str) -> tuple[dict[str, Limit], OutputFloor | None,
                                                                       list[str]]:
        """The output's limits with the preprocessing floor applied, the floor, and the keys it
        raised; measured once per run (the gate's raw checks and the task checks both ask)."""
        key = ("tensors floored limits", output)
        if key not in ctx.memo:
            limits = output_limits(ctx.limits, self._options(ctx).output(output), output, ctx.precision)
            floor = self._floor(ctx, output)
            applied, raised = floored(limits, floor) if floor is not None else (limits, [])
            ctx.memo[key] = (applied, floor, raised)
        return ctx.memo[key]

    def _floor(self, ctx: ModelContext, output: str) -> OutputFloor | None:
        """The preprocessing floor of one output; None when no item is an image (both sides then
        take the same arrays) or the shapes differ (raw_shape names that)."""
        if ctx.reference_spec.preprocess is None or not any(
                as_tensor_item(item.data, ctx.reference_spec).image is not None for item in ctx.eval_set.items):
            return None
        ref, eng = ctx.reference.raw[output], ctx.engine.raw[output]
        on_runtime = ctx.session.reference_on_engine_inputs(ctx.name, ctx.reference_spec, ctx.eval_set,
                                                            ctx.engine.prepared)[output]
        if not ref.shape == eng.shape == on_runtime.shape:
            return None
        ref_view, on_runtime, _ = self.raw_view(ctx, output, ref, on_runtime)
        return measure(ref_view, on_runtime, self.raw_view(ctx, output, ref, eng)[1])

    def raw_view(self, ctx: ModelContext, output: str, ref: np.ndarray, eng: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, str]:
        """A boxes_scores output's raw checks see its score channels only: its boxes are judged
        in pixels on scored anchors (``box_px``), not relative to the largest box coordinate."""
        options = self._options(ctx).output(output)
        if options.kind is not OutputKind.BOXES_SCORES or ref.shape != eng.shape:
            return ref, eng, ""
        (_, ref_scores), (_, eng_scores) = (split_channels(output, a, options) for a in (ref, eng))
        return ref_scores, eng_scores, f"score channels {list(options.score_channels or ())} only"

    @staticmethod
    def _options(ctx: ModelContext) -> TensorsOptions:
        return parse_options(TensorsOptions, ctx.reference_spec.postprocess, "tensors postprocess options")

    def task_checks(self, ctx: ModelContext) -> list[Check]:
        options = self._options(ctx)
        note = ctx.eval_set.extra.get("note")
        sources = [item.source for item in ctx.eval_set.items]
        checks = []
        for name in ctx.spec.outputs:
            ref, eng = ctx.reference.raw[name], ctx.engine.raw[name]
            output = options.output(name)
            key = ("tensors sanity", name)
            if key not in ctx.reference.memo:  # the reference's own: the same for every precision
                ctx.reference.memo[key] = sanity_checks(name, ref, output.kind, sources)
            checks += ctx.reference.memo[key]
            if ref.shape != eng.shape:
                continue  # the gate's raw_shape check names it
            limits, floor, raised = self._floored_limits(ctx, name)
            if floor is not None:
                checks.append(floor_check(name, floor, limits, raised))
            plain = output.kind in (OutputKind.VALUES, OutputKind.LOGITS, OutputKind.PROBABILITIES)
            checks += value_checks(name, ref, eng, limits, sources, f"; {note}" if note else "", cosine=plain)
            if output.kind.is_scores:
                decided = score_checks(name, ref, eng, limits, options.top_k, sources)
                checks += decided[:1] + plain_argmax_check(name, ref, eng, limits, sources) + decided[1:]
            elif output.kind is OutputKind.PROBABILITY_MAP:
                checks += map_checks(name, ref, eng, output, limits, sources)
            elif output.kind is OutputKind.BOXES_SCORES:
                checks += boxes_scores_checks(name, ref, eng, output, limits, sources)
        return checks

    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        """Each output divided by its largest |value| over the items, so the batch tiers are
        relative (SPEC: 1e-3 rel fp16, 1e-2 rel int8) whatever the output's scale."""
        typed: Sequence[TensorsResult] = results  # type: ignore[assignment]
        quantities = {}
        for name in typed[0].outputs:
            arrays = [r.outputs[name].astype(np.float64) for r in typed]
            scale = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
            scale = scale if scale > 0 and math.isfinite(scale) else 1.0
            quantities[name] = [a / scale for a in arrays]
        return quantities


register_family(TensorsParity())
