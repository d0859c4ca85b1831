"""Detection and face-pose post-processing and pipelines, on tiny dense ONNX graphs."""

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from helpers import load_script, write_artifact
from onnx import TensorProto, helper, numpy_helper

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime import load_pipeline
from batchforge.runtime.images import write_image
from batchforge.runtime.jsonl import JsonlWriter
from batchforge.runtime.post.detection import DetectionOptions, anchor_grid, decode_boxes, detect
from batchforge.runtime.post.facepose import (
    Camera,
    FacePoseOptions,
    decode_poses,
    face_reference,
    landmark_boxes,
    project_landmarks,
    rotation_matrices,
)
from batchforge.runtime.preprocess import Geometry, letterbox_geometry, preprocess_image
from batchforge.runtime.spec import ModelSpec, Preprocess, ProfileRange, ResizeMode, TensorSpec, parse_options

SIZE = 64
STRIDES = (8, 16, 32)
ROOT = Path(__file__).resolve().parents[2]


def tiny_dense_onnx(classes: int, pose: bool, seed: int = 0) -> onnx.ModelProto:
    """images -> per-stride average pool -> 1x1 conv -> dense boxes (exp), scores (sigmoid), pose."""
    rng = np.random.default_rng(seed)
    width = 4 + classes + (6 if pose else 0)
    nodes, inits, levels = [], [numpy_helper.from_array(np.array([0, width, -1], np.int64), "shape")], []
    for s in STRIDES:
        bias = np.zeros(width, np.float32)
        bias[4 : 4 + classes] = -0.5
        inits += [numpy_helper.from_array(rng.normal(0, 1.5, (width, 3, 1, 1)).astype(np.float32), f"w{s}"),
                  numpy_helper.from_array(bias, f"b{s}")]
        nodes += [helper.make_node("AveragePool", ["images"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]),
                  helper.make_node("Conv", [f"p{s}", f"w{s}", f"b{s}"], [f"c{s}"]),
                  helper.make_node("Reshape", [f"c{s}", "shape"], [f"r{s}"])]
        levels.append(f"r{s}")
    splits = [4, classes] + ([6] if pose else [])
    inits.append(numpy_helper.from_array(np.array(splits, np.int64), "splits"))
    heads = ["dist", "logits"] + (["pose"] if pose else [])
    nodes += [helper.make_node("Concat", levels, ["cat"], axis=2),
              helper.make_node("Transpose", ["cat"], ["dense"], perm=[0, 2, 1]),
              helper.make_node("Split", ["dense", "splits"], heads, axis=2),
              helper.make_node("Exp", ["dist"], ["boxes"]),
              helper.make_node("Sigmoid", ["logits"], ["scores"])]
    count = sum((SIZE // s) ** 2 for s in STRIDES)
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", count, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", count, classes])]
    if pose:
        outputs.append(helper.make_tensor_value_info("pose", TensorProto.FLOAT, ["batch", count, 6]))
    graph = helper.make_graph(nodes, "tiny_dense", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def tiny_spec(family: str, classes: tuple[str, ...], **post) -> ModelSpec:
    outputs = ("boxes", "scores", "pose") if family == "facepose" else ("boxes", "scores")
    return ModelSpec(
        name=f"tiny_{family}", family=family, inputs=(TensorSpec("images", ("batch", 3, SIZE, SIZE)),),
        outputs=outputs, profile=ProfileRange(1, 2, 4),
        preprocess=Preprocess(SIZE, SIZE, ResizeMode.LETTERBOX),
        postprocess={"class_names": list(classes), "strides": list(STRIDES), "score_threshold": 0.4,
                     "iou_threshold": 0.5, "pre_nms_top_k": 200, "max_detections": 30, **post})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense") / "artifacts"
    write_artifact(root, tiny_dense_onnx(3, pose=False), tiny_spec("detector", ("cat", "dog", "bird")))
    write_artifact(root, tiny_dense_onnx(1, pose=True, seed=1), tiny_spec("facepose", ("face",)))
    return root


def open_pipe(root, family, **kw):
    return load_pipeline(f"tiny_{family}", output_dir=root, backend="onnxruntime-cpu", threads=1, **kw)


def images(seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(48, 64), (64, 48), (100, 30), (64, 64), (20, 200), (333, 97), (64, 64)]
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]


def same(a, b):
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("boxes", "scores", "class_ids"))


