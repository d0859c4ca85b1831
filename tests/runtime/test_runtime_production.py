"""Production runtime: overlapped stages, stage profiling, allocation back-off, output sanity."""

import json

import numpy as np
import pytest
from helpers import random_images, sqrt_embedder_onnx, tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.errors import InputValidationError
from batchforge.runtime import Gallery, load_pipeline
from batchforge.runtime.guards import first_nonfinite, is_allocation_failure, nonfinite_outputs
from batchforge.runtime.images import write_image
from batchforge.runtime.jsonl import JsonlWriter
from batchforge.runtime.profiling import STAGES
from batchforge.runtime.results import ErrorRecord
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner
from batchforge.runtime.spec import ProfileRange

ORT_ALLOCATION_MESSAGE = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                          "running Conv node. Name:'conv' Status Message: Failed to allocate memory for "
                          "requested buffer of size 411041792")


def image_folder(tmp_path, dark: set[int], count: int = 7, name: str = "in"):
    """``count`` PNGs; the indices in ``dark`` are black, the others bright noise."""
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        image = np.zeros((12, 12, 3), np.uint8) if i in dark else rng.integers(200, 256, (12, 12, 3), dtype=np.uint8)
        write_image(folder / f"img{i:02d}.png", image)
    return sorted(folder.iterdir())


@pytest.fixture
def nan_artifacts(tmp_path):
    return write_artifact(tmp_path / "artifacts", sqrt_embedder_onnx(), tiny_spec(profile=ProfileRange(1, 4, 32)))


def open_pipeline(artifacts, **kw):
    return load_pipeline(artifacts.model, output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1, **kw)


def test_nonfinite_output_gives_that_item_an_error_record_naming_the_output(nan_artifacts, tmp_path):
    sources = image_folder(tmp_path, dark={2, 5})
    for workers in (0, 2):
        with open_pipeline(nan_artifacts) as pipe:
            results = list(pipe.run_sources(sources, batch_size=3, workers=workers))
        assert [r.source for r in results] == [str(s) for s in sources]
        assert [type(r).__name__ for r in results] == ["ReidResult"] * 2 + ["ErrorRecord"] + ["ReidResult"] * 2 + [
            "ErrorRecord", "ReidResult"]
        for bad in (results[2], results[5]):
            assert bad.error_type == "NonFiniteOutputError" and "'embedding'" in bad.message
        assert all(np.isfinite(r.embedding).all() for r in results if not isinstance(r, ErrorRecord))


def test_nonfinite_rows_are_found_per_item_and_per_tile():
    outputs = {"a": np.zeros((5, 2), np.float32), "b": np.zeros((5,), np.int64), "c": np.zeros(3, np.float16)}
    outputs["a"][3, 1] = np.inf
    assert nonfinite_outputs(outputs, [1, 2, 2]) == [[], [], ["a"]]  # rows 3..4 belong to item 2
    outputs["c"][0] = np.nan  # not batch-aligned: charged to every item
    assert nonfinite_outputs(outputs, [1, 1, 1, 1, 1]) == [["c"], ["c"], ["c"], ["a", "c"], ["c"]]
    assert first_nonfinite({"source": "x", "matches": [{"similarity": 0.5}, {"similarity": float("nan")}]}) \
        == "matches[1].similarity"


def test_jsonl_writer_replaces_a_nonfinite_record_and_keeps_the_file(tmp_path):
    path = tmp_path / "r.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"source": "a", "ok": True, "score": 0.5})
        written = writer.write({"source": "b", "ok": True, "score": float("inf")})
        writer.write({"source": "c", "ok": True, "score": 1.0})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["source"] for r in records] == ["a", "b", "c"] and written == records[1]
    assert records[1]["ok"] is False and records[1]["error"]["type"] == "NonFiniteOutputError"
    assert "'score'" in records[1]["error"]["message"]


def test_gallery_refuses_nonfinite_embeddings():
    embeddings = np.ones((3, 4), np.float32)
    embeddings[1, 2] = np.nan
    with pytest.raises(InputValidationError, match=r"1 of 3 hold NaN or inf.*'b'"):
        Gallery.from_embeddings(embeddings, ["a", "b", "c"], "m")


class FaultyAllocation:
    """Patches OnnxRuntimeRunner.infer_impl to fail like ONNX Runtime's allocator: for any batch
    above ``max_rows`` and for any batch holding a bright 'poison' row (mean above 2)."""

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.batches: list[int] = []
        self.real = OnnxRuntimeRunner.infer_impl

    def __call__(self, runner, feed):
        rows = next(iter(feed.values()))
        self.batches.append(len(rows))
        if len(rows) > self.max_rows or (rows.reshape(len(rows), -1).mean(axis=1) > 2.0).any():
            raise RuntimeError(ORT_ALLOCATION_MESSAGE)
        return self.real(runner, feed)


