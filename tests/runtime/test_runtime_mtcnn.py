"""The mtcnn runtime pipeline on a real photograph: the astronaut's face, 5 landmarks, JSONL."""

import json

import numpy as np
import pytest

from batchforge.cli import main
from batchforge.parity.detection import pairwise_iou
from batchforge.parity.mtcnn import reference_detector, reference_faces
from batchforge.runtime.images import write_image
from batchforge.runtime.loading import load_pipeline
from batchforge.runtime.post import mtcnn as post

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


def test_finds_the_astronauts_face_with_five_landmarks(mtcnn_artifacts, astronaut):
    # the reference box comes from facenet-pytorch's own detector, not from the code under test
    ref = reference_faces(reference_detector(), astronaut).faces
    ref_boxes, ref_points = ref.boxes, ref.points
    assert len(ref_boxes) == 1
    with load_pipeline("mtcnn", output_dir=mtcnn_artifacts, backend="onnxruntime") as pipeline:
        (result,) = pipeline([astronaut], ["astronaut"])
    assert len(result) == 1 and result.probs[0] > 0.99
    assert pairwise_iou(ref_boxes, result.boxes.astype(np.float64))[0, 0] >= 0.9
    assert result.landmarks.shape == (1, 5, 2)
    x0, y0, x1, y1 = result.boxes[0]
    assert np.all((result.landmarks[0, :, 0] > x0) & (result.landmarks[0, :, 0] < x1))
    assert np.all((result.landmarks[0, :, 1] > y0) & (result.landmarks[0, :, 1] < y1))
    assert np.abs(result.landmarks - ref_points).max() < 0.01  # original pixels


def test_run_writes_one_record_per_image_and_refuses_an_oversized_one(mtcnn_artifacts, astronaut, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "astronaut.png", astronaut)
    write_image(images / "huge.png", np.zeros((2200, 40, 3), np.uint8))  # first level 1321 px > 1280
    out = tmp_path / "faces.jsonl"
    code = main(["run", "mtcnn", "--input", str(images), "--output", str(out), "--output-dir", str(mtcnn_artifacts),
                 "--backend", "onnxruntime"])
    records = {r["source"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.read_text().splitlines())}
    assert code == 1  # one input failed
    assert len(records["astronaut.png"]["faces"]) == 1
    assert len(records["astronaut.png"]["faces"][0]["landmarks"]) == 5
    assert not records["huge.png"]["ok"] and "P-Net takes at most 1280 px" in records["huge.png"]["error"]["message"]


def test_pyramid_follows_min_face_size_and_factor():
    scales = post.pyramid_scales(512, 400, 20, 0.709)
    assert scales[0] == pytest.approx(0.6) and scales[1] == pytest.approx(0.6 * 0.709)
    assert 400 * scales[-1] >= 12 > 400 * scales[-1] * 0.709
    assert post.level_size(512, 400, 0.6) == (308, 241)


def test_area_resampling_matches_torch_area_mode():
    import torch

    image = np.random.default_rng(0).integers(0, 256, (97, 61, 3)).astype(np.uint8)
    for size in ((59, 37), (24, 24), (130, 70)):
        want = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=size,
                                               mode="area")[0].permute(1, 2, 0).numpy()
        assert np.abs(post.resize_area(image, *size) - want).max() < 1e-3


def test_overlays_draw_the_found_face_and_nothing_partial(mtcnn_artifacts, astronaut, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "astronaut.png", astronaut)
    (images / "broken.png").write_bytes(b"not a png")
    overlays = tmp_path / "overlays"
    code = main(["run", "mtcnn", "--input", str(images), "--output", str(tmp_path / "faces.jsonl"),
                 "--output-dir", str(mtcnn_artifacts), "--backend", "onnxruntime", "--overlays", str(overlays)])
    assert code == 1  # the broken file is an error record, and gets no overlay
    assert sorted(p.name for p in overlays.iterdir()) == ["astronaut.png"]
    from batchforge.runtime.images import read_image

    drawn = read_image(overlays / "astronaut.png")
    record = json.loads((tmp_path / "faces.jsonl").read_text().splitlines()[0])
    x0, y0, x1, y1 = (round(v) for v in record["faces"][0]["box"])
    changed = np.any(drawn != astronaut, axis=-1)
    assert changed[y0, x0 + 5:x1 - 5].all() and changed[y1, x0 + 5:x1 - 5].all()  # the box's edges
    for x, y in record["faces"][0]["landmarks"]:
        assert tuple(drawn[round(y), round(x)]) == (255, 0, 0)  # each landmark's dot
    assert changed.mean() < 0.05  # the rest of the photograph is untouched


@pytest.mark.parametrize("stage, output, image", [(0, "offsets", 1), (1, "face_logit", 0), (2, "landmarks", 0)])
def test_a_non_finite_stage_output_is_an_error_record_for_its_image_only(mtcnn_artifacts, astronaut, monkeypatch,
                                                                          stage, output, image):
    from batchforge.runtime.pipelines import mtcnn as pipelines
    from batchforge.runtime.results import ErrorRecord

    camera = np.ascontiguousarray(np.repeat(astronaut[::-1, :, :1], 3, axis=-1))
    with load_pipeline("mtcnn", output_dir=mtcnn_artifacts, backend="onnxruntime") as pipeline:
        prepared = [pipeline.prepare(astronaut, "astronaut"), pipeline.prepare(camera, "flipped")]
        clean = pipeline.run_guarded(prepared)
        real_infer, real_stage = pipelines.infer_in_chunks, pipeline._stage_outputs

        def pnet_nan(runner, feed, batch):  # the first level of both images: one batch, image 1 second
            out = real_infer(runner, feed, batch)
            if runner is pipeline.members[0][1] and not calls:
                out[output][image] = np.nan
            calls.append(1)
            return out

        def stage_nan(k, images, boxes, index, size):
            out = real_stage(k, images, boxes, index, size)
            if k == stage:
                out[output][index == image] = np.inf
            return out

        calls: list[int] = []
        if stage == 0:
            monkeypatch.setattr(pipelines, "infer_in_chunks", pnet_nan)
        else:
            monkeypatch.setattr(pipeline, "_stage_outputs", stage_nan)
        results = pipeline.run_guarded(prepared)
    bad, good = results[image], results[1 - image]
    assert isinstance(bad, ErrorRecord) and bad.error_type == "NonFiniteOutputError"
    assert f"'mtcnn_{('pnet', 'rnet', 'onet')[stage]}:{output}'" in bad.message
    assert json.dumps(good.to_record(), allow_nan=False) == json.dumps(clean[1 - image].to_record(), allow_nan=False)
