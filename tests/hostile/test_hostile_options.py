"""Issue #29 case 4: every numeric option of the runtime's public API is a finite number in its
range, or one ConfigError line; an infinite delay or timeout no longer kills the batcher's threads."""

import math
import threading

import pytest
from helpers import random_images, tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.errors import EXIT_COULD_NOT_RUN, ConfigError
from batchforge.runtime import load_pipeline
from batchforge.runtime.batcher import MAX_DELAY_MS, MAX_TIMEOUT_MS, DynamicBatcher
from batchforge.runtime.pipelines.reid import ReidPipeline
from batchforge.runtime.runners.onnxruntime import OrtOptions


@pytest.fixture
def pipeline(tmp_path):
    artifacts = write_artifact(tmp_path / "artifacts", tiny_embedder_onnx(), tiny_spec())
    with load_pipeline("tiny", output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1) as pipe:
        yield pipe


def batcher_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("batchforge-batcher")]


def refused(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    line = info.value.one_line()
    assert "\n" not in line and info.value.exit_code == EXIT_COULD_NOT_RUN
    return line


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_delay_ms": math.inf}, "max_delay_ms: expected a finite number from 0 to 60,000 ms, got float inf"),
    ({"max_delay_ms": 1e13}, "max_delay_ms: expected a finite number from 0 to 60,000 ms, got float 10000000000000.0"),
    ({"max_delay_ms": math.nan}, "max_delay_ms: expected a finite number from 0 to 60,000 ms, got float nan"),
    ({"max_delay_ms": -1}, "max_delay_ms: expected a finite number from 0 to 60,000 ms, got int -1"),
    ({"max_delay_ms": "5"}, "max_delay_ms: expected a finite number from 0 to 60,000 ms, got str '5'"),
    ({"timeout_ms": math.inf}, "timeout_ms: expected a finite number above 0 and at most 86,400,000 ms, got "
                               "float inf (None: no timeout)"),
    ({"timeout_ms": 0}, "timeout_ms: expected a finite number above 0 and at most 86,400,000 ms, got int 0 "
                        "(None: no timeout)"),
    ({"max_queue": True}, "max_queue: expected an integer from 1 to 10,000,000, got bool True"),
    ({"max_batch": 2.0}, "max_batch: expected an integer from 1 to 8, got float 2.0"),
])
def test_batcher_options_out_of_range_are_one_line_and_start_no_thread(pipeline, kwargs, message):
    before = batcher_threads()
    line = refused(lambda: DynamicBatcher(pipeline, **kwargs))
    assert line == f"invalid DynamicBatcher argument: {message}" + (
        " (max_batch is at most the pipeline's max batch 8)" if "max_batch" in message else "")
    assert batcher_threads() == before


def test_every_bad_batcher_option_is_named_at_once(pipeline):
    line = refused(lambda: DynamicBatcher(pipeline, max_batch=0, max_delay_ms=math.inf, timeout_ms=-1))
    assert line.startswith("invalid DynamicBatcher arguments: max_batch: ")
    assert "; max_delay_ms: " in line and "; timeout_ms: " in line
    assert line.endswith("(max_batch is at most the pipeline's max batch 8)")


def test_submit_and_close_refuse_an_infinite_wait_and_the_batcher_keeps_serving(pipeline):
    image = random_images(1)[0]
    with DynamicBatcher(pipeline, max_batch=1, max_delay_ms=MAX_DELAY_MS, timeout_ms=MAX_TIMEOUT_MS) as batcher:
        line = refused(lambda: batcher.submit(image, "forever", timeout_ms=math.inf))
        assert line.startswith("invalid DynamicBatcher.submit argument: timeout_ms: ") and "got float inf" in line
        assert batcher.stats()["queued"] == 0
        line = refused(lambda: batcher.close(timeout=math.inf))
        assert "timeout: expected a finite number from 0 to 86,400 s, got float inf" in line
        assert batcher.submit(image, "fine").result(timeout=30).source == "fine"  # the longest settings serve
        assert len(batcher_threads()) == 2  # neither thread died of an OverflowError
    assert batcher_threads() == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "batch_size: expected an integer from 1 to 65,536, got int 0"),
    ({"batch_size": 2.5}, "batch_size: expected an integer from 1 to 65,536, got float 2.5"),
    ({"batch_size": 10**9}, "batch_size: expected an integer from 1 to 65,536, got int 1000000000"),
    ({"workers": -1}, "workers: expected an integer from 0 to 256, got int -1"),
    ({"workers": math.inf}, "workers: expected an integer from 0 to 256, got float inf"),
])
def test_run_sources_options_out_of_range_are_one_line(pipeline, tmp_path, kwargs, message):
    line = refused(lambda: list(pipeline.run_sources([tmp_path / "never_read.png"], **kwargs)))
    assert line == f"invalid run_sources argument: {message}"


def test_pipeline_and_runner_options_out_of_range_are_one_line(pipeline):
    line = refused(lambda: ReidPipeline(pipeline.spec, pipeline.runner, max_pixels=0))
    assert line == ("invalid ReidPipeline argument: max_pixels: expected an integer from 1 to "
                    "1,000,000,000,000, got int 0")
    line = refused(lambda: OrtOptions(intra_op_threads=-1, inter_op_threads=math.nan))
    assert line == ("invalid OrtOptions arguments: intra_op_threads: expected an integer from 0 to 1,024, got int -1; "
                    "inter_op_threads: expected an integer from 0 to 1,024, got float nan")
