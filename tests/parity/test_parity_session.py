"""ParitySession caching: an ensemble checked before its members must not leave them without an
engine (their decoded checks need the pipeline, not only the raw outputs)."""

import numpy as np

from batchforge.parity import session as session_module
from batchforge.parity.session import EvalItem, EvalSet, ParitySession
from batchforge.runtime.artifacts import Precision


class FakePipeline:
    max_batch = 4

    def __init__(self, loads):
        loads.append(self)
        self.active = False

    def activate(self):
        self.active = True

    def deactivate(self):
        self.active = False

    def prepare(self, item, source):
        return type("Prepared", (), {"feed": {"x": item}})()

    def infer(self, feed):
        return {"y": feed["x"] * 2}


def test_a_released_run_is_run_again_for_a_caller_that_needs_the_engine(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(session_module, "load_pipeline", lambda *a, **k: FakePipeline(loads))
    session = ParitySession(tmp_path, "onnxruntime", show_progress=False)
    items = EvalSet("s", tuple(EvalItem(str(i), np.full(3, i, np.float32)) for i in range(5)))

    first = session.engine_run("m", Precision.FP32, items)
    session.release("m", Precision.FP32)  # as an ensemble does with its members
    kept = session.engine_run("m", Precision.FP32, items, raw_only=True)
    assert kept.pipeline is None and len(loads) == 1  # the raw outputs serve an ensemble as they are
    np.testing.assert_array_equal(kept.raw["y"], first.raw["y"])

    again = session.engine_run("m", Precision.FP32, items)
    assert again.pipeline is not None and again.pipeline.active and len(loads) == 2
    np.testing.assert_array_equal(again.raw["y"], np.stack([i.data * 2 for i in items.items]))
