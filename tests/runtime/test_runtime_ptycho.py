"""Ptycho reassembly (batched, bounded memory, exact on known objects) and the scan pipeline."""

import json

import numpy as np
import onnx
import pytest
from helpers import write_artifact
from onnx import TensorProto, helper

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime import load_pipeline
from batchforge.runtime.pipelines.ptycho import PtychoPatchResult, PtychoScanResult, read_scan
from batchforge.runtime.post.ptycho import (
    ObjectCanvas,
    PtychoOptions,
    complex_patches,
    default_object_shape,
    reassemble_patches,
)
from batchforge.runtime.results import ErrorRecord

RNG = np.random.default_rng(7)


def random_patches(count, size=16):
    shape = (count, size, size)
    return (RNG.normal(size=shape) + 1j * RNG.normal(size=shape)).astype(np.complex64)


def cut(obj, offsets, size):
    return np.stack([obj[int(y) : int(y) + size, int(x) : int(x) + size] for y, x in offsets])


@pytest.mark.parametrize("subpixel", ["fourier", "round"])
def test_batched_equals_unbatched_for_every_batch_size(subpixel):
    patches = random_patches(23)
    offsets = RNG.uniform(0, 30, (23, 2))
    full = reassemble_patches(patches, offsets, 10, batch_size=1000, subpixel=subpixel)
    scale = np.abs(full.object).max()
    for batch in (1, 2, 5, 22, 23, 24, 500):
        got = reassemble_patches(patches, offsets, 10, batch_size=batch, subpixel=subpixel)
        assert np.max(np.abs(got.object - full.object)) <= 1e-6 * scale, batch
        np.testing.assert_array_equal(got.weights, full.weights)


@pytest.mark.parametrize("subpixel", ["fourier", "round"])
def test_patches_cut_from_a_known_object_give_it_back_exactly_where_covered(subpixel):
    obj = (RNG.normal(size=(60, 70)) + 1j * RNG.normal(size=(60, 70))).astype(np.complex64)
    offsets = np.array([(y, x) for y in range(0, 45, 5) for x in range(0, 55, 7)], np.float64)
    result = reassemble_patches(cut(obj, offsets, 16), offsets, 10, object_shape=obj.shape, batch_size=7,
                                subpixel=subpixel)
    start = (16 - 10) // 2
    interior = (slice(start, 40 + start + 10), slice(start, 49 + start + 10))  # max offsets 40, 49
    assert result.covered[interior].all() and result.weights.max() >= 2
    np.testing.assert_array_equal(result.object[interior], obj[interior])
    assert not result.covered[:start].any() and np.all(result.object[~result.covered] == 0)


def test_fourier_rule_places_subpixel_patches_of_a_band_limited_object():
    size, step = 16, 4
    yy, xx = np.mgrid[0:80, 0:80].astype(np.float64)

    def wave(y, x):  # periodic in 16, so each cut patch is exactly band-limited and periodic
        return np.exp(2j * np.pi * (2 * x + y) / size) + 0.5 * np.exp(-2j * np.pi * 3 * y / size)

    offsets = np.array([(y + 0.37, x + 0.81) for y in range(0, 48, step) for x in range(0, 48, step)])
    grid = np.arange(size)
    patches = np.stack([wave(oy + grid[:, None], ox + grid[None, :]) for oy, ox in offsets])
    patches = patches.astype(np.complex64)
    result = reassemble_patches(patches, offsets, 8, object_shape=(80, 80))
    covered = result.covered
    np.testing.assert_allclose(result.object[covered], wave(yy, xx)[covered], atol=2e-5)
    rounded = reassemble_patches(patches, offsets, 8, object_shape=(80, 80), subpixel="round")
    assert np.abs(rounded.object - wave(yy, xx))[rounded.covered].max() > 0.1  # rounding misplaces by ~0.2 px


