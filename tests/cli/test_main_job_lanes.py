"""The main job's lanes: every zoo model in exactly one lane, an ensemble's members together."""

import json

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def main_job():
    return load_script("main_job")


MODELS = [{"name": n} for n in ("anomaly", "detector", "facepose", "keypoints", "ptycho",
                                "reid_a", "reid_b", "reid_c")]
ENSEMBLES = [{"name": "reid_ensemble", "ensemble": {"reid_a": 1.0, "reid_b": 1.0, "reid_c": 1.0}}]


@pytest.mark.parametrize("jobs", [1, 2, 3, 8])
def test_lanes_cover_the_zoo_once_with_ensembles_by_name(main_job, jobs):
    lanes = main_job.lanes(MODELS, ENSEMBLES, jobs)
    names = [n for lane in lanes for n in lane]
    assert sorted(names) == ["anomaly", "detector", "facepose", "keypoints", "ptycho", "reid_ensemble"]
    assert 1 <= len(lanes) <= jobs and all(lanes)


def test_two_lanes_give_the_ensemble_a_lane_of_its_own(main_job):
    assert main_job.lanes(MODELS, ENSEMBLES, 2) == [["reid_ensemble"],
                                                    ["anomaly", "detector", "facepose", "keypoints", "ptycho"]]
    assert main_job.lanes(MODELS, ENSEMBLES, 1) == [["reid_ensemble", "anomaly", "detector", "facepose",
                                                     "keypoints", "ptycho"]]


