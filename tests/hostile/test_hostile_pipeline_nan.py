"""Issue #29 case 8: the primary API, ``pipeline(images)``, applies the output guard that
``run_sources`` and the batcher apply: a non-finite embedding is that item's error record."""

import json

import numpy as np
from helpers import sqrt_embedder_onnx, tiny_spec, write_artifact

from batchforge.runtime import load_pipeline
from batchforge.runtime.guards import first_nonfinite
from batchforge.runtime.results import ErrorRecord


def test_pipeline_call_gives_a_nonfinite_item_its_record_and_keeps_the_others(tmp_path):
    artifacts = write_artifact(tmp_path / "artifacts", sqrt_embedder_onnx(), tiny_spec())
    rng = np.random.default_rng(0)
    bright = [rng.integers(200, 256, (12, 12, 3), dtype=np.uint8) for _ in range(3)]
    dark = np.zeros((12, 12, 3), np.uint8)  # negative normalised mean: Sqrt gives NaN
    with load_pipeline("tiny", output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1) as pipe:
        results = pipe([bright[0], dark, bright[1], bright[2]], sources=["a", "dark", "b", "c"])
    assert [r.source for r in results] == ["a", "dark", "b", "c"]
    bad = results[1]
    assert isinstance(bad, ErrorRecord) and bad.error_type == "NonFiniteOutputError"
    assert bad.message.startswith("dark: output(s) 'embedding' hold NaN or infinite values")
    records = [r.to_record() for r in results]
    assert [r["ok"] for r in records] == [True, False, True, True]
    assert all(first_nonfinite(r) is None for r in records)
    json.dumps(records, allow_nan=False)  # strictly finite JSON
    assert all(np.isfinite(r.embedding).all() for r in results if not isinstance(r, ErrorRecord))