def test_round_rule_is_half_up_and_fourier_uses_the_floor():
    patch = np.ones((1, 4, 4), np.complex64)
    for offset, corner in (((0.5, 2.49), (1, 2)), ((1.49, 0.5), (1, 1))):
        result = reassemble_patches(patch, np.array([offset]), 2, object_shape=(8, 8), subpixel="round")
        ys, xs = np.nonzero(result.covered)
        assert (ys.min() - 1, xs.min() - 1) == corner  # crop starts 1 pixel into the patch
    result = reassemble_patches(patch, np.array([(0.9, 2.2)]), 2, object_shape=(8, 8))
    ys, xs = np.nonzero(result.covered)
    assert (ys.min() - 1, xs.min() - 1) == (0, 2)


def test_streaming_canvas_equals_one_call_and_default_frame_fits_every_patch():
    patches = random_patches(12)
    offsets = RNG.uniform(0, 20, (12, 2))
    shape = default_object_shape(offsets, 16)
    assert shape == tuple(int(np.ceil(offsets[:, i].max())) + 16 for i in (0, 1))
    canvas = ObjectCanvas(shape, 16, 9, batch_size=4)
    for part in (slice(0, 5), slice(5, 6), slice(6, 12)):
        canvas.add(patches[part], offsets[part])
    streamed = canvas.result()
    one_call = reassemble_patches(patches, offsets, 9, batch_size=4)
    np.testing.assert_array_equal(streamed.object, one_call.object)
    assert canvas.count == 12


def test_bad_patches_and_offsets_raise_input_validation_errors():
    patches = random_patches(3)
    good = np.zeros((3, 2))
    bad = good.copy()
    bad[1, 0] = np.nan
    with pytest.raises(InputValidationError, match=r"finite scan offsets, got \[nan, 0.0\] for patch 1"):
        reassemble_patches(patches, bad, 8)
    with pytest.raises(InputValidationError, match="3 patches but 2 offsets"):
        reassemble_patches(patches, good[:2], 8)
    with pytest.raises(InputValidationError, match=r"complex patches \(complex64\), got float32"):
        reassemble_patches(patches.real.copy(), good, 8)
    with pytest.raises(InputValidationError, match="between 1 and the patch size 16, got 17"):
        reassemble_patches(patches, good, 17)
    with pytest.raises(InputValidationError, match=r"shape \(N, 2\)"):
        reassemble_patches(patches, np.zeros((3, 3)), 8)
    with pytest.raises(InputValidationError, match=r"patch 2: .* outside the 20x20 object"):
        reassemble_patches(patches, np.array([[0, 0], [1, 1], [-5, 0]]), 8, object_shape=(20, 20))
    with pytest.raises(ConfigError, match="subpixel must be one of"):
        PtychoOptions(subpixel="linear")


# --- pipeline on a tiny model: amplitude = sigmoid(x), phase = tanh(x) -----------------------
P = 8


