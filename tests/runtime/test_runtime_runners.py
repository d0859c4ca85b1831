import numpy as np
import pytest
from helpers import tiny_embedder_onnx

from batchforge.errors import BackendUnavailableError, BatchforgeError, InputValidationError
from batchforge.runtime.batching import chunk_slices, infer_in_chunks, stack_feeds
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner, OrtOptions, provider_chain
from batchforge.runtime.spec import ProfileRange


@pytest.fixture
def runner():
    r = OnnxRuntimeRunner(tiny_embedder_onnx().SerializeToString(), profile=ProfileRange(1, 2, 4),
                          options=OrtOptions(intra_op_threads=1))
    with r:
        yield r


def batch(n, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(dtype)


def test_infer_returns_named_outputs(runner):
    out = runner.infer({"images": batch(3)})
    assert list(out) == ["embedding"]
    assert out["embedding"].shape == (3, 5)
    assert runner.output_names == ("embedding",)
    assert runner.providers == ["CPUExecutionProvider"]


def test_inactive_runner_refuses():
    r = OnnxRuntimeRunner(tiny_embedder_onnx().SerializeToString())
    with pytest.raises(BatchforgeError, match="not active"):
        r.infer({"images": batch(1)})


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ({"images": batch(2)[0]}, "expected rank 4"),
        ({"images": batch(2, np.float64)}, "expected dtype float32, got float64"),
        ({"images": np.zeros((2, 4, 8, 8), np.float32)}, "dim 1 expected 3, got 4"),
        ({"pixels": batch(2)}, "input names do not match"),
        ({"images": batch(5)}, "outside the engine profile"),
        ({"images": np.zeros((0, 3, 8, 8), np.float32)}, "empty batch"),
        ({"images": [[1.0]]}, "expected a numpy array, got list"),
    ],
)
def test_validation_names_input_expected_and_got(runner, feed, message):
    with pytest.raises(InputValidationError, match=message) as info:
        runner.infer(feed)
    assert "images" in str(info.value) or "names" in str(info.value) or "batch" in str(info.value)


def test_nan_and_inf_are_refused(runner):
    x = batch(2)
    x[1, 0, 0, 0] = np.nan
    x[0, 0, 0, 1] = np.inf
    with pytest.raises(InputValidationError, match="2 NaN/Inf"):
        runner.infer({"images": x})


def test_torch_tensor_is_named_without_importing_torch(runner, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("torch")
    fake.Tensor = type("Tensor", (), {})
    monkeypatch.setitem(sys.modules, "torch", fake)
    with pytest.raises(InputValidationError, match=r"torch\.Tensor"):
        runner.infer({"images": fake.Tensor()})


def test_chunked_inference_keeps_order_and_matches_single_batches(runner):
    x = batch(11, seed=3)
    whole = infer_in_chunks(runner, {"images": x})["embedding"]
    singles = np.concatenate([runner.infer({"images": x[i : i + 1]})["embedding"] for i in range(11)])
    np.testing.assert_allclose(whole, singles, rtol=0, atol=1e-6)
    assert [s.stop - s.start for s in chunk_slices(11, 4)] == [4, 4, 3]


def test_chunk_size_above_profile_max_is_refused(runner):
    with pytest.raises(InputValidationError, match="above the engine profile max"):
        infer_in_chunks(runner, {"images": batch(3)}, max_batch=9)


def test_stack_feeds_checks_names():
    with pytest.raises(InputValidationError, match="item 1"):
        stack_feeds([{"a": np.zeros(2)}, {"b": np.zeros(2)}])
    with pytest.raises(InputValidationError, match="empty"):
        stack_feeds([])


def test_missing_provider_fails_fast_naming_available():
    r = OnnxRuntimeRunner(tiny_embedder_onnx().SerializeToString(),
                          options=OrtOptions(providers=("CUDAExecutionProvider",)))
    with pytest.raises(BackendUnavailableError, match="CPUExecutionProvider"):
        r.activate()


def test_provider_chain_for_tensorrt_carries_profile_and_cache(tmp_path):
    providers, options = provider_chain("tensorrt", trt_cache_dir=str(tmp_path), trt_fp16=True,
                                        trt_profile=[("images", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))])
    assert providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    trt = options[0]
    assert trt["trt_profile_max_shapes"] == "images:8x3x8x8"
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path)
    with pytest.raises(BatchforgeError, match="unknown ONNX Runtime device"):
        provider_chain("tpu")


def test_ort_options_validation():
    with pytest.raises(BatchforgeError, match="graph_optimization"):
        OrtOptions(graph_optimization="max")
    with pytest.raises(BatchforgeError, match="one dict per provider"):
        OrtOptions(provider_options=({}, {}))


@pytest.mark.parametrize("policy, spinning", [(None, None), ("ACTIVE", None), ("passive", "0"), ("PASSIVE", "0")])
def test_ort_threads_spin_unless_omp_wait_policy_is_passive(monkeypatch, policy, spinning):
    """OMP_WAIT_POLICY=PASSIVE (set by the main job for concurrent commands) turns off ORT's
    spinning intra- and inter-op threads, in the runtime's sessions and in calibration's."""
    import onnxruntime as ort

    from batchforge.calibration.activations import follow_wait_policy
    from batchforge.runtime.runners.onnxruntime import session_options

    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    for so in (session_options(ort, OrtOptions()), follow_wait_policy(ort.SessionOptions())):
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            if spinning is None:
                with pytest.raises(RuntimeError):  # not set: ORT's default (spinning) applies
                    so.get_session_config_entry(key)
            else:
                assert so.get_session_config_entry(key) == spinning
