"""The keypoints zoo model's calibrated init gives clear, varied heatmap peaks (not noise)."""

import numpy as np
import pytest
import torch

from batchforge.export.reference import load_reference, torch_preprocess
from batchforge.export.samples import SEED_EVAL, SEED_SAMPLES
from batchforge.export.samples.keypoints import AP10K_KEYPOINTS, render_animal, sample_images
from batchforge.export.zoo.keypoints import SPEC
from batchforge.runtime.artifacts import ModelArtifacts

IMAGES = 6


@pytest.fixture(scope="module")
def heatmaps(dense_artifacts):
    """From the exported reference weights (the init ran once, in the export fixture)."""
    torch.set_num_threads(2)
    model = load_reference(ModelArtifacts.at(dense_artifacts, "keypoints"))
    images = sample_images(IMAGES, SEED_EVAL)
    batch = torch.stack([torch_preprocess(img, SPEC.preprocess)[0] for _, img in images])
    with torch.no_grad():
        return model(batch).numpy()


def test_heatmaps_have_the_spec_shape_and_names_are_data(heatmaps):
    assert heatmaps.shape == (IMAGES, 17, 64, 64)
    assert SPEC.postprocess["keypoint_names"] == list(AP10K_KEYPOINTS) and len(AP10K_KEYPOINTS) == 17


def test_peaks_are_clear_varied_and_inside(heatmaps):
    flat = heatmaps.reshape(IMAGES, 17, -1)
    index = flat.argmax(-1)
    rows, cols = np.divmod(index, 64)
    scores = flat.max(-1)
    assert len(set(index.ravel())) > 0.6 * index.size  # different places across joints and images
    assert all(len(set(index[:, k])) >= IMAGES - 1 for k in range(17))  # each joint moves with the image
    assert scores.std() > 0.2 and scores.min() > 0.3  # scores vary and are not degenerate
    assert np.all((rows > 1) & (rows < 62) & (cols > 1) & (cols < 62))  # no padding artefacts
    # a clear peak: the best value beats everything more than 3 cells away by a visible margin
    margins = []
    for b in range(IMAGES):
        for k in range(17):
            rest = heatmaps[b, k].copy()
            rest[max(0, rows[b, k] - 3) : rows[b, k] + 4, max(0, cols[b, k] - 3) : cols[b, k] + 4] = -np.inf
            margins.append((scores[b, k] - rest.max()) / scores[b, k])
    assert min(margins) > 1e-4 and np.median(margins) > 0.03
    # smooth blobs, not pixel noise: the peak's 4-neighbours keep most of its value
    neighbours = [heatmaps[b, k, rows[b, k] + dy, cols[b, k] + dx]
                  for b in range(IMAGES) for k in range(17) for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))]
    assert np.median(np.array(neighbours).reshape(-1, 4).min(1) / scores.ravel()) > 0.8


def test_synthetic_animals_are_deterministic_and_joints_lie_in_the_image():
    image, joints = render_animal(3, SEED_SAMPLES)
    again, joints_again = render_animal(3, SEED_SAMPLES)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(joints, joints_again)
    height, width = image.shape[:2]
    assert joints.shape == (17, 2) and np.all((joints >= 0) & (joints <= [width, height]))
    assert not np.array_equal(render_animal(3, SEED_EVAL)[1], joints)
