"""DynamicBatcher: concurrent callers, coalesced batches, back-pressure, timeouts, draining;
runner thread-safety (one ONNX Runtime session shared by many threads)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import random_images, tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.errors import BatcherClosedError, ConfigError, InputValidationError, QueueFullError
from batchforge.runtime import DynamicBatcher, load_pipeline
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner

WAIT = 20  # seconds: a safety bound so a broken batcher fails the test instead of hanging it


@pytest.fixture
def pipeline(tmp_path):
    artifacts = write_artifact(tmp_path / "artifacts", tiny_embedder_onnx(), tiny_spec())
    with load_pipeline("tiny", output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1) as pipe:
        yield pipe


def test_many_clients_get_the_offline_results(pipeline):
    images = random_images(400, shape=(11, 13))
    offline = pipeline(images, [f"c{i // 50}/r{i % 50}" for i in range(400)])  # batched at the profile max

    def client(index: int):
        futures = [batcher.submit(images[i], source=f"c{index}/r{i % 50}") for i in range(index * 50, index * 50 + 50)]
        return [f.result(timeout=WAIT) for f in futures]

    with DynamicBatcher(pipeline, max_batch=8, max_delay_ms=2, max_queue=400) as batcher:
        with ThreadPoolExecutor(8) as clients:
            served = [r for part in clients.map(client, range(8)) for r in part]
        stats = batcher.stats()
    assert [r.source for r in served] == [r.source for r in offline]
    for got, want in zip(served, offline):
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-6)
    assert stats["requests"] == 400 and sum(k * v for k, v in stats["batch_sizes"].items()) == 400
    assert max(stats["batch_sizes"]) <= 8 and stats["batches"] == sum(stats["batch_sizes"].values())
    assert stats["queue_wait_ms"]["p50"] <= stats["queue_wait_ms"]["p99"]


class Gate:
    """Patches OnnxRuntimeRunner.infer_impl to hold every batch until ``release``."""

    def __init__(self):
        self.entered, self.open = threading.Event(), threading.Event()
        self.real = OnnxRuntimeRunner.infer_impl

    def __call__(self, runner, feed):
        self.entered.set()
        assert self.open.wait(WAIT)
        return self.real(runner, feed)


def test_full_queue_raises_and_a_stale_request_times_out(pipeline, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", lambda runner, feed: gate(runner, feed))
    image = random_images(1)[0]
    batcher = DynamicBatcher(pipeline, max_batch=1, max_delay_ms=0, max_queue=2)
    try:
        first = batcher.submit(image, "first")
        assert gate.entered.wait(WAIT)  # the batcher's thread holds it in inference
        stale = batcher.submit(image, "stale", timeout_ms=500)
        queued = batcher.submit(image, "queued")
        with pytest.raises(QueueFullError, match="queue is full \\(2 requests waiting\\)"):
            batcher.submit(image, "one too many")
        assert isinstance(stale.exception(timeout=WAIT), TimeoutError)  # its 500 ms pass while queued
    finally:
        gate.open.set()
        batcher.close(timeout=WAIT)
    assert first.result(timeout=WAIT).source == "first" and queued.result(timeout=WAIT).source == "queued"
    with pytest.raises(TimeoutError, match=r"stale: waited .* past its timeout of 500\.0 ms"):
        stale.result(timeout=WAIT)
    stats = batcher.stats()
    assert (stats["requests"], stats["timeouts"], stats["rejected"]) == (2, 1, 1)
    with pytest.raises(BatcherClosedError):
        batcher.submit(image)


def test_close_drains_without_waiting_for_the_delay(pipeline):
    images = random_images(5)
    batcher = DynamicBatcher(pipeline, max_batch=8, max_delay_ms=60_000)
    futures = [batcher.submit(image) for image in images]
    batcher.close(timeout=WAIT)
    assert not batcher._thread.is_alive()
    assert [f.result(timeout=0).source for f in futures] == [f"request{i}" for i in range(5)]


def test_a_bad_item_fails_its_future_only(pipeline):
    with DynamicBatcher(pipeline, max_batch=4, max_delay_ms=1) as batcher:
        bad = batcher.submit(np.zeros((4, 4), np.float64), "floats")
        good = batcher.submit(random_images(1)[0], "fine")
        with pytest.raises(InputValidationError, match="floats: expected uint8 or uint16"):
            bad.result(timeout=WAIT)
        assert good.result(timeout=WAIT).source == "fine"


def test_settings_are_checked(pipeline):
    with pytest.raises(ConfigError, match="max_batch: expected an integer from 1 to 8, got int 9"):
        DynamicBatcher(pipeline, max_batch=9)
    with pytest.raises(ConfigError, match="max_queue"):
        DynamicBatcher(pipeline, max_queue=0)


def test_one_onnxruntime_session_serves_many_threads(pipeline):
    runner = pipeline.runner
    feeds = [{"images": np.random.default_rng(i).normal(size=(3, 3, 8, 8)).astype(np.float32)} for i in range(16)]
    sequential = [runner.infer(feed)["embedding"] for feed in feeds]
    with ThreadPoolExecutor(4) as threads:
        concurrent = list(threads.map(lambda feed: runner.infer(feed)["embedding"], feeds))
    for a, b in zip(concurrent, sequential):
        np.testing.assert_array_equal(a, b)


def test_a_queued_request_times_out_at_its_deadline_while_a_batch_is_in_inference(pipeline, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", lambda runner, feed: gate(runner, feed))
    image = random_images(1)[0]
    batcher = DynamicBatcher(pipeline, max_batch=1, max_delay_ms=0)
    try:
        first = batcher.submit(image, "first")
        assert gate.entered.wait(WAIT)  # the batcher's thread is held in inference
        late = batcher.submit(image, "late", timeout_ms=20)
        error = late.exception(timeout=WAIT)  # arrives while the first batch is still held
        assert not gate.open.is_set() and not first.done()
        assert isinstance(error, TimeoutError) and "late: waited" in str(error)
        assert batcher.stats()["queued"] == 0
    finally:
        gate.open.set()
        batcher.close(timeout=WAIT)
    assert first.result(timeout=WAIT).source == "first"
    assert not batcher._reaper.is_alive()
    assert batcher.stats()["timeouts"] == 1