def test_allocation_failure_halves_the_batch_and_only_failing_items_get_records(tmp_path, monkeypatch):
    artifacts = write_artifact(tmp_path / "artifacts", tiny_embedder_onnx(), tiny_spec(profile=ProfileRange(1, 4, 32)))
    folder = tmp_path / "in"
    folder.mkdir()
    images = random_images(40, shape=(10, 10))
    images[13] = np.full((10, 10, 3), 255, np.uint8)  # fails even alone
    for i, image in enumerate(images):
        write_image(folder / f"img{i:02d}.png", image)
    sources = sorted(folder.iterdir())
    with open_pipeline(artifacts) as pipe:
        expected = [pipe([image], [str(s)])[0] for image, s in zip(images, sources)]
        fault = FaultyAllocation(max_rows=8)
        monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", lambda runner, feed: fault(runner, feed))
        results = list(pipe.run_sources(sources, batch_size=32, workers=2))
        assert pipe.allocation_limit == 8
    assert [r.source for r in results] == [str(s) for s in sources]  # exactly one result per input
    assert [i for i, r in enumerate(results) if isinstance(r, ErrorRecord)] == [13]
    assert results[13].error_type == "AllocationError" and "batch size 1" in results[13].message
    for i, (got, want) in enumerate(zip(results, expected)):
        if i != 13:
            np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-6)
    # the first batch of 32 is halved until it fits (around item 13 down to 1), its second half
    # goes at the size that worked (8, never 16 again), and so does the next batch (items 32..39)
    assert fault.batches == [32, 16, 8, 8, 4, 4, 2, 1, 1, 2, 8, 8, 8]


def test_other_inference_errors_still_raise():
    assert is_allocation_failure(MemoryError()) and is_allocation_failure(RuntimeError("CUDA out of memory."))
    assert not is_allocation_failure(RuntimeError("Invalid rank for input: images"))


def tiny_run(tmp_path, images):
    """The tiny embedder's artifacts and the images written as PNGs (sorted paths)."""
    artifacts = write_artifact(tmp_path / "artifacts", tiny_embedder_onnx(), tiny_spec())
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(images):
        write_image(folder / f"img{i:02d}.png", image)
    return artifacts, sorted(folder.iterdir())


def test_workers_give_identical_results_and_a_profile(tmp_path):
    artifacts, sources = tiny_run(tmp_path, random_images(11, shape=(9, 14)))
    sources[4].write_bytes(b"broken")
    lines = {}
    with open_pipeline(artifacts) as pipe:
        for workers in (0, 1, 3):
            out = tmp_path / f"w{workers}.jsonl"
            with JsonlWriter(out) as writer:
                for result in pipe.run_sources(sources, batch_size=3, workers=workers):
                    writer.write(result)
            lines[workers] = out.read_bytes()
            stats = pipe.stats()
            assert set(stats["stages"]) == set(STAGES) and stats["workers"] == workers
            assert stats["results"] == 11 and stats["stages"]["infer"]["items"] == 10
            assert [stats["stages"][s]["items"] for s in ("read", "decode", "preprocess")] == [11, 10, 10]
            assert stats["bottleneck"] in STAGES
    assert lines[0] == lines[1] == lines[3]
    assert lines[0].count(b"\n") == 11 and b'"ok": false' in lines[0]


def test_stopping_early_leaves_no_thread_running(tmp_path):
    import threading

    artifacts, sources = tiny_run(tmp_path, random_images(30, shape=(9, 9)))
    before = set(threading.enumerate())
    with open_pipeline(artifacts) as pipe:
        stream = pipe.run_sources(sources, batch_size=2, workers=2)
        assert next(stream).source.endswith("img00.png")
        stream.close()
    assert set(threading.enumerate()) - before == set()


def test_preprocessing_is_unchanged_bit_for_bit():
    """The fused normalise-and-transpose gives the bits of the former broadcast formula."""
    from batchforge.runtime.preprocess import letterbox_geometry, preprocess_image, resize_float
    from batchforge.runtime.spec import Preprocess, ResizeMode

    image = random_images(1, shape=(37, 23))[0]
    for pre in (Preprocess(16, 20), Preprocess(16, 20, ResizeMode.LETTERBOX, channel_order="BGR")):
        pixels = image.astype(np.float32)
        if pre.resize is ResizeMode.LETTERBOX:
            new_h, new_w, top, left = letterbox_geometry(37, 23, 16, 20)
            canvas = np.full((16, 20, 3), pre.pad_value, np.float32)
            canvas[top:top + new_h, left:left + new_w] = resize_float(pixels, new_h, new_w)
            pixels = canvas[:, :, ::-1]
        else:
            pixels = resize_float(pixels, 16, 20)
        mean = np.asarray(pre.mean, np.float32) * 255.0
        reference = ((pixels - mean) * (1.0 / (np.asarray(pre.std, np.float32) * 255.0))).transpose(2, 0, 1)
        chw, _ = preprocess_image(image, pre)
        assert chw.flags.c_contiguous and chw.dtype == np.float32
        np.testing.assert_array_equal(chw, reference)