@pytest.mark.parametrize("family", ["detector", "facepose"])
def test_mixed_sizes_batched_equals_sequential_without_warnings(root, family):
    imgs = images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_pipe(root, family) as pipe:
            batched = pipe(imgs)  # 7 images: chunked over the profile max of 4
            sequential = [pipe([img])[0] for img in imgs]
            assert pipe([]) == [] and list(pipe.run_sources([])) == []
    assert [r.source for r in batched] == [str(i) for i in range(len(imgs))]
    assert sum(len(r) for r in batched) > 10  # the tiny graph does detect things
    for a, b, img in zip(batched, sequential, imgs):
        assert same(a, b) and a.image_size == img.shape[:2]
        assert (a.boxes[:, 2] <= img.shape[1]).all() and (a.boxes[:, 3] <= img.shape[0]).all()
        assert (a.boxes[:, :2] >= 0).all() and (np.diff(a.scores) <= 0).all()
        if family == "facepose":
            assert np.array_equal(a.landmarks, b.landmarks) and np.array_equal(a.poses, b.poses)
            assert a.landmarks.shape == (len(a), 68, 2) and a.pose_boxes.shape == (len(a), 4)


def test_records_are_jsonl_ready(root, tmp_path):
    with open_pipe(root, "facepose") as faces, open_pipe(root, "detector") as objects:
        face = next(r for r in faces(images()) if len(r))
        thing = next(r for r in objects(images()) if len(r))
    with JsonlWriter(tmp_path / "r.jsonl") as writer:
        writer.write(face)
        writer.write(thing)
    face_rec, thing_rec = (json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines())
    det = face_rec["detections"][0]
    assert set(det) == {"box", "score", "class_id", "class_name", "pose", "pose_box", "landmarks"}
    assert set(det["pose"]) == {"rx", "ry", "rz", "tx", "ty", "tz"} and len(det["landmarks"]) == 68
    assert thing_rec["detections"][0]["class_name"] in ("cat", "dog", "bird")
    assert thing_rec["image_size"] == list(thing.image_size)


def test_letterbox_round_trip_and_decoding_to_original_pixels():
    grid = anchor_grid(SIZE, SIZE, STRIDES)
    assert len(grid) == 64 + 16 + 4 and grid.points[9].tolist() == [12.0, 12.0]  # stride 8, (x=1, y=1)
    assert decode_boxes(np.ones((1, 4), np.float32), grid.points[9:10], grid.strides[9:10]).tolist() == \
        [[4.0, 4.0, 20.0, 20.0]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 3000, 2))
        new_h, new_w, top, left = letterbox_geometry(h, w, 640, 640)
        geo = Geometry(h, w, new_w / w, new_h / h, float(left), float(top))
        boxes = np.sort(rng.uniform(0, 1, (5, 2, 2)), axis=1) * [w, h]
        forward = boxes * [geo.scale_x, geo.scale_y] + [geo.pad_x, geo.pad_y]
        np.testing.assert_allclose(geo.boxes_to_original(forward.reshape(5, 4)), boxes.reshape(5, 4),
                                   rtol=0, atol=1e-9 * max(h, w))
    # one confident anchor in a 32x64 image (letterbox pad 16 rows on top): the box comes back
    # in original pixels, the part in the padding clipped away
    image = np.zeros((128, 256, 3), np.uint8)
    _, geometry = preprocess_image(image, Preprocess(SIZE, SIZE, ResizeMode.LETTERBOX))
    assert (geometry.scale_x, geometry.pad_y) == (0.25, 16.0)
    scores = np.zeros((len(grid), 2), np.float32)
    scores[3 * 8 + 3, 1] = 0.9  # stride 8, x=3, y=3 -> point (28, 28)
    distances = np.ones((len(grid), 4), np.float32)
    opts = DetectionOptions(class_names=("a", "b"), score_threshold=0.5)
    found = detect(distances, scores, grid, opts, geometry)
    assert found.class_ids.tolist() == [1] and found.locations.tolist() == [27]
    np.testing.assert_allclose(found.boxes, [[(20 - 0) / 0.25, (20 - 16) / 0.25, 36 / 0.25, 20 / 0.25]])
    # an anchor wholly in the padding gives an empty box once clipped: dropped
    scores[0, 0] = 0.95
    assert detect(distances, scores, grid, opts, geometry).locations.tolist() == [27]


