"""The main job's lanes: every zoo model in exactly one lane, an ensemble's members together."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "main_job.py"


@pytest.fixture(scope="module")
def main_job():
    spec = importlib.util.spec_from_file_location("main_job_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
