"""The parity gate: every check of every model/precision, collected, then one verdict.

Exit status: 0 every check passed, 1 a check failed, 2 something could not run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from batchforge.errors import BatchforgeError, ConfigError
from batchforge.metrics import compare_arrays
from batchforge.parity import localise
from batchforge.parity.report import Check, ModelReport
from batchforge.parity.session import FamilyParity, ModelContext, ParitySession
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.batching import stack_feeds
from batchforge.runtime.loading import ensemble_spec
from batchforge.tolerances import known_failure, limits_for

FAMILIES: dict[str, FamilyParity] = {}
# Relative L2 error of one intermediate tensor vs the FP32 graph beyond which localisation names
# it: fp16 rounding (4.9e-4 per op) stays near 1e-3 through a healthy graph; int8 per-tensor
# quantization of a well-calibrated tensor stays near 1e-2..5e-2 (reid_resnet50: median 0.04).
DEFAULT_TENSOR_LIMITS = {Precision.FP16: 1e-2, Precision.INT8: 0.2}


def register_family(family: FamilyParity) -> FamilyParity:
    FAMILIES[family.family] = family
    return family


def family_for(name: str) -> FamilyParity:
    from batchforge.parity import families  # noqa: F401  (fills FAMILIES)

    if name not in FAMILIES:
        raise ConfigError(f"no parity checks for family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def raw_checks(ctx: ModelContext, family: FamilyParity) -> list[Check]:
    """max abs / max rel / cosine of every raw output against the reference, at the limits the
    family gives that output (the tier, or the spec's per-output tolerances)."""
    checks = []
    for output in ctx.spec.outputs:
        ref, got = ctx.reference.raw[output], ctx.engine.raw[output]
        limits = family.output_limits(ctx, output)
        if ref.shape != got.shape:
            checks.append(Check(f"raw_shape[{output}]", math.inf, limits["raw_max_rel"],
                                f"reference {ref.shape}, engine {got.shape}"))
            continue
        ref, got, view = family.raw_view(ctx, output, ref, got)
        max_abs, max_rel, cosine = compare_arrays(ref, got)
        checks.append(Check(f"raw_cosine[{output}]", cosine, limits["raw_cosine"], view))
        checks.append(Check(f"raw_max_rel[{output}]", max_rel, limits["raw_max_rel"],
                            f"max abs {max_abs:.3g}" + (f"; {view}" if view else "")))
    return checks


def batch_equivalence(ctx: ModelContext, family: FamilyParity) -> tuple[list[Check], list[str]]:
    """Decoded results at batch 1 and opt must agree with the main run at max batch.

    The max-batch run is the main engine run (chunked over the whole evaluation set, every item
    also compared against the reference); batch 1 and opt re-run a prefix of ``opt + 3`` items,
    so the opt run ends on a partly filled batch. Exact equality is tried first and reported in
    a note.
    """
    pipeline = ctx.engine.pipeline
    profile = ctx.spec.profile
    count = min(len(ctx.engine.prepared), profile.opt + 3)
    prepared = ctx.engine.prepared[:count]
    feed = stack_feeds([p.feed for p in prepared])
    main = {k: v[:count] for k, v in ctx.engine.raw.items()}
    baseline = family.batch_quantities(pipeline.postprocess(main, prepared))
    checks: list[Check] = []
    exact: list[str] = []
    notes = []
    for batch in sorted({1, profile.opt}):
        raw = _run_at_batch(pipeline, feed, batch)
        other = family.batch_quantities(pipeline.postprocess(raw, prepared))
        for quantity, ref_items in baseline.items():
            diff = _max_item_diff(ref_items, other[quantity])
            key = f"batch_{quantity}_max_abs"
            limit = ctx.limits.get(key) or ctx.limits["batch_max_abs"]
            checks.append(Check(f"batch{batch}_vs_max[{quantity}]", diff, limit,
                                f"{count} items, max batch {pipeline.max_batch}"))
            if diff == 0.0:
                exact.append(f"{quantity}@{batch}")
    main_chunks = -(-len(ctx.engine.prepared) // pipeline.max_batch)
    notes.append(f"batch equivalence on {count} items at batch 1 and {profile.opt} against the main run "
                 f"at max batch {pipeline.max_batch} ({len(ctx.engine.prepared)} items in {main_chunks} "
                 f"chunk(s)); exactly equal: {', '.join(exact) if exact else 'none'}")
    return checks, notes


def _run_at_batch(pipeline: Any, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    pipeline.batch_limit = batch
    try:
        return pipeline.infer(feed)
    finally:
        pipeline.batch_limit = None


def _max_item_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return math.inf
        if x.size:
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst


def check_model(session: ParitySession, name: str, precision: Precision) -> ModelReport:
    """All checks for one model (or ensemble) at one precision."""
    report = ModelReport(name, precision.value, session.backend)
    start = time.perf_counter()
    ensemble = None
    try:
        ensemble = ensemble_spec(session.output_dir, name)
        if ensemble is not None:
            family = family_for(ensemble.family)
            report.checks, report.notes = family.ensemble_checks(session, ensemble, precision)  # type: ignore[attr-defined]
        else:
            artifacts = session.artifacts(name)
            spec = artifacts.spec()
            family = family_for(spec.family)
            ref_spec, note = session.reference_spec(name, spec)
            if note:
                report.notes.append(note)
            eval_set = session.eval_set(family, ref_spec)
            ctx = ModelContext(
                session=session, name=name, precision=precision, spec=spec, reference_spec=ref_spec,
                limits=limits_for(spec.family, precision), eval_set=eval_set,
                reference=session.reference_run(name, ref_spec, family, eval_set),
                engine=session.engine_run(name, precision, eval_set),
            )
            report.checks = raw_checks(ctx, family) + family.task_checks(ctx)
            batch_checks, batch_notes = batch_equivalence(ctx, family)
            report.checks += batch_checks
            report.notes += batch_notes
            # localisation needs only the prepared inputs (kept by ctx): the engine session and its
            # arena (EfficientNet-B3 int8 at batch 32: ~3 GB) go first: they were resident under it before
            session.release(name, precision)
            if precision is not Precision.FP32 and not report.agrees:
                report.localisation = _localise(ctx)
                report.notes.append(localise.summary(report.localisation))
    except BatchforgeError as exc:
        report.error = exc.one_line()
    finally:
        session.release(name, precision)
    members = list(getattr(ensemble, "member_names", ()))
    ran = getattr(session, "runner_names", {})  # a stand-in session in tests may have none
    report.artifacts = [a for key in [name, *members] for a in ran.get((key, precision.value), [])]
    listed = known_failure(name, precision)  # models and ensembles alike
    if listed and report.agrees:
        report.notes.append("listed in KNOWN_FAILURES (batchforge/tolerances.py) but passed: remove the entry")
    elif listed and report.error is None:
        report.known_failure = listed
    report.seconds = time.perf_counter() - start
    return report


def _localise(ctx: ModelContext) -> dict[str, Any]:
    limit = ctx.limits.get("tensor_rel_error")
    value = limit.value if limit is not None else DEFAULT_TENSOR_LIMITS[ctx.precision]
    return localise.localise(ctx.session.artifacts(ctx.name), ctx.precision,
                             [p.feed for p in ctx.engine.prepared], value)


def exit_code(reports: Sequence[ModelReport], allow_known_failures: bool = False, strict: bool = False) -> int:
    """2 if any run could not run, else 1 if any failed (known failures only when not allowed;
    UNINFORMATIVE runs, whose reference does not respond to its input, only when ``strict``)."""
    if any(r.error is not None for r in reports):
        return 2
    accepted = {"passed"} | ({"KNOWN FAILURE"} if allow_known_failures else set()) | (
        set() if strict else {"UNINFORMATIVE"})
    return 0 if all(r.status in accepted for r in reports) else 1


def verdict(reports: Sequence[ModelReport], code: int) -> str:
    """The run's word: COULD NOT RUN, FAILED, UNINFORMATIVE (every engine agrees but some reference
    does not respond to its input: never a plain pass), or PASSED."""
    if code == 2:
        return "COULD NOT RUN"
    if code == 1 and any(r.status != "UNINFORMATIVE" and not r.passed for r in reports):
        return "FAILED"
    return "UNINFORMATIVE" if any(r.status == "UNINFORMATIVE" for r in reports) else "PASSED"