def write_bad_inputs(folder):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    write_image(folder / "a_rgb.png", rgb)
    gray = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    cv2.imwrite(str(folder / "b_gray.png"), gray)
    cv2.imwrite(str(folder / "c_rgba.png"), np.dstack([rgb[:, :, ::-1], np.full((40, 50), 7, np.uint8)]))
    cv2.imwrite(str(folder / "d_16bit.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    (folder / "e_empty.png").write_bytes(b"")
    _, jpeg = cv2.imencode(".jpg", rgb)
    (folder / "f_truncated.jpg").write_bytes(jpeg.tobytes()[:300])
    write_image(folder / "g_large.png", rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    return rgb, gray


def test_bad_inputs_follow_the_documented_rules(root, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb, gray = write_bad_inputs(folder)
    with open_pipe(root, "detector", max_pixels=5000) as pipe:
        results = list(pipe.run_sources(sorted(folder.iterdir()), batch_size=3))
        reference = pipe([rgb, np.dstack([gray] * 3)])
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["DetectionResult"] * 4 + ["ErrorRecord"] * 3
    assert "empty file" in results[4].message and "truncated" in results[5].message
    assert "above the limit of 5,000" in results[6].message and "--max-pixels" in results[6].message
    assert same(results[0], reference[0])  # RGB file
    assert same(results[1], reference[1])  # grayscale: replicated to three channels
    assert same(results[2], reference[0])  # RGBA: alpha dropped
    assert same(results[3], reference[0])  # 16-bit: round(v / 257), exact for v * 257
    with open_pipe(root, "detector", max_pixels=100) as pipe, \
            pytest.raises(InputValidationError, match="above the limit"):
        pipe([rgb])


def test_options_are_validated_and_must_fit_the_model(root):
    with pytest.raises(ConfigError, match="score_threshold must be in"):
        parse_options(DetectionOptions, {"score_threshold": 1.5}, "detector postprocess")
    with pytest.raises(ConfigError, match="unknown key 'iou'"):
        parse_options(DetectionOptions, {"iou": 0.5}, "detector postprocess")
    with pytest.raises(ConfigError, match="focal_scale must be > 0"):
        FacePoseOptions(focal_scale=0.0)
    with pytest.raises(ConfigError, match="not a multiple of stride"):
        anchor_grid(60, 64, STRIDES)
    with open_pipe(root, "detector", overrides={"class_names": ["cat", "dog"]}) as pipe, \
            pytest.raises(ConfigError, match=r"scores output \(batch, 84, 2\) for 2 class names"):
        pipe(images()[:1])


def test_rodrigues_matches_opencv_and_the_identity():
    rng = np.random.default_rng(1)
    rvecs = np.concatenate([rng.normal(0, 1, (20, 3)), np.zeros((1, 3)), [[1e-10, 0, 0]]])
    for r, mat in zip(rvecs, rotation_matrices(rvecs)):
        np.testing.assert_allclose(mat, cv2.Rodrigues(r)[0], atol=1e-12)


def test_pose_decoding_and_projection_follow_the_camera():
    reference = face_reference()
    width_m = float(np.ptp(reference[:, 0]))
    assert reference.shape == (68, 3) and 0.12 < width_m < 0.16
    image_h, image_w = 480, 640  # letterboxed into 64x64: scale 0.1, 8 rows of padding
    geometry = Geometry(image_h, image_w, 0.1, 0.1, 0.0, 8.0)
    camera = Camera.for_image(image_h, image_w)
    assert camera.focal == pytest.approx(800.0) and (camera.cx, camera.cy) == (320.0, 240.0)
    # a frontal face 2.5 strides (20 input px = 200 image px) wide at anchor (28, 28)
    raw = np.array([[0, 0, 0, 0, 0, np.log(2.5)]])
    pose = decode_poses(raw, np.array([[28.0, 28.0]]), np.array([8.0]), geometry, camera, width_m)
    assert pose[0, 5] == pytest.approx(800.0 * width_m / 200.0)
    landmarks = project_landmarks(pose, reference, camera)
    centre = (np.array([28.0, 28.0]) - [0, 8]) / 0.1
    box = landmark_boxes(landmarks)[0]
    assert np.allclose((box[:2] + box[2:]) / 2, centre, atol=25)
    assert 0.85 * 200 < box[2] - box[0] < 200  # narrower: the jaw sits deeper than the centroid
    # a longer focal length moves the face away and flattens the perspective
    far = Camera.for_image(image_h, image_w, focal_scale=2.0)
    pose_far = decode_poses(raw, np.array([[28.0, 28.0]]), np.array([8.0]), geometry, far, width_m)
    assert pose_far[0, 5] == pytest.approx(2 * pose[0, 5])
    assert not np.allclose(project_landmarks(pose_far, reference, far), landmarks, atol=0.05)


def test_shipped_face_reference_is_reproducible():
    module = load_script("make_face_reference")
    np.testing.assert_array_equal(module.face_reference(), face_reference())
