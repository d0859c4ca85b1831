"""``batchforge parity`` with its failure localisation guarded: a diagnostic workaround, not a fix.

Why: when an FP16/INT8 run fails a check, the gate localises the first tensor past tolerance
(parity/localise.py -> calibration/activations.py ``float_tensors``), which runs
``onnx.shape_inference.infer_shapes`` on the candidate model. batchforge's own FP16 model of the
PP-OCRv4 detector carries three FP32 initializers (val_62, val_101, val_102) whose value_info
says FLOAT16, so shape inference raises ``InferenceError: [TypeInferenceError] Inferred elem type
differs from existing elem type: (1) vs (10)``. That is no BatchforgeError, so it escapes the gate:
a traceback, exit code 1 (the code of "a check failed", not 2 "could not run"), and no report for
any precision of the call. ONNX Runtime runs the model fine.

This wrapper runs the same command line with the localisation's exception caught and written
into the run's notes; every check, limit and verdict is batchforge's own.

    python parity_guarded.py MODEL --precision fp32,fp16,int8 --data DIR --report FILE.json ...
"""

from __future__ import annotations

import sys

from batchforge.parity import gate, localise

_localise = gate._localise
_summary = localise.summary


def _guarded_localise(ctx):
    try:
        return _localise(ctx)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "first_past_tolerance": None, "worst": []}


def _guarded_summary(found):
    if "error" in found:
        return f"localisation failed (parity_guarded.py caught it): {found['error']}"
    return _summary(found)


gate._localise = _guarded_localise
localise.summary = _guarded_summary

if __name__ == "__main__":
    from batchforge.cli import main

    sys.argv = ["batchforge", "parity", *sys.argv[1:]]
    sys.exit(main())
