"""The keypoints and ptycho gates on the real zoo models: pass clean, fail on planted faults."""

import json
import shutil

import numpy as np
import pytest
from helpers import edit_export_spec

from batchforge.cli import main
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.post import keypoints as keypoints_post

pytestmark = pytest.mark.slow
EVAL = ["--eval-size", "6", "--threads", "2"]


def parity(root, *models, extra=()):
    return main(["parity", *models, "--backend", "onnxruntime", "--output-dir", str(root), *EVAL, *extra])


def test_clean_artifacts_pass_at_fp32_with_every_check_reported(dense_artifacts, tmp_path):
    report = tmp_path / "parity.json"
    assert parity(dense_artifacts, "keypoints", "ptycho", extra=("--report", str(report))) == 0
    data = json.loads(report.read_text())
    checks = {r["model"]: {c["name"]: c for c in r["checks"]} for r in data["reports"]}
    assert {"raw_cosine[heatmaps]", "keypoint_px_error_max", "score_abs_error_max", "keypoint_names_match",
            "batch1_vs_max[keypoints]", "batch8_vs_max[scores]"} <= set(checks["keypoints"])
    assert {"raw_max_rel[amplitude]", "raw_max_rel[phase]", "stitched_rel_error", "stitched_psnr_db",
            "batch1_vs_max[amplitude]", "batch32_vs_max[phase]"} <= set(checks["ptycho"])
    assert checks["keypoints"]["keypoint_px_error_max"]["value"] < 0.01
    assert checks["ptycho"]["stitched_psnr_db"]["value"] > 100


def test_heatmap_x_y_swapped_in_the_runtime_decode_fails(dense_artifacts, monkeypatch, capsys):
    original = keypoints_post.heatmap_maxima

    def swapped(heatmaps):
        xy, scores = original(heatmaps)
        return xy[..., ::-1], scores

    monkeypatch.setattr(keypoints_post, "heatmap_maxima", swapped)
    assert parity(dense_artifacts, "keypoints") == 1
    assert "FAIL keypoints [fp32] keypoint_px_error_max" in capsys.readouterr().out


def test_stitch_crop_size_off_by_one_fails(dense_artifacts, tmp_path, capsys):
    root = tmp_path / "artifacts"
    shutil.copytree(dense_artifacts / "ptycho", root / "ptycho")
    record = json.loads((root / "ptycho" / "export.json").read_text())
    crop = record["spec"]["postprocess"]["stitch_crop_size"]
    for wrong in (crop - 1, crop + 1):
        edit_export_spec(ModelArtifacts.at(root, "ptycho"),
                         lambda spec, m=wrong: spec["postprocess"].update(stitch_crop_size=m))
        assert parity(root, "ptycho") == 1
        out = capsys.readouterr().out
        assert "FAIL ptycho [fp32] stitched_rel_error" in out and f"crop {crop}," in out


def test_run_writes_keypoint_records_and_stitched_objects(dense_artifacts, tmp_path):
    from batchforge.export.samples import write_samples
    from batchforge.export.samples.ptycho import simulate_scan, write_scan

    images = write_samples("keypoints", tmp_path / "animals", 3)
    out = tmp_path / "kp.jsonl"
    assert main(["run", "keypoints", "--input", str(images[0].parent), "--output", str(out),
                 "--output-dir", str(dense_artifacts), "--backend", "onnxruntime", "--threads", "2"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    assert [k["name"] for k in records[0]["keypoints"]][:3] == ["left_eye", "right_eye", "nose"]
    scans = tmp_path / "scans"
    write_scan(scans / "demo.npz", simulate_scan(1, grid=3))
    out = tmp_path / "ptycho.jsonl"
    assert main(["run", "ptycho", "--input", str(scans), "--output", str(out),
                 "--output-dir", str(dense_artifacts), "--backend", "onnxruntime", "--threads", "2"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["object_file"] == str(tmp_path / "ptycho.objects" / "demo.object.npy")  # beside the JSONL
    assert sorted(p.name for p in scans.iterdir()) == ["demo.npz"]  # nothing written among the inputs
    stitched = np.load(record["object_file"])
    assert record["n_patches"] == 9 and stitched.dtype == np.complex64
    assert list(stitched.shape) == record["object_shape"]