def tiny_ptycho(root, crop=4):
    from batchforge.runtime.spec import ModelSpec, ProfileRange, TensorSpec

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", P, P])
          for n in ("diffraction", "amplitude", "phase")]
    graph = helper.make_graph([helper.make_node("Sigmoid", ["diffraction"], ["amplitude"]),
                               helper.make_node("Tanh", ["diffraction"], ["phase"])], "tiny", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    spec = ModelSpec(name="tiny_ptycho", family="ptycho",
                     inputs=(TensorSpec("diffraction", ("batch", P, P)),),
                     outputs=("amplitude", "phase"), profile=ProfileRange(1, 2, 4),
                     postprocess={"stitch_crop_size": crop, "stitch_batch_size": 3})
    return write_artifact(root, model, spec)


def open_tiny(artifacts):
    return load_pipeline("tiny_ptycho", output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1)


def expected_patches(diffraction):
    return complex_patches(1 / (1 + np.exp(-diffraction)), np.tanh(diffraction))


def test_scan_files_are_stitched_chunk_by_chunk_and_loose_patterns_batched(tmp_path):
    artifacts = tiny_ptycho(tmp_path / "artifacts")
    inputs = tmp_path / "in"
    inputs.mkdir()
    diffraction = RNG.uniform(0, 2, (11, P, P)).astype(np.float32)
    offsets = RNG.uniform(0, 9, (11, 2))
    np.savez(inputs / "a_scan.npz", diffraction=diffraction, offsets=offsets, true_object=np.zeros(3))
    np.save(inputs / "b_pattern.npy", diffraction[0])
    np.savez(inputs / "c_bad.npz", diffraction=diffraction, offsets=offsets[:5])
    np.save(inputs / "d_pattern.npy", diffraction[1])
    out = tmp_path / "objects"
    with open_tiny(artifacts) as pipe:
        pipe.object_dir = out
        results = list(pipe.run_sources(sorted(inputs.iterdir()), batch_size=3))
        direct = pipe.reconstruct(read_scan(inputs / "a_scan.npz", P), batch_size=1)
    assert [type(r) for r in results] == [PtychoScanResult, PtychoPatchResult, ErrorRecord, PtychoPatchResult]
    scan = results[0]
    expected = reassemble_patches(expected_patches(diffraction), offsets, 4)
    np.testing.assert_allclose(scan.object, expected.object, atol=1e-6)
    np.testing.assert_allclose(direct.object, scan.object, atol=1e-6)
    np.testing.assert_array_equal(np.load(out / "a_scan.object.npy"), scan.object)
    patch = np.load(out / "b_pattern.patch.npy")
    np.testing.assert_allclose(patch, expected_patches(diffraction[0]), atol=1e-6)
    assert "11 patches but 5 offsets" in results[2].message
    record = json.loads(json.dumps(scan.to_record()))
    assert record["n_patches"] == 11 and record["stitch_crop_size"] == 4
    assert record["object_file"].endswith("a_scan.object.npy") and 0 < record["covered_fraction"] < 1
    assert json.loads(json.dumps(results[1].to_record()))["patch_shape"] == [P, P]


def test_bad_scan_inputs_get_clear_messages(tmp_path):
    artifacts = tiny_ptycho(tmp_path / "artifacts")
    np.save(tmp_path / "stack.npy", np.zeros((3, P, P), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((P, P), np.int32))
    np.save(tmp_path / "neg.npy", -np.ones((P, P), np.float32))
    np.savez(tmp_path / "nooffsets.npz", diffraction=np.zeros((2, P, P), np.float32))
    with open_tiny(artifacts) as pipe:
        names = ["stack.npy", "ints.npy", "neg.npy", "nooffsets.npz"]
        results = list(pipe.run_sources([tmp_path / n for n in names]))
    messages = [r.message for r in results]
    assert all(isinstance(r, ErrorRecord) for r in results)
    assert "needs scan offsets" in messages[0] and "float32 diffraction amplitudes, got int32" in messages[1]
    assert "finite and >= 0" in messages[2] and "missing ['offsets']" in messages[3]


def test_calibration_reads_every_pattern_of_scan_files_and_loose_patterns(tmp_path):
    from batchforge.calibration.data import load_calibration_data

    artifacts = tiny_ptycho(tmp_path / "artifacts")
    inputs = tmp_path / "calib"
    inputs.mkdir()
    diffraction = RNG.uniform(0, 2, (11, P, P)).astype(np.float32)
    np.savez(inputs / "a_scan.npz", diffraction=diffraction, offsets=RNG.uniform(0, 9, (11, 2)))
    np.save(inputs / "b_pattern.npy", diffraction[3] + 1)
    with open_tiny(artifacts) as pipe:
        data = load_calibration_data(pipe, inputs, samples=10)
        every = load_calibration_data(pipe, inputs, samples=64)
    assert data.count == 10 and every.count == 12
    np.testing.assert_array_equal(np.stack([f["diffraction"] for f in every.feeds[:11]]), diffraction)
    np.testing.assert_array_equal(every.feeds[11]["diffraction"], diffraction[3] + 1)
