"""Overlays of the other drawn families from their result types (no model needed)."""

import numpy as np
import pytest

from batchforge.errors import UsageError
from batchforge.runtime.images import read_image, write_image
from batchforge.runtime.overlays import OverlayWriter
from batchforge.runtime.pipelines.detection import DetectionResult, FacePoseResult
from batchforge.runtime.pipelines.keypoints import KeypointsResult


def _image(tmp_path, name="a b.png"):
    path = tmp_path / name
    write_image(path, np.full((60, 80, 3), 90, np.uint8))
    return str(path)


def _detection(source, **extra):
    cls = FacePoseResult if extra else DetectionResult
    return cls(source, (60, 80), np.array([[10.0, 12.0, 50.0, 40.0]]), np.array([0.9], np.float32),
               np.array([0]), ("face",), np.array([3]), **extra)


@pytest.mark.parametrize("family", ["detector", "facepose", "keypoints"])
def test_each_family_draws_its_shapes(tmp_path, family):
    source = _image(tmp_path)
    if family == "keypoints":
        result = KeypointsResult(source, np.array([[20.0, 30.0], [60.0, 15.0]]), np.array([0.5, 0.7]))
        points = result.keypoints
    elif family == "facepose":
        points = np.array([[[20.0, 20.0], [30.0, 25.0]]])
        result = _detection(source, poses=np.zeros((1, 6)), landmarks=points, pose_boxes=np.zeros((1, 4)))
        points = points[0]
    else:
        result, points = _detection(source), np.zeros((0, 2))
    writer = OverlayWriter(tmp_path / "out", family)
    path = writer.write(result)
    assert path == (tmp_path / "out" / "a_b.png").resolve()
    drawn = read_image(path)
    for x, y in points:
        assert tuple(drawn[round(y), round(x)]) == (255, 0, 0)
    if family != "keypoints":
        assert tuple(drawn[40, 30]) == (0, 255, 0)  # the box's bottom edge
    assert writer.write(result).name == "a_b_2.png"  # a repeated stem never overwrites
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_b.png", "a_b_2.png"]


def test_other_families_and_a_file_as_folder_are_refused(tmp_path):
    with pytest.raises(UsageError, match="draws mtcnn, detector, facepose, keypoints results; this model is "
                                         "family 'reid'"):
        OverlayWriter(tmp_path / "out", "reid")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="expected a folder, got a file"):
        OverlayWriter(tmp_path / "file", "detector")
