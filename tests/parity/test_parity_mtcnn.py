"""The mtcnn gates: each network against PyTorch, the detector against facenet-pytorch's detect();
planted faults (P-Net scale off, landmarks left in crop fractions) fail the named checks."""

import json

import numpy as np
import pytest

from batchforge.cli import main
from batchforge.parity.gate import family_for
from batchforge.parity.session import ParitySession
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.post import mtcnn as post

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def session(mtcnn_artifacts):
    """One session: facenet-pytorch's detections (astronaut, camera, one LFW mosaic) computed once."""
    with_session = ParitySession(mtcnn_artifacts, "onnxruntime", threads=2, eval_size=3, show_progress=False)
    yield with_session
    with_session.close()


def checks_of(session):
    from batchforge.runtime.loading import ensemble_spec

    checks, notes = family_for("mtcnn").ensemble_checks(session, ensemble_spec(session.output_dir, "mtcnn"),
                                                         Precision.FP32)
    return {c.name: c for c in checks}, notes


def test_detector_matches_facenet_pytorch_and_batched_equals_sequential(session):
    checks, notes = checks_of(session)
    assert all(c.passed for c in checks.values()), [c for c in checks.values() if not c.passed]
    assert checks["matched_iou_min"].value >= 0.999 and checks["face_recall"].value == 1.0
    assert checks["batch_vs_sequential[boxes]"].value == 0.0
    assert "3 photographs (astronaut, camera, lfw_mosaic_2000_0)" in notes[0]


def test_pnet_scale_off_fails_recall_and_iou(session, monkeypatch):
    real = post.proposals
    monkeypatch.setattr(post, "proposals", lambda o, p, scale, t: real(o, p, scale * 1.15, t))
    checks, _ = checks_of(session)
    failed = {name for name, c in checks.items() if not c.passed}
    assert "matched_iou_min" in failed or "face_recall" in failed, failed
    assert checks["batch_vs_sequential[boxes]"].passed  # batching itself is unaffected


def test_landmarks_not_mapped_back_fail_only_the_landmark_check(session, monkeypatch):
    monkeypatch.setattr(post, "landmarks_to_pixels", lambda boxes, points: np.stack([points[:, :5], points[:, 5:]], -1))
    checks, _ = checks_of(session)
    assert {name for name, c in checks.items() if not c.passed} == {"landmark_px_max"}


def test_stage_gates_pass_at_fp32_with_raw_and_probability_checks(mtcnn_artifacts, tmp_path):
    report = tmp_path / "parity.json"
    assert main(["parity", "mtcnn_rnet", "mtcnn_onet", "--backend", "onnxruntime", "--output-dir",
                 str(mtcnn_artifacts), "--eval-size", "24", "--threads", "2", "--report", str(report)]) == 0
    checks = {r["model"]: {c["name"] for c in r["checks"]} for r in json.loads(report.read_text())["reports"]}
    assert {"raw_max_rel[face_logit]", "face_prob_abs_max", "threshold_agreement"} <= checks["mtcnn_rnet"]
    assert "landmark_crop_px_max" in checks["mtcnn_onet"]
