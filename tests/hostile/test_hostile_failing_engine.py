"""Issue #29 case 3: one input the engine cannot run costs only that input; a sticky engine
error stops `run` with one line (exit 2, nothing written) and makes the batcher refuse work."""

import json

import numpy as np
import pytest
from failing_engines import (
    OUT_OF_RANGE,
    STICKY,
    BrokenSession,
    index_files,
    index_item,
    lookup_artifacts,
    open_lookup,
)
from hostile_files import BACKEND

from batchforge.cli import main
from batchforge.errors import EngineUnhealthyError
from batchforge.runtime.batcher import DynamicBatcher
from batchforge.runtime.results import ErrorRecord
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner


@pytest.fixture
def artifacts(tmp_path):
    return lookup_artifacts(tmp_path / "artifacts")


def _run(artifacts, inputs, out, *extra):
    return main(["run", "lookup", "--input", str(inputs), "--output", str(out),
                 "--output-dir", str(artifacts.root), *BACKEND, *extra])


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_item_the_engine_refuses_gets_its_record_and_the_other_five_are_written(artifacts, tmp_path, capfd,
                                                                                   workers):
    index_files(tmp_path / "in", 6, bad={2})
    out = tmp_path / "out" / "r.jsonl"
    assert _run(artifacts, tmp_path / "in", out, "--workers", workers) == 1
    captured = capfd.readouterr()
    err = captured.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ok"] for r in records] == [True, True, False, True, True, True]
    bad = records[2]["error"]
    assert bad["type"] == "InferenceError" and OUT_OF_RANGE in bad["message"]
    assert "item2.npy: the engine could not run this input even alone (InvalidArgument:" in bad["message"]
    assert records[3]["outputs"]["rows"]["values"] == [[12.0, 13.0, 14.0, 15.0], [4.0, 5.0, 6.0, 7.0]]
    assert "5/6 inputs processed, 1 error record(s)" in captured.out
    assert "Traceback" not in err and "sequential_executor" not in err  # ORT's own log stays quiet
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.jsonl"]  # no partial, no side file


def test_a_batch_of_only_bad_items_is_theirs_while_a_probe_still_runs(artifacts):
    with open_lookup(artifacts) as pipe:
        first = pipe([index_item(0, bad=True)])  # nothing ran yet: the probe is an all-zero index
        results = pipe([index_item(i, bad=True) for i in range(3)])  # every item fails alone
        after = pipe([index_item(4)])
        assert pipe.health is None
    assert [type(r).__name__ for r in first + results] == ["ErrorRecord"] * 4
    assert all(r.error_type == "InferenceError" and OUT_OF_RANGE in r.message for r in first + results)
    assert after[0].outputs["rows"][0].tolist() == [16.0, 17.0, 18.0, 19.0]


def test_a_sticky_engine_error_stops_run_with_one_line_and_nothing_written(artifacts, tmp_path, capfd,
                                                                           monkeypatch):
    def broken(self, feed):
        raise RuntimeError(STICKY)

    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", broken)
    index_files(tmp_path / "in", 6, bad=set())
    out = tmp_path / "out" / "r.jsonl"
    assert _run(artifacts, tmp_path / "in", out) == 2
    err = capfd.readouterr().err
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1
    assert line[0].startswith("batchforge run: error: runner 'lookup:fp32:onnxruntime-cpu' is unhealthy: ")
    assert "4 input(s) failed alone and an all-zero input fails too (RuntimeError: " in line[0]
    assert "CUDA failure 700" in line[0] and "the run stopped after 0 of 6 inputs and wrote nothing" in line[0]
    assert line[0].endswith("(check the device with `batchforge doctor`, then run again)")
    assert "Traceback" not in err and "skipped" not in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_an_engine_that_breaks_mid_run_leaves_no_partial_file(artifacts, tmp_path, capfd, monkeypatch):
    real, calls = OnnxRuntimeRunner.infer_impl, []

    def breaks_after_one_batch(self, feed):
        calls.append(len(feed["index"]))
        if len(calls) > 1:
            raise RuntimeError(STICKY)
        return real(self, feed)

    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", breaks_after_one_batch)
    index_files(tmp_path / "in", 6, bad=set())
    out = tmp_path / "r.jsonl"
    assert _run(artifacts, tmp_path / "in", out, "--workers", "0") == 2
    err = capfd.readouterr().err
    assert "2 input(s) failed alone and the last input that ran (" in err and "item0.npy) fails too" in err
    assert "the run stopped after 4 of 6 inputs and wrote nothing to" in err and "Traceback" not in err
    assert calls == [4, 2, 1, 1, 1]  # the good batch; the batch of 2, each alone, the probe
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "in"]  # no jsonl, partial or npz


