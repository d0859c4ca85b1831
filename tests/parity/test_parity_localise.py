"""Localisation of a lower-precision failure that shape inference cannot run: the report keeps
the checks' verdict and says why the per-tensor walk did not run (no traceback, no lost report)."""

import numpy as np
import onnx

from batchforge.parity import localise
from batchforge.runtime.artifacts import Precision


def test_a_model_shape_inference_refuses_is_noted_not_raised(monkeypatch):
    def refuse(reference, candidate, feeds):
        raise onnx.shape_inference.InferenceError(
            "[TypeInferenceError] Inferred elem type differs from existing elem type: (1) vs (10)\nmore")

    monkeypatch.setattr(localise, "compare_graphs", refuse)
    monkeypatch.setattr(localise, "load_model", lambda path: None)

    class Artifacts:
        def verified_onnx(self, precision):
            return f"model.{precision.value}.onnx"

    found = localise.localise(Artifacts(), Precision.FP16, [{"x": np.zeros(2, np.float32)}], 0.2)
    assert found["first_past_tolerance"] is None and found["worst"] == []
    assert localise.summary(found) == ("per-tensor check vs FP32 could not run: InferenceError: "
                                       "[TypeInferenceError] Inferred elem type differs from existing elem type: "
                                       "(1) vs (10)")
