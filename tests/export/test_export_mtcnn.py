"""The mtcnn zoo family: trained weights from facenet-pytorch's files, P-Net with dynamic height
and width from the spec through export, profiles and runner validation."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from batchforge.cli import main
from batchforge.engines.profiles import input_profiles
from batchforge.errors import ConfigError, InputValidationError
from batchforge.export.zoo.mtcnn import MTCNN_PNET, package_weights
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.loading import open_runner
from batchforge.runtime.spec import ModelSpec, ProfileRange, TensorSpec

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_export_records_the_package_weights_and_their_sha256(mtcnn_artifacts, name):
    record = ModelArtifacts.at(mtcnn_artifacts, f"mtcnn_{name}").export_record()
    source = package_weights(f"{name}.pt")
    assert record["weights"]["source"] == str(source)
    assert record["weights"]["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_pnet_graph_has_symbolic_height_and_width_checked_at_several_sizes(mtcnn_artifacts):
    record = ModelArtifacts.at(mtcnn_artifacts, "mtcnn_pnet").export_record()
    assert record["io"]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert record["checks"]["symbolic_dims"] == {"height": [12, 240, 1280], "width": [12, 240, 1280]}
    sized = {row["output"].partition("@")[2] for row in record["checks"]["parity"]} - {""}
    assert sized == {"height=12 width=12", "height=127 width=129", "height=1280 width=1280"}
    assert max(row["max_rel"] for row in record["checks"]["parity"]) < 1e-4


def test_runner_refuses_sizes_outside_the_exported_range(mtcnn_artifacts):
    runner = open_runner(ModelArtifacts.at(mtcnn_artifacts, "mtcnn_pnet"), backend="onnxruntime")
    with runner:
        out = runner.infer({"images": np.zeros((1, 3, 13, 31), np.float32)})
        assert out["face_logit"].shape == (1, 2, 11)  # ((13 - 3) // 2) - 3, ((31 - 3) // 2) - 3
        with pytest.raises(InputValidationError, match=r"height \(dim 2\) expected 12\.\.1280, got 11"):
            runner.infer({"images": np.zeros((1, 3, 11, 40), np.float32)})


def test_models_lists_the_dynamic_ranges(capsys):
    assert main(["models"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("mtcnn_pnet"))
    assert "3xheight[12/240/1280]xwidth[12/240/1280]" in line
    assert main(["models", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "mtcnn_pnet")
    assert row["dims"] == {"height": [12, 240, 1280], "width": [12, 240, 1280]}


def test_named_dims_round_trip_and_map_to_trt_profiles():
    spec = ModelSpec.from_dict(MTCNN_PNET.to_dict())
    assert spec == MTCNN_PNET
    (profile,) = input_profiles(spec, ProfileRange(1, 2, 3))
    assert (profile.min, profile.opt, profile.max) == ((1, 3, 12, 12), (2, 3, 240, 240), (3, 3, 1280, 1280))


def test_dims_without_a_named_input_dim_are_refused():
    with pytest.raises(ConfigError, match=r"dims \['depth'\] are given ranges but no input shape names them"):
        ModelSpec("m", "tensors", (TensorSpec("x", ("batch", 3, 8, 8)),), ("y",), ProfileRange(1, 1, 1),
                  dims={"depth": ProfileRange(1, 2, 3)})


def test_pnet_calibrates_on_every_pyramid_level_the_detector_runs(mtcnn_artifacts, tmp_path):
    from batchforge.export.samples.mtcnn import sample_images
    from batchforge.runtime.images import write_image
    from batchforge.runtime.post import mtcnn as post

    folder = tmp_path / "calib"
    folder.mkdir()
    images = [image for _, image in sample_images(9, 4000)]  # 3 mosaics (320x240) and 6 crops (72x72)
    for i, image in enumerate(images):
        write_image(folder / f"{i}.png", image)
    out = tmp_path / "artifacts"
    shutil.copytree(mtcnn_artifacts / "mtcnn_pnet", out / "mtcnn_pnet")
    assert main(["calibrate", "mtcnn_pnet", "--data", str(folder), "--samples", "9", "--output-dir", str(out)]) == 0
    levels = sum(len(post.pyramid_scales(*image.shape[:2], 20.0, 0.709)) for image in images)
    record = json.loads((out / "mtcnn_pnet" / "calibration.json").read_text())
    assert record["data"]["items"] == levels > 9


def test_calibration_and_evaluation_photographs_share_no_lfw_face():
    from batchforge.export.samples.mtcnn import lfw_crops

    held_out, calibration = lfw_crops(evaluation=True), lfw_crops(evaluation=False)
    for a, b in zip(held_out, calibration):
        assert len(a) == len(b) == 50
        assert not any(np.array_equal(x, y) for x in a for y in b)
