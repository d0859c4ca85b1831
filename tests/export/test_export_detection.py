"""The detector and facepose zoo models: dense, batch-dynamic exports with a realistic spread."""

import json

import numpy as np
import pytest
import torch

from batchforge.export.reference import load_reference, torch_preprocess
from batchforge.export.registry import get_model
from batchforge.export.samples import SEED_EVAL, generate
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.post.detection import DetectionOptions, anchor_grid, detect, select_candidates
from batchforge.runtime.post.facepose import FacePoseOptions
from batchforge.runtime.spec import parse_options

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["detector", "facepose"])
def test_export_record_has_dense_dynamic_outputs(detection_artifacts, name):
    record = json.loads(ModelArtifacts.at(detection_artifacts, name).export_record_path.read_text())
    outputs = {o["name"]: o["shape"] for o in record["io"]["outputs"]}
    spec = get_model(name).spec
    assert list(outputs) == list(spec.outputs)
    assert outputs["boxes"] == ["batch", 8400, 4]
    assert outputs["scores"] == ["batch", 8400, len(spec.postprocess["class_names"])]
    assert max(row["max_rel"] for row in record["checks"]["parity"]) < 1e-4


@pytest.mark.parametrize("name", ["detector", "facepose"])
def test_calibrated_init_spreads_scores_boxes_and_poses(detection_artifacts, name):
    """Not all or nothing: a few hundred candidates per synthetic image, thinned out by NMS."""
    torch.set_num_threads(2)
    module = load_reference(ModelArtifacts.at(detection_artifacts, name))
    spec = get_model(name).spec
    images = generate(name, 4, SEED_EVAL)
    prepared = [torch_preprocess(image, spec.preprocess) for _, image in images]
    with torch.inference_mode():
        outputs = [o.numpy() for o in module(torch.stack([t for t, _ in prepared]))]
    options_type = DetectionOptions if name == "detector" else FacePoseOptions
    options = parse_options(options_type, spec.postprocess, name)
    grid = anchor_grid(640, 640, options.strides)
    boxes, scores = outputs[0], outputs[1]
    candidates = [len(select_candidates(s, options.score_threshold, 10**6)[0]) for s in scores]
    kept = [len(detect(b, s, grid, options, geo)) for b, s, (_, geo) in zip(boxes, scores, prepared)]
    assert all(5 <= c <= 1500 for c in candidates), candidates
    assert sum(candidates) >= 150, candidates
    assert all(0 < k < c for k, c in zip(kept, candidates)), (kept, candidates)  # NMS suppresses
    assert 0.001 < scores.mean() < 0.2 and scores.max() > 0.9  # mostly background, some confident
    log_width = np.log(boxes[..., 0] + boxes[..., 2])
    assert 0.2 < log_width.std() < 1.5  # box sizes vary, within reason
    if name == "detector":
        per_class = (scores > options.score_threshold).sum(axis=(0, 1))
        assert (per_class > 0).sum() >= 5, per_class  # many classes fire, not one
    else:
        pose = outputs[2].reshape(-1, 6)
        assert np.all(pose.std(axis=0) > 0.05) and np.all(np.abs(pose[:, :3]).mean(axis=0) < 0.6)
