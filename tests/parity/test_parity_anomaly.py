"""The anomaly gate on the real zoo model: passes clean, fails on swapped hysteresis thresholds;
the tiled map of the exported model shows no seam; `batchforge run` writes defect regions."""

import json
import shutil

import numpy as np
import pytest
from helpers import edit_export_spec

from batchforge.cli import main
from batchforge.parity.anomaly import box_iou, match_regions
from batchforge.runtime import load_pipeline
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.pipelines.anomaly import DefectRegion

EVAL = ["--eval-size", "6", "--threads", "2"]


@pytest.fixture
def zoo_copy(anomaly_artifacts, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(anomaly_artifacts, root)
    return ModelArtifacts.at(root, "anomaly")


def parity(artifacts, *extra):
    return main(["parity", "anomaly", "--backend", "onnxruntime", "--output-dir", str(artifacts.root),
                 *EVAL, *extra])


def region(box) -> DefectRegion:
    return DefectRegion(0, tuple(map(float, box)), 1.0, 1.0, 1.0, (0.0, 0.0))


def test_region_matching():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    assert box_iou(a, a[::-1]).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert box_iou(a[:1], np.array([[5, 0, 15, 10]], float))[0, 0] == pytest.approx(1 / 3)
    ref = [region(b) for b in a]
    assert match_regions(ref, ref[::-1]) == [1.0, 1.0]
    assert match_regions(ref, ref[:1]) == [1.0, 0.0]  # the unmatched region counts as 0
    assert match_regions([], []) == [] and match_regions(ref, []) == [0.0, 0.0]


@pytest.mark.slow
def test_clean_artifact_passes(zoo_copy, tmp_path):
    report = tmp_path / "parity.json"
    assert parity(zoo_copy, "--report", str(report)) == 0
    checks = {c["name"]: c for c in json.loads(report.read_text())["reports"][0]["checks"]}
    assert {"score_error", "map_error", "region_iou_min", "decision_agreement", "reference_image_auroc",
            "tiled_map_error", "tiled_region_iou_min", "batch1_vs_max[boxes]"} <= set(checks)
    assert not checks["region_iou_min"]["detail"].startswith("0 reference")  # regions were compared


def swap_hysteresis(spec):
    defects = spec["postprocess"]["defects"]
    high, low = defects["hysteresis_high"], defects["hysteresis_low"]
    assert low < high
    defects["hysteresis_high"], defects["hysteresis_low"] = low, high


@pytest.mark.slow
def test_swapped_hysteresis_thresholds_fail(zoo_copy, capsys):
    edit_export_spec(zoo_copy, swap_hysteresis)
    assert parity(zoo_copy) == 1
    assert "FAIL anomaly [fp32] region_iou_min" in capsys.readouterr().out


def max_step(m: np.ndarray) -> float:
    return float(max(np.abs(np.diff(m, axis=0)).max(), np.abs(np.diff(m, axis=1)).max()))


@pytest.mark.slow
def test_tiled_map_over_a_uniform_image_has_no_seam(anomaly_artifacts):
    image = np.full((600, 600, 3), 140, np.uint8)  # 3 x 3 tiles of 256
    steps = {}
    for blend in ("linear", "uniform"):
        with load_pipeline("anomaly", output_dir=anomaly_artifacts, backend="onnxruntime", threads=2,
                           overrides={"tiling": {"blend": blend}}) as pipe:
            result = pipe([image])[0]
        assert result.tiles == 9 and result.anomaly_map.shape == (600, 600)
        steps[blend] = max_step(result.anomaly_map[40:-40, 40:-40])
    # measured: 0.006 (linear) vs 0.098 (uniform) in map units (1.0 = good 99.9th percentile)
    assert steps["linear"] < 0.02 and steps["uniform"] > 3 * steps["linear"]


@pytest.mark.slow
def test_run_writes_defect_regions(anomaly_artifacts, tmp_path):
    folder = tmp_path / "in"
    assert main(["samples", "anomaly", "--out", str(folder), "--count", "5"]) == 0
    (folder / "zz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "r.jsonl"
    code = main(["run", "anomaly", "--input", str(folder), "--output", str(out), "--backend", "onnxruntime",
                 "--output-dir", str(anomaly_artifacts), "--batch-size", "2"])
    assert code == 1  # one input could not be read; the others were processed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ok"] for r in lines] == [True] * 5 + [False]
    assert lines[4]["tiles"] > 1 and lines[4]["map_shape"] == [320, 512]
    defective = [r for r in lines[:5] if "good" not in r["source"]]
    assert all(r["anomalous"] for r in defective) and any(r["regions"] for r in defective)
    assert set(defective[0]["regions"][0]) == {"id", "bbox", "area", "score", "mean_score", "centroid"}
