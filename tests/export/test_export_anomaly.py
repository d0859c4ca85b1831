"""The anomaly zoo model finds the generated defects; its samples are deterministic."""

import numpy as np
import pytest
import torch

from batchforge.export.reference import load_reference
from batchforge.export.samples import SEED_EVAL, generate
from batchforge.export.samples.anomaly import LARGE_SIZE, labelled_set
from batchforge.export.zoo.anomaly import auroc, image_auroc
from batchforge.runtime.artifacts import ModelArtifacts


@pytest.fixture(scope="module")
def model(anomaly_artifacts):
    """Fitted on good images: the exported reference weights (the fit ran in the export fixture)."""
    torch.set_num_threads(2)
    return load_reference(ModelArtifacts.at(anomaly_artifacts, "anomaly"))


def test_auroc_formula():
    labels = np.array([0, 0, 1, 1], bool)
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert auroc(np.array([0.1, 0.6, 0.5, 0.9]), labels) == 0.75
    with pytest.raises(ValueError, match="both classes"):
        auroc(np.ones(3), np.ones(3, bool))


@pytest.mark.slow
def test_image_score_separates_defects_and_outputs_spread(model):
    value, scores, labels = image_auroc(model, 32, SEED_EVAL)
    assert value >= 0.9, f"image AUROC {value:.3f} on 32 generated images"
    good, bad = scores[~labels], scores[labels]
    # 1.0 is the 99.9th percentile of held-out good pixels, so good maxima sit near it
    assert 0.7 < np.median(good) < 1.2 and np.median(bad) > 1.3 * np.median(good)
    assert np.std(scores) > 0.2  # not degenerate: scores vary across images
    samples = labelled_set(4, SEED_EVAL)
    with torch.no_grad():
        x = torch.stack([torch.from_numpy(_chw(s.image)) for s in samples])
        maps, score = model(x)
    assert maps.shape == (4, 1, 256, 256) and score.shape == (4,)
    assert torch.equal(score, maps.amax(dim=(1, 2, 3)))
    for sample, amap in zip(samples, maps[:, 0].numpy()):
        assert amap.std() > 0.02 and np.isfinite(amap).all()
        if sample.is_defective:  # defect pixels stand out from the rest of their own image
            assert amap[sample.mask].mean() > 1.3 * amap[~sample.mask].mean()


def _chw(image: np.ndarray) -> np.ndarray:
    from batchforge.export.reference import torch_preprocess
    from batchforge.export.zoo.anomaly import SPEC

    return torch_preprocess(image, SPEC.preprocess)[0].numpy()


def test_samples_are_deterministic_with_masks():
    first, again = labelled_set(6, 7), labelled_set(6, 7)
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert [s.is_defective for s in first] == [False, True] * 3
    assert all(s.mask.any() == s.is_defective for s in first)
    assert not np.array_equal(first[0].image, labelled_set(1, 8)[0].image)
    items = generate("anomaly", 5, 1000)
    assert items[4][1].shape == (*LARGE_SIZE, 3) and items[0][1].shape == (256, 256, 3)
    assert items[1][0].startswith("0001_") and items[0][0] == "0000_good"