def test_balanced_lanes_split_the_measured_cost_evenly_and_keep_every_model(main_job):
    costs = main_job.MEASURED_SECONDS["calibrate"]
    models = [{"name": n} for n in costs] + [{"name": "unmeasured"}]
    lanes = main_job.balanced(models, "calibrate", 2)
    assert sorted(n for lane in lanes for n in lane) == sorted(m["name"] for m in models)
    median = sorted(costs.values())[len(costs) // 2]
    totals = [sum(costs.get(n, median) for n in lane) for lane in lanes]
    assert max(totals) - min(totals) <= min(costs.values()) + median  # within one small model
    (single,) = main_job.balanced(models, "convert", 1)
    assert sorted(single) == sorted(m["name"] for m in models) and single[0] == "reid_vit_b_16"


def test_the_costlier_ensemble_gets_the_own_lane(main_job):
    both = [{"name": "mtcnn", "ensemble": {"mtcnn_pnet": None}}, *ENSEMBLES]
    models = [*MODELS, {"name": "mtcnn_pnet"}]
    assert main_job.lanes(models, both, 2)[0] == ["reid_ensemble"]
    assert "mtcnn" in main_job.lanes(models, both, 2)[1]


def test_backend_auto_is_decided_and_said_once_for_every_stage(main_job, capsys):
    """The main job passes one resolved backend to each build/parity/bench/run command: a fresh
    clone without TensorRT printed `backend auto -> onnxruntime ...` once per build (46 times)."""
    from batchforge.runtime.backends import Backend, probe_backends

    assert main_job.resolve_backend("onnxruntime") == "onnxruntime"
    assert main_job.resolve_backend("tensorrt") == "tensorrt"
    assert capsys.readouterr().err == ""
    trt = next(s for s in probe_backends() if s.backend is Backend.TENSORRT)
    chosen = main_job.resolve_backend("auto")
    err = capsys.readouterr().err
    if trt.available:
        assert chosen == "tensorrt" and err == ""
    else:
        assert chosen == "onnxruntime"
        assert err.count("TensorRT is not usable here") == 1 and err.startswith("main job: backend auto")


def _gate(model: str, status: str, failing: str | None = None) -> dict:
    checks = [{"name": "raw_cosine[out]", "passed": True}]
    if failing:
        checks.append({"name": failing, "passed": False})
    return {"verdict": "FAILED" if failing else "PASSED",
            "reports": [{"model": model, "precision": "int8", "status": status, "checks": checks}]}


def test_the_summary_joins_the_zoo_gate_and_each_trained_model_gate(main_job, tmp_path, capsys):
    zoo, trained, missing = tmp_path / "parity.json", tmp_path / "trained.ppocr_cls.parity.json", tmp_path / "no.json"
    zoo.write_text(json.dumps(_gate("detector", "KNOWN FAILURE", "raw_max_rel[scores]")))
    trained.write_text(json.dumps(_gate("ppocr_cls", "failed", "row_cosine_min[direction]")))
    main_job.print_summary([zoo, trained, missing], {}, {"trained": 1.0}, {"ppocr_cls": {"fp32": 1.0, "int8": 0.86}})
    out = capsys.readouterr().out
    assert "known detector [int8]: raw_max_rel[scores]" in out
    assert "FAIL  ppocr_cls [int8]: row_cosine_min[direction]" in out
    assert "slower than fp32 on this backend: ppocr_cls int8 0.86x" in out
    assert f"parity verdict: FAILED (report: {trained}" in out and f"parity verdict: missing (report: {missing}" in out


@pytest.mark.parametrize(("codes", "worst"), [((0, 0), 0), ((0, 1), 1), ((1, 2), 2), ((2, 0), 2)])
def test_the_job_exits_with_the_worse_gate(main_job, codes, worst):
    assert main_job.worst_exit(*codes) == worst


def _runs(**statuses: str) -> dict:
    ok = [{"name": "a", "passed": True}, {"name": "b", "passed": True},
          {"name": "plain", "passed": True, "role": "shown"}]
    return {p: {"status": s, "checks": ok} for p, s in statuses.items()}


def test_what_ships_is_the_fastest_passing_precision_and_near_ties_go_higher(main_job, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "calibration.json").write_text(json.dumps(
        {"excluded_by_sensitivity": ["n1", "n2"], "cpu": {"adopted": True, "excluded": ["n1", "n2"],
                                                          "excluded_for_cpu": ["n3"]}}))
    runs = _runs(fp32="passed", fp16="passed", int8="passed")
    fast = main_job.ships("m", runs, {"fp32": 1.0, "fp16": 0.9, "int8": 2.4}, tmp_path)
    assert fast == ("int8: 2.40x fp32, 2/2 checks, 3 node(s) FP32, the fused CPU form "
                    "(others: fp32 passed at 1.00x, fp16 passed at 0.90x)")
    near = main_job.ships("m", runs, {"fp32": 1.0, "fp16": 0.5, "int8": 1.05}, tmp_path)
    assert near.startswith("fp32: 1.00x fp32, 2/2 checks (others:") and "int8 passed at 1.05x" in near
    failed = main_job.ships("m", _runs(fp32="passed", int8="KNOWN FAILURE"), {"fp32": 1.0, "int8": 3.0}, tmp_path)
    assert failed == "fp32: 1.00x fp32, 2/2 checks (others: int8 known failure)"
    assert main_job.ships("m", _runs(fp32="FAILED"), {"fp32": 1.0}, tmp_path) == \
        "nothing: fp32 did not pass the gate (FAILED)"


def test_an_int8_artifact_that_quantizes_nothing_never_ships(main_job, tmp_path):
    """mtcnn_pnet's int8 keeps all five convolutions FP32: 1.31x fp32 in one CI run is noise."""
    (tmp_path / "pnet").mkdir()
    (tmp_path / "pnet" / "calibration.json").write_text(json.dumps(
        {"excluded_by_sensitivity": [f"c{i}" for i in range(5)], "effect": {"quantize_nodes": 0},
         "cpu": {"adopted": True, "excluded": [f"c{i}" for i in range(5)], "excluded_for_cpu": []}}))
    said = main_job.ships("pnet", _runs(fp32="passed", int8="passed"), {"fp32": 1.0, "int8": 1.31}, tmp_path)
    assert said == ("fp32: 1.00x fp32, 2/2 checks (others: int8 passed at 1.31x but quantizes nothing "
                    "(every node FP32: fp32 arithmetic))")
