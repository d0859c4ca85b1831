"""Where a lower precision goes wrong: per-tensor error of the FP16/INT8 graph vs the FP32 graph.

Both graphs run on ONNX Runtime (CPU) with every shared intermediate tensor exposed as an extra
output; the first tensor in graph order whose relative L2 error passes the precision's
``tensor_rel_error`` limit is named, with the worst tensors for context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from batchforge.calibration.activations import compare_graphs, load_model
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.batching import stack_feeds

LOCALISE_ITEMS = 4


def localise(artifacts: ModelArtifacts, precision: Precision, feeds: Sequence[dict[str, np.ndarray]],
             limit: float) -> dict[str, Any]:
    """Per-tensor errors of ``precision``'s graph against FP32 on a few preprocessed inputs.

    Returns:
        {"first_past_tolerance": {...} | None, "worst": [...], "limit": limit, "tensors": N}
    """
    reference = load_model(artifacts.verified_onnx(Precision.FP32))
    candidate = load_model(artifacts.verified_onnx(precision))
    # one item per run: every intermediate tensor of both graphs is held at once
    try:
        errors = compare_graphs(reference, candidate, [stack_feeds([f]) for f in feeds[:LOCALISE_ITEMS]])
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        # e.g. a converted FP16 model whose initializer types its annotations contradict: ONNX
        # Runtime runs it, shape inference refuses it; the verdict is the checks', not this
        return {"limit": limit, "tensors": 0, "first_past_tolerance": None, "worst": [],
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    producers = {out: (node.name, node.op_type) for node in reference.graph.node for out in node.output}

    def describe(e) -> dict[str, Any]:
        node, op = producers.get(e.name, ("?", "?"))
        return {"tensor": e.name, "node": node, "op_type": op, "relative_error": e.relative_error}

    first = next((e for e in errors if e.relative_error > limit), None)
    worst = sorted(errors, key=lambda e: -e.relative_error)[:5]
    return {"limit": limit, "tensors": len(errors),
            "first_past_tolerance": describe(first) if first else None,
            "worst": [describe(e) for e in worst]}


def summary(found: dict[str, Any]) -> str:
    """One line for the report notes."""
    first = found["first_past_tolerance"]
    if found.get("error"):
        return f"per-tensor check vs FP32 could not run: {found['error']}"
    if first is None:
        return (f"per-tensor check vs FP32: no tensor past relative error {found['limit']} "
                f"({found['tensors']} tensors compared)")
    return (f"first tensor past relative error {found['limit']} vs FP32: {first['tensor']!r} from "
            f"{first['op_type']} node {first['node']!r} ({first['relative_error']:.3g}); worst: "
            + ", ".join(f"{w['tensor']} {w['relative_error']:.3g}" for w in found["worst"][:3]))
