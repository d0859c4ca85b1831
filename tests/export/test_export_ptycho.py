"""The ptycho simulator's physics and the zoo model's calibrated output spread."""

import numpy as np
import torch

from batchforge.export.reference import load_reference
from batchforge.export.samples import SEED_EVAL, generate
from batchforge.export.samples.ptycho import (
    PATCH,
    diffraction_amplitude,
    make_probe,
    object_window,
    simulate_scan,
)
from batchforge.runtime.artifacts import ModelArtifacts


def test_diffraction_is_the_centred_fft_amplitude_and_keeps_energy():
    probe = make_probe()
    amplitude = diffraction_amplitude(probe)
    assert amplitude.dtype == np.float32 and amplitude.shape == (PATCH, PATCH)
    energy = np.sum(amplitude.astype(np.float64) ** 2)
    np.testing.assert_allclose(energy, np.sum(np.abs(probe) ** 2), rtol=1e-5)
    flat = diffraction_amplitude(np.ones((PATCH, PATCH)))
    assert flat[PATCH // 2, PATCH // 2] == np.max(flat)  # DC in the centre
    noisy = [diffraction_amplitude(probe, 1e4, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])  # seeded noise is deterministic
    assert not np.array_equal(noisy[0], amplitude)


def test_scans_have_float_offsets_inside_the_object_and_subpixel_windows():
    scan = simulate_scan(SEED_EVAL, grid=4)
    assert scan.offsets.dtype == np.float64 and scan.offsets.shape == (16, 2)
    assert np.any(scan.offsets % 1 != 0) and scan.offsets.min() >= 0
    assert np.all(np.floor(scan.offsets) + PATCH <= scan.object_shape)
    assert scan.diffraction.shape == (16, PATCH, PATCH) and scan.obj.dtype == np.complex64
    whole = object_window(scan.obj, np.array([3.0, 5.0]), PATCH)
    np.testing.assert_allclose(whole, scan.obj[3 : 3 + PATCH, 5 : 5 + PATCH], atol=1e-5)
    assert len(generate("ptycho", 5, SEED_EVAL)) == 5


def test_model_outputs_have_the_objects_ranges_and_spread(dense_artifacts):
    """From the exported reference weights (the init ran once, in the export fixture)."""
    torch.set_num_threads(2)
    scan = simulate_scan(SEED_EVAL, grid=4)
    with torch.no_grad():
        module = load_reference(ModelArtifacts.at(dense_artifacts, "ptycho"))
        amplitude, phase = module(torch.from_numpy(scan.diffraction))
    amplitude, phase = amplitude.numpy(), phase.numpy()
    assert amplitude.shape == phase.shape == (16, PATCH, PATCH)
    assert 0.3 < amplitude.mean() < 0.95 and amplitude.std() > 0.05
    assert np.mean(amplitude > 0.999) < 0.01  # the sigmoid is not saturated
    assert phase.std() > 0.2 and np.abs(phase).max() < np.pi
    per_patch = amplitude.reshape(16, -1).mean(1)
    assert per_patch.std() > 1e-3  # different diffraction patterns give different patches
