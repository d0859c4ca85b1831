"""Keypoints post-processing and pipeline on synthetic heatmaps and a tiny identity model."""

import json

import numpy as np
import onnx
import pytest
from helpers import write_artifact
from onnx import TensorProto, helper

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime import load_pipeline
from batchforge.runtime.post.keypoints import (
    KeypointsOptions,
    apply_affine,
    cells_to_input,
    crop_box_affine,
    decode_heatmaps,
    decode_keypoints,
    geometry_affine,
    heatmap_maxima,
)
from batchforge.runtime.preprocess import preprocess_image
from batchforge.runtime.spec import ModelSpec, Preprocess, ProfileRange, ResizeMode, TensorSpec


def gaussian_maps(centres, size=(32, 40), sigma=2.0):
    """(1, K, H, W) Gaussians at continuous cell-index centres (x, y)."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    maps = [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres]
    return np.stack(maps)[None].astype(np.float32)


def test_dark_recovers_subpixel_gaussian_centres_and_quarter_moves_a_quarter_cell():
    centres = [(10.3, 12.8), (20.5, 7.1), (30.9, 20.45), (8.01, 22.6)]  # >= 3 sigma off the border
    heatmaps = gaussian_maps(centres)
    dark, scores = decode_heatmaps(heatmaps, "dark", 11)
    np.testing.assert_allclose(dark[0], centres, atol=1e-3)
    assert scores.dtype == np.float32 and np.all(scores > 0.8)
    quarter, _ = decode_heatmaps(heatmaps, "quarter")
    np.testing.assert_allclose(quarter[0], [(10.25, 12.75), (20.25, 7.25), (30.75, 20.25), (8.25, 22.75)])
    none, _ = decode_heatmaps(heatmaps, "none")
    np.testing.assert_array_equal(none[0], [(10, 13), (20, 7), (31, 20), (8, 23)])


def test_argmax_takes_the_first_maximum_and_border_peaks_are_not_refined():
    heatmaps = np.zeros((1, 2, 6, 6), np.float32)
    heatmaps[0, 0, 2, 4] = heatmaps[0, 0, 3, 1] = 1.0  # tie: row-major first is (x=4, y=2)
    heatmaps[0, 1, 0, 5] = 1.0  # corner peak
    heatmaps[0, 1, 1, 5] = 0.5
    xy, scores = heatmap_maxima(heatmaps)
    np.testing.assert_array_equal(xy[0], [[4, 2], [5, 0]])
    np.testing.assert_array_equal(scores, [[1.0, 1.0]])
    for refine in ("dark", "quarter"):
        refined, _ = decode_heatmaps(heatmaps, refine, 3)
        np.testing.assert_array_equal(refined[0, 1], [5, 0])


def test_a_flat_or_negative_peak_is_left_at_the_argmax():
    heatmaps = np.full((1, 1, 9, 9), -1.0, np.float32)
    heatmaps[0, 0, 4, 4] = -0.5
    refined, _ = decode_heatmaps(heatmaps, "dark", 3)
    np.testing.assert_array_equal(refined[0, 0], [4, 4])


def test_cells_map_to_cell_centres_and_through_the_letterbox_back_to_the_image():
    np.testing.assert_allclose(cells_to_input(np.array([[0.0, 0.0], [63.0, 31.0]]), (32, 64), (128, 256)),
                               [[2.0, 2.0], [254.0, 126.0]])
    image = np.zeros((200, 400, 3), np.uint8)
    _, geometry = preprocess_image(image, Preprocess(256, 256, resize=ResizeMode.LETTERBOX))
    points = np.array([[0.0, 0.0], [400.0, 200.0], [123.4, 56.7]])
    model_xy = np.stack([points[:, 0] * geometry.scale_x + geometry.pad_x,
                         points[:, 1] * geometry.scale_y + geometry.pad_y], axis=1)
    np.testing.assert_allclose(apply_affine(model_xy, geometry_affine(geometry)), points, atol=1e-9)


def test_crop_box_affine_widens_to_the_input_aspect_and_pads_about_the_centre():
    matrix = crop_box_affine(np.array([10.0, 20.0, 50.0, 100.0]), (256, 192), padding=1.25)
    corners = apply_affine(np.array([[0.0, 0.0], [192.0, 256.0], [96.0, 128.0]]), matrix)
    np.testing.assert_allclose(corners[2], [30.0, 60.0])  # input centre -> box centre
    np.testing.assert_allclose(corners[1] - corners[0], [75.0, 100.0])  # 60x80 box (aspect 3:4) x 1.25
    with pytest.raises(InputValidationError, match="x2 > x1"):
        crop_box_affine(np.array([5.0, 5.0, 5.0, 9.0]), (256, 192))


def test_decode_keypoints_maps_each_item_through_its_own_affine():
    heatmaps = np.concatenate([gaussian_maps([(40.0, 20.0)], (64, 64)),
                               gaussian_maps([(12.0, 48.0)], (64, 64))])
    affines = np.array([[[1.0, 0, 0], [0, 1.0, 0]], [[0.5, 0, 100.0], [0, 2.0, -10.0]]])
    keypoints, _ = decode_keypoints(heatmaps, affines, (256, 256), KeypointsOptions())
    # cell (40, 20) -> input (162, 82); cell (12, 48) -> input (50, 194) -> (125, 378)
    np.testing.assert_allclose(keypoints[:, 0], [[162.0, 82.0], [125.0, 378.0]], atol=1e-6)
    with pytest.raises(InputValidationError, match="one \\(2, 3\\) affine per item"):
        decode_keypoints(heatmaps, affines[:1], (64, 64), KeypointsOptions())


def test_bad_options_and_heatmaps_are_refused_with_clear_messages():
    with pytest.raises(ConfigError, match="refine must be one of"):
        KeypointsOptions(refine="argmax")
    with pytest.raises(ConfigError, match="odd integer"):
        KeypointsOptions(dark_kernel=4)
    with pytest.raises(InputValidationError, match=r"\(batch, joints, H, W\), got \(3, 4, 5\)"):
        heatmap_maxima(np.zeros((3, 4, 5), np.float32))


# --- pipeline on a tiny identity "heatmap model": heatmaps = the normalised image itself -------
SIZE = 32


def identity_artifact(root):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["heatmaps"])], "identity",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    spec = ModelSpec(
        name="tiny_pose", family="keypoints",
        inputs=(TensorSpec("images", ("batch", 3, SIZE, SIZE)),), outputs=("heatmaps",),
        profile=ProfileRange(1, 2, 4),
        preprocess=Preprocess(SIZE, SIZE, resize=ResizeMode.LETTERBOX, mean=(0.0,) * 3, std=(1.0,) * 3,
                              pad_value=0.0),
        postprocess={"refine": "dark", "dark_kernel": 5, "keypoint_names": ["r", "g", "b"]})
    return write_artifact(root, model, spec)


def blob_image(centre, shape=(80, 100), sigma=6.0):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5  # pixel centres, continuous coordinates
    blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(250 * blob)[:, :, None], 3, axis=2).astype(np.uint8)


@pytest.fixture
def pose(tmp_path):
    artifacts = identity_artifact(tmp_path / "artifacts")
    with load_pipeline("tiny_pose", output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1) as pipe:
        yield pipe


def test_whole_images_and_box_crops_decode_to_the_blob_in_image_pixels(pose):
    centres = [(60.3, 40.7), (31.6, 52.2), (70.0, 21.4)]
    images = [blob_image(c) for c in centres]
    results = pose(images)
    sequential = [pose([img])[0] for img in images]
    for centre, result, single in zip(centres, results, sequential):
        np.testing.assert_allclose(result.keypoints, [centre] * 3, atol=0.25)
        np.testing.assert_array_equal(result.keypoints, single.keypoints)
    boxes = [(c[0] - 35, c[1] - 30, c[0] + 37, c[1] + 34) for c in centres]  # ~3 image px per input px
    cropped = [pose.run_boxes(img, [box])[0] for img, box in zip(images, boxes)]
    for centre, result, box in zip(centres, cropped, boxes):
        np.testing.assert_allclose(result.keypoints, [centre] * 3, atol=0.25)
        assert result.box == pytest.approx(box)
    record = json.loads(json.dumps(cropped[0].to_record()))
    assert [k["name"] for k in record["keypoints"]] == ["r", "g", "b"]
    assert set(record["keypoints"][0]) == {"name", "x", "y", "score"} and record["box"]
