"""The detection gates on the real zoo models: pass clean, fail on every planted fault."""

import json
import shutil

import pytest
from helpers import edit_export_spec

from batchforge.cli import main
from batchforge.runtime import preprocess
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.post import detection

pytestmark = pytest.mark.slow
EVAL = ["--eval-size", "5", "--threads", "2"]


@pytest.fixture
def zoo_copy(detection_artifacts, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(detection_artifacts, root)
    return root


def parity(root, *models, extra=()):
    return main(["parity", *models, "--backend", "onnxruntime", "--output-dir", str(root), *EVAL, *extra])


def test_clean_artifacts_pass_with_every_check_reported(detection_artifacts, tmp_path):
    report = tmp_path / "parity.json"
    assert parity(detection_artifacts, "detector", "facepose", extra=("--report", str(report))) == 0
    data = json.loads(report.read_text())
    checks = {r["model"]: {c["name"]: c for c in r["checks"]} for r in data["reports"]}
    expected = {"raw_cosine[scores]", "raw_max_rel[boxes]", "matched_iou_min", "score_abs_max",
                "anchor_agreement", "class_agreement", "recall", "precision", "batch1_vs_max[boxes]",
                "batch4_vs_max[scores]"}
    assert expected <= set(checks["detector"])
    assert expected | {"pose_abs_max", "landmark_px_max", "batch1_vs_max[landmarks]", "raw_cosine[pose]"} \
        <= set(checks["facepose"])
    for model in ("detector", "facepose"):
        assert "same-anchor pairs" in checks[model]["matched_iou_min"]["detail"]
        assert checks[model]["anchor_agreement"]["value"] == 1.0
        assert int(checks[model]["recall"]["detail"].split("/")[1].split()[0]) > 10  # real detections


def test_letterbox_off_by_one_pixel_fails(detection_artifacts, monkeypatch):
    original = preprocess.letterbox_geometry

    def shifted(height, width, target_h, target_w):
        new_h, new_w, top, left = original(height, width, target_h, target_w)
        return new_h, new_w, top + (new_h < target_h), left + (new_w < target_w)

    monkeypatch.setattr(preprocess, "letterbox_geometry", shifted)
    assert parity(detection_artifacts, "detector") == 1


def test_swapped_box_coordinates_fail(detection_artifacts, monkeypatch):
    original = detection.decode_boxes
    monkeypatch.setattr(detection, "decode_boxes", lambda *args: original(*args)[:, [1, 0, 3, 2]])
    assert parity(detection_artifacts, "detector") == 1


def test_wrong_landmark_focal_length_fails(zoo_copy, capsys):
    edit_export_spec(ModelArtifacts.at(zoo_copy, "facepose"),
                     lambda spec: spec["postprocess"].update(focal_scale=1.05))
    assert parity(zoo_copy, "facepose") == 1
    out = capsys.readouterr().out
    assert "FAIL facepose [fp32] pose_abs_max" in out and "landmark_px_max" in out
