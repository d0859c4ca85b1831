"""The mtcnn gates: each network against PyTorch, the detector against facenet-pytorch's detect();
planted faults (P-Net scale off, landmarks left in crop fractions) fail the named checks; ties in
the reference (crop corners on the pixel grid, the last NMS) are taken as ties only within the tier."""

import json

import numpy as np
import pytest

from batchforge.cli import main
from batchforge.errors import ParityError
from batchforge.parity.gate import family_for
from batchforge.parity.mtcnn import Faces, ReferenceFaces, _crops_following, detector_checks
from batchforge.parity.session import ParitySession
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.pipelines.mtcnn import FacesResult
from batchforge.runtime.post import mtcnn as post
from batchforge.tolerances import limits_for

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


def test_a_crop_corner_follows_ours_only_where_the_two_truncate_apart_within_the_tie_distance():
    import torch
    from facenet_pytorch.models.utils import detect_face

    theirs = torch.tensor([[10.98, 20.2, 50.5, 60.0, 0.9], [100.2, 100.2, 150.7, 150.7, 0.9]])
    ours = [np.array([[11.01, 20.3, 50.4, 59.9]]), np.zeros((0, 4))]  # a twin of the first box only
    counts = [0, 0]
    with _crops_following(ours, 0.5, counts):
        y, ey, x, ex = detect_face.pad(theirs.clone(), 640, 480)
        assert (x.tolist(), y.tolist(), ex.tolist(), ey.tolist()) == ([11, 100], [20, 100], [50, 150], [59, 150])
        assert counts == [1, 2]
        detect_face.pad(theirs.clone(), 640, 480)  # O-Net's crops: none of ours to follow
        with pytest.raises(ParityError, match="more than twice"):
            detect_face.pad(theirs.clone(), 640, 480)
    counts = [0, 0]
    with _crops_following(ours, 0.01, counts):  # 0.03 px apart: not a tie at fp32's distance
        y, ey, x, ex = detect_face.pad(theirs.clone(), 640, 480)
    assert (x.tolist(), ey.tolist(), counts) == ([10, 100], [60, 150], [0, 2])
    assert detect_face.pad.__name__ == "pad" and detect_face.pad.__module__ == detect_face.__name__  # restored


def test_a_face_matches_a_near_tied_candidate_of_the_last_nms_only_within_twice_the_probability_tier():
    def faces(boxes, probs):
        return Faces(np.asarray(boxes, np.float64), np.asarray(probs, np.float64), np.zeros((len(probs), 5, 2)))

    kept, dropped = [100.0, 100.0, 160.0, 160.0], [103.0, 101.0, 162.0, 162.0]  # IoU 0.87, "Min" overlap 0.93
    reference = ReferenceFaces(faces([kept], [0.9990]), faces([kept, dropped], [0.9990, 0.9975]))
    ours = FacesResult("x", (480, 640), np.asarray([dropped], np.float32), np.asarray([0.9978], np.float32),
                       np.zeros((1, 5, 2), np.float32))

    def run(precision):
        return {c.name: c for c in detector_checks([reference], [ours], limits_for("mtcnn", precision), ["x"])}

    fp16 = run(Precision.FP16)  # 1.5e-3 apart, within 2 x 0.01: the reference did not decide between them
    assert all(c.passed for c in fp16.values()) and fp16["matched_iou_min"].value == 1.0
    assert "1 of 1 matched faces decided among near-tied" in fp16["matched_iou_min"].detail
    fp32 = run(Precision.FP32)  # not within 2 x 1e-4: measured against the face the reference kept
    assert {n for n, c in fp32.items() if not c.passed} == {"matched_iou_min", "face_prob_abs_max"}
    assert fp32["matched_iou_min"].value < 0.9 and "0 of 1 matched" in fp32["matched_iou_min"].detail


def test_a_non_finite_engine_output_fails_recall_and_is_named(session, monkeypatch):
    from batchforge.runtime.pipelines.mtcnn import MtcnnPipeline

    real = MtcnnPipeline._stage_outputs

    def onet_nan_for_the_camera(self, stage, images, boxes, index, size):
        out = real(self, stage, images, boxes, index, size)
        grey = [i for i, image in enumerate(images) if np.array_equal(image[..., 0], image[..., 2])]
        if stage == 2:  # the cameraman is the one grey photograph, batched or alone
            out["offsets"][np.isin(index, grey)] = np.nan
        return out

    monkeypatch.setattr(MtcnnPipeline, "_stage_outputs", onet_nan_for_the_camera)
    checks, notes = checks_of(session)
    assert {name for name, c in checks.items() if not c.passed} == {"face_recall"}
    assert any(n.startswith("no faces counted for camera: ") and "'mtcnn_onet:offsets'" in n for n in notes), notes