def test_the_batcher_fails_only_the_bad_request_of_a_batch(artifacts):
    with open_lookup(artifacts) as pipe, DynamicBatcher(pipe, max_batch=4, max_delay_ms=60_000) as batcher:
        # the long delay makes the four one batch: it runs once the fourth arrives
        futures = [batcher.submit(index_item(i, bad=i == 1), source=f"r{i}") for i in range(4)]
        results = [f.result(timeout=30) for f in futures]
        assert batcher.stats()["batch_sizes"] == {4: 1} and batcher.health is None
    assert [type(r).__name__ for r in results] == ["TensorsResult", "ErrorRecord", "TensorsResult", "TensorsResult"]
    assert results[1].error_type == "InferenceError" and OUT_OF_RANGE in results[1].message
    assert results[2].outputs["rows"][0].tolist() == [8.0, 9.0, 10.0, 11.0]


def test_a_sticky_error_makes_the_batcher_refuse_work_and_say_why(artifacts):
    with open_lookup(artifacts) as pipe:
        runner = pipe.runner
        runner.session = session = BrokenSession(runner.session)
        ok = pipe([index_item(0)], sources=["before"])[0]
        with DynamicBatcher(pipe, max_batch=4, max_delay_ms=60_000) as batcher:
            session.broken = True
            futures = [batcher.submit(index_item(i), source=f"r{i}") for i in range(4)]
            for future in futures:
                with pytest.raises(EngineUnhealthyError, match="the last input that ran \\(before\\) fails too"):
                    future.result(timeout=30)
            calls = session.calls
            with pytest.raises(EngineUnhealthyError, match="is unhealthy: 4 input\\(s\\) failed alone") as info:
                batcher.submit(index_item(0), source="later")
            assert STICKY in info.value.one_line() and "\n" not in info.value.one_line()
            assert batcher.health == info.value.one_line() == batcher.stats()["health"]
            assert batcher.stats()["rejected"] == 1 and pipe.health is not None
            assert session.calls == calls  # refused before the engine was asked again
        pipe.deactivate()
        pipe.activate()  # a fresh session starts healthy
        assert pipe.health is None and not isinstance(pipe([index_item(3)])[0], ErrorRecord)
    assert ok.outputs["rows"].shape == (2, 4)
    assert calls == 1 + 1 + 4 + 1  # one good item; then the batch of 4, each of them alone, the probe


def test_a_sticky_error_after_good_batches_stops_the_python_api_too(artifacts):
    with open_lookup(artifacts) as pipe:
        assert np.isfinite(pipe([index_item(1)])[0].outputs["rows"]).all()
        pipe.runner.session = session = BrokenSession(pipe.runner.session)
        session.broken = True
        with pytest.raises(EngineUnhealthyError, match="the last input that ran \\(0\\) fails too"):
            pipe([index_item(2), index_item(3)])
        calls = session.calls
        with pytest.raises(EngineUnhealthyError, match="CUDA failure 700"):
            pipe([index_item(4)])
        assert session.calls == calls
